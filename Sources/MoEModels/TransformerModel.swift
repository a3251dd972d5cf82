import Foundation
import ModelFormats
import TensorMath

/// One sequence's share of a forward step.
public struct SequenceInput {
    /// The sequence's KV cache; its length is the position of the first new token.
    public let cache: KVCache
    /// New token ids to run.
    public let tokens: [Int]
    /// Return logits for every new token instead of only the last.
    public let allLogits: Bool

    public init(cache: KVCache, tokens: [Int], allLogits: Bool = false) {
        self.cache = cache
        self.tokens = tokens
        self.allLogits = allLogits
    }
}

/// A decoder-only MoE transformer: embeddings → layers (attention, then a dense MLP or a
/// routed-expert MoE block, each behind an RMSNorm with a residual) → final norm → LM head.
/// Dense weights are held here; routed experts are reached only through `experts`.
public final class TransformerModel: @unchecked Sendable {
    /// Hyper-parameters.
    public let config: ModelConfig
    /// Architecture switches and tensor names.
    public let description: ArchitectureDescription
    /// Where routed experts come from.
    public let experts: ExpertProvider
    /// Receives routing decisions (trace recording, predictors); nil for none.
    public var routingObserver: RoutingObserver?

    /// Tells the routing observers that the sequence of `cache` runs no more steps (finished,
    /// cancelled or failed); the engine and the generator call it.
    public func sequenceEnded(_ cache: KVCache) { routingObserver?.sequenceEnded(cache.sequenceID) }

    /// Whether decode steps run a shadow of the next MoE layer while a layer's misses load and
    /// report its routing to `routingObserver` (`ShadowRouting`); the runtime turns it on with
    /// prefetch and `--shadow-routing on`. Set before steps run.
    public var shadowRouting = false
    /// Linear stand-ins for the routed experts' outputs (`ExpertSurrogates`), with which the shadow
    /// fills in the experts still loading and, in the early modes, also runs as a layer routes
    /// (`surrogateShadow`); nil: none. Set before steps run.
    public var expertSurrogates: ExpertSurrogates?
    /// How the shadow uses `expertSurrogates` (`SurrogateShadow`).
    public var surrogateShadow: SurrogateShadow = .fill
    /// With `expertSurrogates`: whether each shadow goes on to the layer after the next
    /// (`ShadowRouting.run(_:then:...)`). Off: on the widened demo it read 0.4-0.8 MB a token
    /// more and decoded no faster (docs/PREDICTOR.md, session 36); `MOE_SHADOW_CHAIN=on` turns it
    /// on (for measurements).
    public var shadowChain = ProcessInfo.processInfo.environment["MOE_SHADOW_CHAIN"] == "on"
    /// With `SurrogateShadow.confident`: the routing weight an early shadow's expert needs to be
    /// guessed (`MOE_EARLY_SHADOW_FLOOR`, for measurements; 0.1 measured best of 0.1 and 0.2).
    public var earlyShadowFloor: Float = ProcessInfo.processInfo.environment["MOE_EARLY_SHADOW_FLOOR"].flatMap { Float($0) } ?? 0.1
    private lazy var shadow = ShadowRouting(config: config)
    /// Per layer: whether it is an MoE layer whose next layer is one too, with full causal
    /// attention, which the shadow can run.
    private let shadowTargets: [Bool]

    private let embedding: WeightMatrix // [vocab, hidden]
    private let lmHead: WeightMatrix    // [vocab, hidden]
    private let finalNorm: [Float]
    private let layers: [DecoderLayer]

    private struct DecoderLayer {
        let index: Int
        let inputNorm: [Float]
        /// The token mixer: softmax or latent attention over the KV cache, or (hybrid models) a gated delta-net.
        let attention: (any SelfAttentionLayer)?
        let linearAttention: GatedDeltaNet?
        let postAttentionNorm: [Float]
        let feedForward: FeedForward
    }

    private enum FeedForward {
        case dense(DenseMLP)
        case sparse(SparseMoEBlock)
    }

