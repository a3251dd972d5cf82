import ArgumentParser
import ExpertCache
import Foundation
import ModelFormats
import MoEModels

/// `moe-serve perplexity --model M --text FILE [--context N]`: the model's perplexity on a
/// text, over non-overlapping windows of N tokens (the job of llama.cpp's `llama-perplexity`),
/// and optionally the KL divergence of its next-token distributions against a saved run.
///
/// Each window starts from an empty KV cache. Which positions of a window count is named in
/// the output (`scoring`): `all` scores every prediction but the first token's (the
/// transformers recipe with stride = window: N − 1 per window); `second-half` scores only
/// the predictions made with at least N/2 tokens of context (llama.cpp's `llama-perplexity`:
/// N − 1 − N/2 per window). A trailing part shorter than a window is not scored.
struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity of a text over non-overlapping windows, as JSON; optionally KL against a saved exact run.",
        discussion: """
            --save-logprobs FILE writes every scored position's log-probabilities (safetensors: `logprobs` F32 \
            [positions, vocab], `targets` F32 [positions], the token each position predicts; vocab × positions × 4 \
            bytes, 32 MiB for 2,000 positions of a 4,096-token vocabulary). --kl-base FILE reads such a file from a \
            run on the same text, context and scoring and reports KL(base ‖ this run) per position.
            """)

    /// Which predictions of a window are scored.
    enum Scoring: String, ExpressibleByArgument, CaseIterable, Encodable {
        /// Every prediction of the window (tokens 1..<N from their prefixes): transformers' recipe.
        case all
        /// Predictions of tokens N/2+1..<N, each with at least N/2 tokens of context: llama.cpp's.
        case secondHalf = "second-half"

        /// The first window position whose logits are scored (they predict the next token).
        func firstScoredPosition(context: Int) -> Int { self == .all ? 0 : context / 2 }
    }

    @OptionGroup var model: ModelOption
    @Option(help: "The text to score (UTF-8), encoded with the model's tokenizer.") var text: String
    @Option(help: "Tokens per window (default 512, at most the model's positions).") var context: Int = 512
    @Option(help: "Which predictions of each window are scored: all (transformers) or second-half (llama.cpp).")
    var scoring: Scoring = .all
    @Option(name: .customLong("max-windows"), help: "Score at most this many windows (the first ones).") var maxWindows: Int?
    /// Steps of at most 64 tokens sum each token's experts in a fixed order, so a run repeats bit
    /// for bit; larger ones add experts as their reads finish (runs then differ by ~1e-8).
    @Option(help: "Tokens per forward step within a window, as a prefill chunk (≤ 64: bit-for-bit repeatable; 1: decode-like, token by token).") var batch: Int = 256
    @Option(name: .customLong("save-logprobs"), help: "Write every scored position's log-probabilities here (safetensors), for --kl-base.")
    var saveLogprobs: String?
    @Option(name: .customLong("kl-base"), help: "Log-probabilities saved by --save-logprobs from an exact run: report KL(base ‖ this run).")
    var klBase: String?
    @OptionGroup var runtimeOptions: RuntimeOptions
    @OptionGroup var lossy: LossyOptions

    struct Output: Encodable {
        var perplexity: Double
        var meanNLL: Double
        var scoring: Scoring
        var context: Int
        var windows: Int
        var tokensScored: Int
        var textTokens: Int
        var tokensUnscored: Int
        var seconds: Double
        var tokensPerSecond: Double
        var kl: KLSummary?
        var expertCache: ExpertCacheStats?

        enum CodingKeys: String, CodingKey {
            case perplexity, meanNLL = "mean_nll", scoring, context, windows, tokensScored = "tokens_scored"
            case textTokens = "text_tokens", tokensUnscored = "tokens_unscored", seconds, tokensPerSecond = "tokens_per_second"
            case kl, expertCache = "expert_cache"
        }
    }

    /// KL(base ‖ run) over the scored positions, in nats, and how often both agree on the top token.
    struct KLSummary: Encodable {
        var base: String
        var mean: Double
        var median: Double
        var p99: Double
        var max: Double
        var sameTop1: Double

        enum CodingKeys: String, CodingKey { case base, mean, median, p99, max, sameTop1 = "same_top1" }
    }

    func validate() throws {
        guard context >= 2 else { throw ValidationError("--context must be at least 2 tokens") }
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1") }
        if let maxWindows, maxWindows < 1 { throw ValidationError("--max-windows must be at least 1") }
    }

    func run() throws {
        try reportingErrors {
            let modelURL = try model.resolvedURL()
            guard let data = FileManager.default.contents(atPath: text) else { throw CommandError("--text: cannot read \(text)") }
            let runtime = try runtimeOptions.open(at: modelURL, maxSequences: 1, contextTokens: context)
            defer { runtime.close() }
            try lossy.apply(to: runtime)
            guard let tokenizer = runtime.tokenizer else { throw CommandError("\(modelURL.path): perplexity needs a tokenizer.json beside the model") }
            let transformer = runtime.model
            let vocab = transformer.config.vocabSize
            guard context <= transformer.config.maxPositionEmbeddings else {
                throw CommandError("--context \(context): the model allows at most \(transformer.config.maxPositionEmbeddings) positions")
            }
            let ids = tokenizer.encode(String(decoding: data, as: UTF8.self), addSpecialTokens: false)
            var windows = ids.count / context
            if let maxWindows { windows = min(windows, maxWindows) }
            guard windows > 0 else { throw CommandError("--text: \(ids.count) tokens, fewer than one window of --context \(context)") }
            let firstScored = scoring.firstScoredPosition(context: context)
            let perWindow = context - 1 - firstScored
            let base = try klBase.map { try SavedLogProbs(path: $0, vocab: vocab) }
            if let base, base.positions != windows * perWindow {
                throw CommandError("--kl-base: \(base.positions) positions saved, this run scores \(windows * perWindow) (same text, --context, --scoring and --max-windows needed)")
            }
            var savedLogProbs: [Float] = []  // [positions, vocab], only with --save-logprobs
            if saveLogprobs != nil { savedLogProbs.reserveCapacity(windows * perWindow * vocab) }
            var targets: [Float] = []
            var divergences: [Double] = []
            var sameTop1 = 0
            var totalNLL = 0.0
            var scored = 0

            let start = Date()
            var logProbs = [Float](repeating: 0, count: vocab)
            for window in 0..<windows {
                let tokens = Array(ids[window * context ..< (window + 1) * context])
                let cache = transformer.makeCache()
                defer { transformer.sequenceEnded(cache) }
                var position = 0
                while position < context {
                    let end = min(position + batch, context)
                    // [n * vocab]: logits of positions position..<end; position i predicts token i + 1.
                    let logits = try transformer.forward([SequenceInput(cache: cache, tokens: Array(tokens[position..<end]), allLogits: true)])[0]
                    // Scored positions of this step (none when the step ends before the scored part).
                    let scoredHere = Swift.max(position, firstScored)..<Swift.max(Swift.max(position, firstScored), Swift.min(end, context - 1))
                    for i in scoredHere {
                        let target = tokens[i + 1]
                        let row = (i - position) * vocab
                        let logSumExp = logits.withUnsafeBufferPointer { Self.logSumExp($0.baseAddress! + row, count: vocab) }
                        totalNLL += logSumExp - Double(logits[row + target])
                        scored += 1
                        guard saveLogprobs != nil || base != nil else { continue }
                        for v in 0..<vocab { logProbs[v] = Float(Double(logits[row + v]) - logSumExp) }
                        if saveLogprobs != nil {
                            savedLogProbs += logProbs
                            targets.append(Float(target))
                        }
                        if let base {
                            let index = scored - 1
                            guard base.target(index) == target else {
                                throw CommandError("--kl-base: position \(index) predicts token \(base.target(index)) there, \(target) here: not the same text or tokenizer")
                            }
                            let comparison = base.compare(index, with: logProbs)
                            divergences.append(comparison.kl)
                            if comparison.sameTop1 { sameTop1 += 1 }
                        }
                    }
                    position = end
                }
            }
            let seconds = Date().timeIntervalSince(start)

            if let saveLogprobs {
                var writer = SafetensorsWriter()
                let bytes = savedLogProbs.withUnsafeBytes { Array($0) }
                writer.add("logprobs", dtype: .f32, shape: [scored, vocab], bytes: bytes)
                writer.add("targets", shape: [scored], values: targets)
                try writer.write(to: URL(fileURLWithPath: saveLogprobs))
            }
            let mean = totalNLL / Double(scored)
            var kl: KLSummary?
            if let klBase {
                let sorted = divergences.sorted()
                kl = KLSummary(base: klBase, mean: sorted.reduce(0, +) / Double(sorted.count), median: Self.quantile(sorted, 0.5),
                               p99: Self.quantile(sorted, 0.99), max: sorted.last ?? 0, sameTop1: Double(sameTop1) / Double(sorted.count))
            }
            try printJSON(Output(perplexity: exp(mean), meanNLL: mean, scoring: scoring, context: context, windows: windows,
                                 tokensScored: scored, textTokens: ids.count, tokensUnscored: ids.count - scored,
                                 seconds: seconds, tokensPerSecond: Double(windows * context) / seconds,
                                 kl: kl, expertCache: runtime.cache?.statistics()))
        }
    }

    /// log Σ exp(x[i]) in double precision, shifted by the maximum.
    static func logSumExp(_ x: UnsafePointer<Float>, count: Int) -> Double {
        var maximum = -Float.infinity
        for i in 0..<count { maximum = Swift.max(maximum, x[i]) }
        var sum = 0.0
        for i in 0..<count { sum += Foundation.exp(Double(x[i] - maximum)) }
        return Double(maximum) + Foundation.log(sum)
    }

    /// The `q` quantile of ascending `sorted` (nearest rank).
    static func quantile(_ sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let rank = Int((q * Double(sorted.count)).rounded(.up))
        return sorted[Swift.min(sorted.count, Swift.max(rank, 1)) - 1]
    }
}

