import MoEModels

/// KV caches of recent requests kept for reuse (llama-server's `cache_prompt`): a new request
/// starts from the retained cache sharing the longest prefix with its prompt and prefills only
/// the rest. Guarded by the engine's lock; used on the engine thread.
///
/// What may be reused depends on the cache (`KVCache.canTruncate`):
/// - full attention (and latent attention): any prefix;
/// - sliding-window layers (gpt-oss): only prefixes whose last window the layer still holds;
/// - a linear-attention state (Qwen3-Next) folds every position in and cannot go back, so a
///   cache whose *whole* content is a prefix of the new prompt is reused as it is, and otherwise
///   the snapshot of the linear state taken at the end of that request's prompt (`Snapshot`):
///   the attention layers' rows truncated to that position, the linear layers restored from it.
/// A whole-prompt hit (the same prompt again) reuses every prompt position and samples from the
/// retained last-prompt logits, so no forward pass runs and the result is bit-identical to the
/// first run whatever the kernels. A partial hit (a chat's next turn: the last turn's prompt and
/// reply, then new tokens) prefills the rest of the prompt, whose rows then run in a step of
/// another shape than in an uncached run, and whose reused reply rows ran one per decode step:
/// bit-identical because every kernel gives a row the same bits whatever the rows beside it
/// (`RowInvariantKernels` for bf16, integer dots for q4/int8/MXFP4, rank-ordered expert sums),
/// within float rounding where a model's kernels do not (f32 sgemm, Qwen3-Next's chunked
/// delta rule with `MOE_DELTA_RULE=chunked`); so the engine takes partial hits only where a probe found the model's prefill
/// exact (`PartialPromptReuse.whenExact`).
///
/// Bounded by the KV budget of the memory plan: the engine evicts (least recently used first)
/// whatever the running sequences and the next admissions need (`evict(toFit:)`).
final class PromptCache {
    struct Entry {
        /// The tokens whose KV `cache` holds (`cache.length` of them).
        var tokens: [Int]
        var cache: KVCache
        /// Logits after `tokens[0..<logitsPosition]` (the end of that request's prompt), when kept.
        var logits: [Float]?
        var logitsPosition: Int
        /// The linear-attention state after `tokens[0..<logitsPosition]`, for a cache that cannot
        /// go back there otherwise (set only with `logits`).
        var snapshot: LinearAttentionState?
        var lastUse: UInt64
        var byteCount: Int {
            cache.byteCount + (logits?.count ?? 0) * MemoryLayout<Float>.stride + (snapshot?.byteCount ?? 0)
        }

        /// Whether the cache can be brought back to `position`: truncated, or rewound to the snapshot.
        func canReturn(to position: Int) -> Bool {
            cache.canTruncate(to: position) || (snapshot != nil && position == logitsPosition)
        }
    }

    /// A reusable cache for a prompt.
    struct Hit {
        /// The cache, holding exactly `reused` positions.
        var cache: KVCache
        /// Prompt tokens whose KV the cache holds.
        var reused: Int
        /// Set for a whole-prompt hit (`reused == prompt.count`): the logits to sample the first token from.
        var logits: [Float]?
    }

    private(set) var entries: [Entry] = []
    private var clock: UInt64 = 0
    /// Most entries kept whatever their size.
    let maxEntries: Int

    init(maxEntries: Int) { self.maxEntries = max(1, maxEntries) }

    /// Bytes the retained caches hold.
    var byteCount: Int { entries.reduce(0) { $0 + $1.byteCount } }

    /// Keeps `cache` (holding `tokens`) for later requests; `logits` are those after the first
    /// `logitsPosition` tokens, kept only when the cache can go back to that position (truncated,
    /// or through `snapshot`, its linear-attention state at that position).
    func retain(tokens: [Int], cache: KVCache, logits: [Float]?, logitsPosition: Int, snapshot: LinearAttentionState? = nil) {
        precondition(tokens.count == cache.length)
        guard cache.length > 0 else { return }
        let snapshot = cache.windows.allSatisfy({ $0 == nil }) && logitsPosition <= cache.length ? snapshot : nil
        let keepLogits = logits != nil && logitsPosition > 0 && (cache.canTruncate(to: logitsPosition) || snapshot != nil)
        // An entry whose tokens this one extends (or repeats) says nothing more: drop it.
        entries.removeAll { $0.tokens.count <= tokens.count && tokens.starts(with: $0.tokens)
            && ($0.logits == nil || (keepLogits && $0.logitsPosition == logitsPosition)) }
        clock += 1
        entries.append(Entry(tokens: tokens, cache: cache, logits: keepLogits ? logits : nil,
                             logitsPosition: keepLogits ? logitsPosition : 0,
                             snapshot: keepLogits && !cache.canTruncate(to: logitsPosition) ? snapshot : nil, lastUse: clock))
        while entries.count > maxEntries { evictOldest() }
    }

    /// Takes out of the cache the entry that serves the longest prefix of `prompt`, truncated to
    /// it; with `allowPartial` false, only an entry holding the whole prompt and its logits.
    func take(for prompt: [Int], allowPartial: Bool) -> Hit? {
        var best: (index: Int, reused: Int, whole: Bool)?
        for (index, entry) in entries.enumerated() {
            let common = Self.commonPrefix(entry.tokens, prompt)
            if entry.logits != nil, entry.logitsPosition == prompt.count, common >= prompt.count {
                // The same prompt again: every position, and its logits.
                if best.map({ !$0.whole || $0.reused < prompt.count }) ?? true { best = (index, prompt.count, true) }
                continue
            }
            // One prompt token must be left to prefill: its logits are the first token's.
            var reused = min(common, prompt.count - 1)
            if !entry.cache.canTruncate(to: reused), entry.snapshot != nil, reused >= entry.logitsPosition {
                reused = entry.logitsPosition // back to the end of that prompt through its snapshot
            }
            guard allowPartial, reused > 0, entry.canReturn(to: reused) else { continue }
            if best.map({ !$0.whole && $0.reused < reused }) ?? true { best = (index, reused, false) }
        }
        guard let best else { return nil }
        let entry = entries.remove(at: best.index)
        if entry.cache.canTruncate(to: best.reused) {
            entry.cache.truncate(to: best.reused)
        } else if let snapshot = entry.snapshot {
            entry.cache.rewind(to: best.reused, linearState: snapshot)
        }
        return Hit(cache: entry.cache, reused: best.reused, logits: best.whole ? entry.logits : nil)
    }

    /// Evicts least recently used entries until at most `bytes` are held.
    func evict(toFit bytes: Int) {
        while !entries.isEmpty && byteCount > max(0, bytes) { evictOldest() }
    }

    private func evictOldest() {
        guard let index = entries.indices.min(by: { entries[$0].lastUse < entries[$1].lastUse }) else { return }
        entries.remove(at: index)
    }

    static func commonPrefix(_ a: [Int], _ b: [Int]) -> Int {
        var n = 0
        let limit = min(a.count, b.count)
        while n < limit && a[n] == b[n] { n += 1 }
        return n
    }
}