    /// Builds the model from `weights` (dense tensors) and `experts` (routed experts).
    public init(config: ModelConfig, weights: WeightSource, experts: ExpertProvider) throws {
        // The core pair's helper thread, started now rather than inside the first decode step
        // that splits work (DecodeStepAllocationTests counts that step's allocations).
        CorePair.prepare()
        self.config = config
        self.experts = experts
        let description = ArchitectureDescription.of(config.architecture)
        self.description = description
        let hidden = config.hiddenSize
        embedding = try weights.matrix("model.embed_tokens.weight", rows: config.vocabSize, cols: hidden)
        if weights.contains("lm_head.weight") {
            lmHead = try weights.matrix("lm_head.weight", rows: config.vocabSize, cols: hidden)
        } else if config.tieWordEmbeddings {
            lmHead = embedding
        } else {
            throw ModelFormatError("lm_head.weight: missing from the checkpoint and tie_word_embeddings is false")
        }
        let normOffset = description.normWeightOffset
        finalNorm = try weights.vector("model.norm.weight", count: hidden).map { $0 + normOffset }
        let decoderLayers = try (0..<config.layerCount).map { layer in
            let prefix = "model.layers.\(layer)"
            let feedForward: FeedForward
            if config.isMoELayer(layer) {
                feedForward = .sparse(try SparseMoEBlock(layer: layer, config: config, description: description, weights: weights))
            } else {
                feedForward = .dense(try DenseMLP(prefix: description.feedForwardPrefix(layer), hidden: hidden,
                                                  width: config.denseIntermediateSize, activation: description.activation(for: config),
                                                  source: weights))
            }
            let linear = config.isLinearAttentionLayer(layer)
            return DecoderLayer(
                index: layer,
                inputNorm: try weights.vector("\(prefix).input_layernorm.weight", count: hidden).map { $0 + normOffset },
                attention: try linear ? nil : config.latentAttention.map { latent -> any SelfAttentionLayer in
                    try LatentAttentionLayer(layer: layer, config: config, dims: latent, weights: weights)
                } ?? AttentionLayer(layer: layer, config: config, description: description, weights: weights),
                linearAttention: try linear ? GatedDeltaNet(layer: layer, config: config, description: description, weights: weights) : nil,
                postAttentionNorm: try weights.vector("\(prefix).post_attention_layernorm.weight", count: hidden).map { $0 + normOffset },
                feedForward: feedForward)
        }
        layers = decoderLayers
        shadowTargets = decoderLayers.indices.map { index in
            guard index + 1 < decoderLayers.count, case .sparse = decoderLayers[index].feedForward,
                  case .sparse = decoderLayers[index + 1].feedForward,
                  let attention = decoderLayers[index + 1].attention as? AttentionLayer else { return false }
            return attention.supportsShadow
        }
    }

    /// The router of MoE layer `layer`, `[experts, hidden]`; nil for a dense layer. Predictors
    /// apply it to earlier hidden states to guess the layer's experts ahead of time.
    public func router(forLayer layer: Int) -> WeightMatrix? {
        if case .sparse(let block) = layers[layer].feedForward { return block.router }
        return nil
    }

    /// The bias `[experts]` added to MoE layer `layer`'s router logits (gpt-oss); nil without one.
    public func routerBias(forLayer layer: Int) -> [Float]? {
        if case .sparse(let block) = layers[layer].feedForward { return block.routerBias }
        return nil
    }

    /// The routing rule of this model's MoE layers (the predictor guesses with it).
    public var routerSpec: RouterSpec { description.router(config) }

    /// The routing rule of MoE layer `layer` with its own data (the score-correction bias);
    /// nil for a dense layer. The predictor guesses each layer with its own.
    public func routerSpec(forLayer layer: Int) -> RouterSpec? {
        if case .sparse(let block) = layers[layer].feedForward { return block.routing }
        return nil
    }

    /// Bytes of the forward workspace for steps of at most `maxRows` token rows from at most
    /// `maxSequences` sequences: every activation buffer of a step (hidden states, q/k/v,
    /// attention scores, router logits, expert inputs, outputs and intermediates per expert
    /// worker, the logits of each sequence's last token). Exactly what `reserveWorkspace`
    /// allocates; the memory plan counts it.
    public static func workspaceBytes(config: ModelConfig, maxRows: Int, maxSequences: Int) -> Int {
        ForwardWorkspace.Sizes(config: config, maxRows: maxRows, maxSequences: maxSequences).bytes
    }

