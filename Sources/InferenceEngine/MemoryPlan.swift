import Foundation

/// How a `--memory-budget` is divided: the process's own footprint (runtime, libraries,
/// tokenizer), the dense weights and scratch buffers are fixed, the KV cache gets a share, and
/// the expert cache gets what remains. The parts add up to the budget, so the resident set of
/// a process that keeps to its plan stays inside the budget.
public struct MemoryPlan: Sendable, Equatable, Codable {
    public var budgetBytes: Int
    /// What the process occupies before any weight is loaded (Swift runtime, Foundation,
    /// OpenBLAS, the tokenizer), measured, plus an allowance for thread stacks and allocator
    /// slack that appear once generation starts.
    public var runtimeBytes: Int
    public var denseBytes: Int
    public var scratchBytes: Int
    /// KV cache, with a hybrid model's fixed per-sequence recurrent state.
    public var kvCacheBytes: Int
    public var expertCacheBytes: Int

    enum CodingKeys: String, CodingKey {
        case budgetBytes = "budget_bytes", runtimeBytes = "runtime_bytes", denseBytes = "dense_bytes", scratchBytes = "scratch_bytes"
        case kvCacheBytes = "kv_cache_bytes", expertCacheBytes = "expert_cache_bytes"
    }

    /// Divides `budget`. `runtimeBytes` (the process's footprint before loading, see
    /// `ProcessMemory.runtimeReservation`) comes off the top. The KV cache gets enough for `kvTokens` positions, but never more than
    /// `kvShare` of what is left after dense weights and scratch; the expert cache must hold
    /// at least `minimumExpertBytes` (see `minimumExpertBytes(expertBytes:expertsPerToken:readsInFlight:)`)
    /// or planning fails with the numbers. `sequenceStateBytes` (a hybrid model's fixed recurrent
    /// state of every sequence together) is wanted by the KV share beside the positions.
    public static func plan(budget: Int, runtimeBytes: Int = 0, denseBytes: Int, scratchBytes: Int, kvBytesPerToken: Int,
                            kvTokens: Int, minimumExpertBytes: Int, kvShare: Double = 0.25,
                            sequenceStateBytes: Int = 0, kvWindowBytes: Int = 0) throws -> MemoryPlan {
        let afterFixed = budget - runtimeBytes - denseBytes - scratchBytes
        // kvWindowBytes: the sliding-window layers' bounded share of every sequence (gpt-oss).
        let kvWanted = kvBytesPerToken * kvTokens + sequenceStateBytes + kvWindowBytes
        let kv = max(0, min(kvWanted, Int(Double(max(afterFixed, 0)) * kvShare)))
        let experts = afterFixed - kv
        guard experts >= minimumExpertBytes else {
            throw MemoryPlanError(
                "a memory budget of \(formatBytes(budget)) cannot hold the process itself (\(formatBytes(runtimeBytes))), the dense weights (\(formatBytes(denseBytes))), scratch buffers (\(formatBytes(scratchBytes))), a KV cache (\(formatBytes(kv))) and the smallest expert cache (\(formatBytes(minimumExpertBytes)): a layer's top-k and the reads in flight); it needs at least \(formatBytes(runtimeBytes + denseBytes + scratchBytes + kv + minimumExpertBytes))")
        }
        return MemoryPlan(budgetBytes: budget, runtimeBytes: runtimeBytes, denseBytes: denseBytes, scratchBytes: scratchBytes,
                          kvCacheBytes: kv, expertCacheBytes: experts)
    }
}

extension MemoryPlan {
    /// The smallest expert cache a step can run in: the current layer's top-k experts, plus the
    /// reads that may be in flight for later layers (the prefetch budget). Experts of other
    /// layers are evicted as the step moves on; a batch that routes to more experts than fit
    /// runs them in waves.
    public static func minimumExpertBytes(expertBytes: Int, expertsPerToken: Int, readsInFlight: Int) -> Int {
        (expertsPerToken + max(0, readsInFlight)) * expertBytes
    }

    /// Per-layer floors (experts a layer keeps against the others) that fit a cache of
    /// `cacheBytes`: `expertsPerToken` when every layer's top-k fits at once, fewer when it does not.
    public static func floorSlots(cacheBytes: Int, expertBytes: Int, expertsPerToken: Int, layers: Int) -> Int {
        guard expertBytes > 0, layers > 0 else { return expertsPerToken }
        return max(0, min(expertsPerToken, cacheBytes / (layers * expertBytes)))
    }
}

/// A budget too small for the model.
public struct MemoryPlanError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// `1536` → `1.5 KiB`.
public func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while abs(value) >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}