/// Log-probabilities saved by `perplexity --save-logprobs`, read for `--kl-base`.
struct SavedLogProbs {
    let file: SafetensorsFile
    /// `[positions, vocab]` float32.
    let logProbs: UnsafePointer<Float>
    /// `[positions]` float32 token ids.
    let targets: UnsafePointer<Float>
    let positions: Int
    let vocab: Int

    init(path: String, vocab: Int) throws {
        guard FileManager.default.fileExists(atPath: path) else { throw CommandError("--kl-base: no file at \(path)") }
        file = try SafetensorsFile(path: path)
        guard let values = file.entries["logprobs"], let ids = file.entries["targets"], values.dtype == .f32, ids.dtype == .f32,
              values.shape.count == 2, ids.shape.count == 1, values.shape[0] == ids.shape[0] else {
            throw CommandError("--kl-base: \(path) is not a file written by --save-logprobs (F32 `logprobs` [positions, vocab] and `targets` [positions])")
        }
        guard values.shape[1] == vocab else { throw CommandError("--kl-base: \(path) has a vocabulary of \(values.shape[1]), this model \(vocab)") }
        positions = values.shape[0]
        self.vocab = vocab
        logProbs = file.bytes(of: values).baseAddress!.assumingMemoryBound(to: Float.self)
        targets = file.bytes(of: ids).baseAddress!.assumingMemoryBound(to: Float.self)
    }

    /// The token position `index` predicts.
    func target(_ index: Int) -> Int { Int(targets[index]) }

    /// KL(base ‖ run) = Σ p_base (log p_base − log p_run) at `index`, and whether both put the
    /// same token first.
    func compare(_ index: Int, with run: [Float]) -> (kl: Double, sameTop1: Bool) {
        let row = logProbs + index * vocab
        var kl = 0.0
        var baseTop = 0, runTop = 0
        for v in 0..<vocab {
            let p = Double(row[v])
            kl += Foundation.exp(p) * (p - Double(run[v]))
            if row[v] > row[baseTop] { baseTop = v }
            if run[v] > run[runTop] { runTop = v }
        }
        return (Swift.max(kl, 0), baseTop == runTop)
    }
}