    /// Allocates the forward workspace now for steps of at most `maxRows` rows from at most
    /// `maxSequences` sequences (otherwise the first steps size it, growing it to the largest
    /// step seen). Steps within it allocate nothing.
    public func reserveWorkspace(maxRows: Int, maxSequences: Int) {
        stepLock.lock(); defer { stepLock.unlock() }
        _ = workspace(rows: maxRows, sequences: maxSequences)
    }

    /// Bytes the forward workspace holds now (0 before the first step or reservation).
    public var workspaceByteCount: Int {
        stepLock.lock(); defer { stepLock.unlock() }
        return currentWorkspace?.byteCount ?? 0
    }

    /// Reused by every step; replaced by a larger one only when a step does not fit.
    private var currentWorkspace: ForwardWorkspace?
    /// One step at a time uses the workspace.
    private let stepLock = NSLock()

    private func workspace(rows: Int, sequences: Int) -> ForwardWorkspace {
        if let current = currentWorkspace, current.sizes.fits(rows: rows, sequences: sequences) { return current }
        let old = currentWorkspace?.sizes
        let grown = ForwardWorkspace(ForwardWorkspace.Sizes(config: config, maxRows: max(rows, old?.maxRows ?? 0),
                                                            maxSequences: max(sequences, old?.maxSequences ?? 0)))
        currentWorkspace = grown
        return grown
    }

    /// How `makeCache` stores keys and values (float32 unless a runtime chooses float16).
    public var kvPrecision: KVPrecision = .f32

    /// Bytes one position takes in a KV cache of this model (all layers, keys and values).
    public var kvBytesPerToken: Int { Self.kvBytesPerToken(config, precision: kvPrecision) }

    /// Bytes one position of `config`'s KV cache takes at `precision`, in the layers that keep
    /// every position: not the sliding-window layers (bounded: `kvWindow`) nor the linear-attention
    /// ones (a fixed-size state instead: `sequenceStateBytes`).
    public static func kvBytesPerToken(_ config: ModelConfig, precision: KVPrecision) -> Int {
        // Multi-head latent attention keeps one latent and one rotary key per token and layer.
        if let latent = config.latentAttention { return config.layerCount * latent.cachedValuesPerToken * precision.byteCount }
        let windows = kvWindows(config)
        let unbounded = windows.indices.filter { windows[$0] == nil && !config.isLinearAttentionLayer($0) }.count
        return unbounded * 2 * config.kvHeadCount * config.headDim * precision.byteCount
    }

    /// The sliding-window layers' share of a sequence's KV cache at `precision`: each position
    /// costs `bytesPerToken`, for at most `positions` positions (`KVCache.windowRows`).
    public static func kvWindow(_ config: ModelConfig, precision: KVPrecision) -> (positions: Int, bytesPerToken: Int) {
        let windows = kvWindows(config).compactMap { $0 }
        guard let widest = windows.max() else { return (0, 0) }
        let rows = min(KVCache.windowRows(widest), config.maxPositionEmbeddings)
        return (rows, windows.count * 2 * config.kvHeadCount * config.headDim * precision.byteCount)
    }

    /// KV-cache bytes of one sequence of `positions` positions at `precision`, window-bounded
    /// layers included: what the memory plan and the scheduler's reservations count.
    public static func kvBytes(_ config: ModelConfig, precision: KVPrecision, positions: Int) -> Int {
        let window = kvWindow(config, precision: precision)
        return positions * kvBytesPerToken(config, precision: precision) + min(positions, window.positions) * window.bytesPerToken
    }

    /// Per layer: the sliding window that bounds its KV cache, nil for full attention (and for
    /// latent attention, whose cache is never windowed).
    static func kvWindows(_ config: ModelConfig) -> [Int?] {
        if config.latentAttention != nil { return [Int?](repeating: nil, count: config.layerCount) }
        let spec = config.architecture.definition.attention(config)
        return (0..<config.layerCount).map { spec.slidingWindow(layer: $0) }
    }

    /// Bytes of weights the model derives at load time beyond the checkpoint's dense tensors:
    /// multi-head latent attention's float32 per-head copies of `kv_b_proj` (`LatentAttentionLayer`),
    /// counted whole although the stored matrix itself is then released (a slight overcount).
    public static func derivedWeightBytes(_ config: ModelConfig) -> Int {
        guard let latent = config.latentAttention else { return 0 }
        return config.layerCount * config.headCount * (latent.noPositionDim + latent.valueDim) * latent.latentRank
            * MemoryLayout<Float>.stride
    }

    /// Bytes of the fixed-size state each sequence holds whatever its length: the recurrent and
    /// conv state of `config`'s gated delta-net layers (0 for models without them).
    public static func sequenceStateBytes(_ config: ModelConfig) -> Int {
        config.linearAttention?.stateBytesPerSequence ?? 0
    }

    /// Bytes of one sequence's fixed-size state in this model (see the static member).
    public var sequenceStateBytes: Int { Self.sequenceStateBytes(config) }

    /// Creates an empty KV cache sized for this model, with the linear-attention state of a
    /// hybrid model beside its keys and values.
    public func makeCache() -> KVCache {
        if let latent = config.latentAttention {
            return KVCache(layerCount: config.layerCount, keyWidth: latent.latentRank, valueWidth: latent.ropeDim,
                           maxPositions: config.maxPositionEmbeddings, precision: kvPrecision)
        }
        return KVCache(layerCount: config.layerCount, kvHeads: config.kvHeadCount, headDim: config.headDim,
                       maxPositions: config.maxPositionEmbeddings, precision: kvPrecision, windows: Self.kvWindows(config),
                       linearState: config.linearAttention.map { LinearAttentionState(config: $0, layerCount: config.layerCount) })
    }

    /// Runs one step over the new tokens of every sequence, appends them to the caches, and
    /// returns per sequence the logits `[vocab]` of its last token, or `[n * vocab]` for all of
    /// its n tokens when `allLogits` is set. Steps run one at a time (they share the workspace).
    /// Copies the logits out of the workspace; `forwardStep` views them in place.
    public func forward(_ inputs: [SequenceInput]) throws -> [[Float]] {
        stepLock.lock(); defer { stepLock.unlock() }
        // Copied under the lock: the next step overwrites the workspace's logits.
        return try step(inputs).map { Array($0) }
    }

    /// As `forward`, but the logits stay in the workspace (no copy, no allocation in a decode
    /// step): valid until this model's next step, which overwrites them.
    public func forwardStep(_ inputs: [SequenceInput]) throws -> StepLogits {
        stepLock.lock(); defer { stepLock.unlock() }
        return try step(inputs)
    }

    /// The shadow of the layer after `layer` for this step (`ShadowRouting`), or nil: off, no
    /// observer, a layer it cannot run, or not a decode step of at most `ShadowRouting.maxRows`
    /// sequences. `residual` holds the step's h_mid `[rows, hidden]` while the MoE block runs.
    private func shadowStep(after layer: Int, spans: [SequenceSpan], rowCount: Int,
                            residual: UnsafePointer<Float>) -> ShadowHook? {
        guard shadowRouting, shadowTargets[layer], let observer = routingObserver, rowCount <= ShadowRouting.maxRows,
              spans.count == rowCount else { return nil }
        guard let target = shadowTarget(layer + 1) else { return nil }
        // Two ahead: where the next layer's experts have surrogates and the layer after can be shadowed.
        let then = shadowChain && expertSurrogates?.covers(layer: layer + 1) == true && shadowTargets[layer + 1]
            ? shadowTarget(layer + 2) : nil
        let shadow = self.shadow, eps = config.rmsNormEps, surrogates = expertSurrogates
        let floor = surrogateShadow == .confident ? earlyShadowFloor : nil
        return ShadowHook(partial: shadow.partial.pointer, run: { early in
            shadow.run(target, then: then, surrogates: surrogates, confidentFloor: early ? floor : nil,
                       residual: residual, spans: spans, eps: eps, observer: observer)
        }, surrogates: expertSurrogates, surrogateMode: surrogateShadow)
    }

    /// Decoder layer `index` as a shadow target, or nil where it has no full attention or no MoE block.
    private func shadowTarget(_ index: Int) -> ShadowRouting.Target? {
        guard index < layers.count else { return nil }
        let layer = layers[index]
        guard let attention = layer.attention as? AttentionLayer, case .sparse(let block) = layer.feedForward else { return nil }
        return ShadowRouting.Target(attention: attention, inputNorm: layer.inputNorm, postAttentionNorm: layer.postAttentionNorm, block: block)
    }

    /// One step; the caller holds `stepLock`.
    private func step(_ inputs: [SequenceInput]) throws -> StepLogits {
        let hidden = config.hiddenSize
        var rowCount = 0
        for input in inputs {
            precondition(!input.tokens.isEmpty, "a sequence in a step needs at least one token")
            let start = input.cache.length
            guard start + input.tokens.count <= config.maxPositionEmbeddings else {
                throw ModelFormatError("context overflow: \(start + input.tokens.count) positions requested, the model allows \(config.maxPositionEmbeddings)")
            }
            rowCount += input.tokens.count
        }

        let workspace = self.workspace(rows: rowCount, sequences: inputs.count)
        var spans = workspace.takeSpans()
        defer { workspace.giveBack(spans: &spans) }
        var firstRow = 0
        for input in inputs {
            let start = input.cache.length
            input.cache.reserve(start + input.tokens.count)
            spans.append(SequenceSpan(cache: input.cache, firstRow: firstRow, rowCount: input.tokens.count, startPosition: start))
            firstRow += input.tokens.count
        }
        let residual = workspace.residual       // [T, hidden]
        let normalized = workspace.normalized   // [T, hidden]
        let blockOutput = workspace.blockOutput // [T, hidden]
        var row = 0
        for input in inputs {
            for token in input.tokens {
                guard token >= 0 && token < config.vocabSize else {
                    throw ModelFormatError("token id \(token) is outside the vocabulary (0..<\(config.vocabSize))")
                }
                embedding.widenRow(token, into: residual.pointer + row * hidden)
                row += 1
            }
        }

        if let routingObserver {
            routingObserver.willRunStep(lastRows: spans.map { $0.firstRow + $0.rowCount - 1 })
            routingObserver.willRunSequences(spans.map { SequenceRows(id: $0.cache.sequenceID, rows: $0.firstRow..<$0.firstRow + $0.rowCount) })
        }
        for layer in layers {
            normalized.pointer.update(from: residual.pointer, count: rowCount * hidden)
            Ops.rmsNorm(normalized.pointer, rowCount: rowCount, dim: hidden, weight: layer.inputNorm, eps: config.rmsNormEps)
            routingObserver?.willRunAttention(layer: layer.index, input: normalized.pointer, rowCount: rowCount)
            if let linear = layer.linearAttention {
                linear.forward(normalized.pointer, rowCount: rowCount, spans: spans, workspace: workspace, output: blockOutput.pointer)
            } else {
                layer.attention!.forward(normalized.pointer, rowCount: rowCount, spans: spans, workspace: workspace,
                                         output: blockOutput.pointer)
            }
            Ops.addScaled(residual.pointer, blockOutput.pointer, alpha: 1, count: rowCount * hidden)

            normalized.pointer.update(from: residual.pointer, count: rowCount * hidden)
            Ops.rmsNorm(normalized.pointer, rowCount: rowCount, dim: hidden, weight: layer.postAttentionNorm, eps: config.rmsNormEps)
            switch layer.feedForward {
            case .dense(let mlp):
                mlp.forward(normalized.pointer, rowCount: rowCount, scratch: workspace.workers[0], output: blockOutput.pointer)
            case .sparse(let moe):
                try moe.forward(normalized.pointer, rowCount: rowCount, hidden: hidden, provider: experts,
                                observer: routingObserver, workspace: workspace, output: blockOutput.pointer,
                                shadow: shadowStep(after: layer.index, spans: spans, rowCount: rowCount, residual: residual.pointer))
            }
            Ops.addScaled(residual.pointer, blockOutput.pointer, alpha: 1, count: rowCount * hidden)
        }
        for span in spans { span.cache.advance(by: span.rowCount) }

        // LM head only over the rows whose logits are wanted, all sequences in one pass over
        // its weights; row by row in arithmetic, so a sequence's logits do not depend on its
        // neighbours in the step.
        // Sequence i's wanted rows are logits rows offsets[i] ..< offsets[i + 1]: its last row,
        // or all of them (`allLogits`).
        let offsets = workspace.logitOffsets.pointer // [S + 1]
        offsets[0] = 0
        for (i, (input, span)) in zip(inputs, spans).enumerated() {
            offsets[i + 1] = offsets[i] + (input.allLogits ? span.rowCount : 1)
        }
        let wantedRows = offsets[inputs.count]
        // One row per sequence fits the workspace; all of a prompt's logits (`allLogits`, the
        // fidelity and perplexity paths, never a decode step) take buffers of their own.
        let fits = wantedRows <= workspace.sizes.maxSequences
        let rows = fits ? workspace.logitInputs : AlignedBuffer<Float>(count: wantedRows * hidden) // [wanted, hidden]
        for (i, (input, span)) in zip(inputs, spans).enumerated() {
            let first = input.allLogits ? span.firstRow : span.firstRow + span.rowCount - 1
            (rows.pointer + offsets[i] * hidden).update(from: residual.pointer + first * hidden, count: (offsets[i + 1] - offsets[i]) * hidden)
        }
        Ops.rmsNorm(rows.pointer, rowCount: wantedRows, dim: hidden, weight: finalNorm, eps: config.rmsNormEps)
        let logits = fits ? workspace.logits : AlignedBuffer<Float>(count: wantedRows * config.vocabSize) // [wanted, vocab]
        lmHead.applyRowwise(rows.pointer, rowCount: wantedRows, into: logits.pointer)
        routingObserver?.didRunStep()
        return StepLogits(values: logits, offsets: workspace.logitOffsets, count: inputs.count, vocabSize: config.vocabSize)
    }
}

/// The logits of one forward step where the step left them (`TransformerModel.forwardStep`):
/// per sequence, in the order of the step's inputs, `[vocab]` for its last token or `[n * vocab]`
/// for all n of its tokens (`allLogits`). A view, not a copy: valid until the model's next step,
/// which overwrites it; copy (`Array(logits[i])`) what must outlive that.
public struct StepLogits: RandomAccessCollection {
    /// `[wanted rows, vocab]`; kept alive by the view.
    private let values: AlignedBuffer<Float>
    /// `[sequences + 1]`: sequence i's rows are `offsets[i] ..< offsets[i + 1]`.
    private let offsets: AlignedBuffer<Int>
    /// Logits per row.
    public let vocabSize: Int
    /// The first sequence's index, 0.
    public let startIndex = 0
    /// The number of sequences.
    public let endIndex: Int

    init(values: AlignedBuffer<Float>, offsets: AlignedBuffer<Int>, count: Int, vocabSize: Int) {
        self.values = values
        self.offsets = offsets
        self.vocabSize = vocabSize
        endIndex = count
    }

    /// Sequence `sequence`'s logits, `[rows, vocab]`.
    public subscript(sequence: Int) -> UnsafeBufferPointer<Float> {
        precondition(sequence >= 0 && sequence < endIndex, "sequence \(sequence) is not in the step")
        let first = offsets.pointer[sequence]
        return UnsafeBufferPointer(start: values.pointer + first * vocabSize, count: (offsets.pointer[sequence + 1] - first) * vocabSize)
    }
}

extension WeightMatrix {
    /// Copies row `r` as float32 into `destination` (embedding lookup).
    func widenRow(_ r: Int, into destination: UnsafeMutablePointer<Float>) {
        switch storage {
        case .f32(let w): destination.update(from: w + r * cols, count: cols)
        case .bf16(let w): FloatConversion.convertBF16(w + r * cols, to: destination, count: cols)
        case .int8(let values, let scales): // pack --dense q8: widened in place (one row per token, no allocation)
            Quantization.dequantizeInt8(values + r * cols, scales: scales + r, rows: 1, cols: cols, into: destination)
        case .q4(let blocks, let scales): // pack --dense q4
            let perRow = cols / Quantization.q4BlockSize
            Quantization.dequantizeQ4(blocks + r * perRow * Quantization.q4BlockBytes, scales: scales + r * perRow, rows: 1, cols: cols, into: destination)
        case .q4f16: destination.update(from: row(r), count: cols) // a GGUF's Q4_0 embeddings (GGMLQ4_0), as .ggml's
        case .mxfp4: destination.update(from: row(r), count: cols) // MXFP4 embeddings: rare, not hot
        case .ggml: destination.update(from: row(r), count: cols) // GGUF-typed embeddings are widened by their own path
        }
    }
}
