/// The cache's state as a pure state machine: which experts are loading or resident, who
/// pins them, how many bytes they take, and — through a `CachePolicy` — which to evict to
/// make room. No I/O, no threads, no clocks: the runtime cache drives it under its lock and
/// the trace replay drives it directly, so both run the same decisions.
///
/// Loading experts count against the budget from the moment they are reserved, so the bytes
/// held (resident plus being read) never exceed it. A demand read may be tracked before its
/// room is made (`reserveLater`); it holds nothing until `makeRoom`, when its read starts.
/// Pinned and loading experts are never evicted. Floors: while a layer holds `floorSlots`
/// experts or fewer, another layer cannot evict them (a layer can always evict its own), so
/// no layer is starved.
///
/// Speculation is bounded per layer: with `speculativeLayerBytes` set, a layer's prefetched,
/// not yet used experts never hold more than that; a new prefetch first replaces the layer's
/// own unused prefetches, and is refused if they are still loading. Without the bound, a
/// batch's predictions (~20 experts per layer for 8 sequences) churned a tight cache: the
/// hit rate fell from 0.73 to 0.33 with prefetch on.
public struct CacheBookkeeping: Sendable {
    /// Whether an entry's bytes are still being read.
    public enum Residency: Sendable, Equatable {
        /// Reserved, read in progress or queued.
        case loading
        /// In RAM and usable.
        case resident
    }

    /// One tracked expert.
    public struct Entry: Sendable, Equatable {
        /// Bytes it takes (reserved while loading).
        public var bytes: Int
        /// Active users; pinned entries are never evicted.
        public var pins: Int
        /// Loading or resident.
        public var residency: Residency
        /// Loaded by a prefetch and not used by any demand yet (wasted if evicted so).
        public var prefetchedUnused: Bool
        /// A demand read queued before its room was made (`reserveLater`): it holds no bytes,
        /// evicts nothing and counts in no layer until `makeRoom`, when its read starts.
        public var awaitingRoom = false
    }

    /// An expert that was evicted to make room.
    public struct Eviction: Sendable, Equatable {
        /// Which expert.
        public var key: ExpertKey
        /// The bytes it freed.
        public var bytes: Int
        /// It had been prefetched and never used: its read was wasted.
        public var wastedPrefetch: Bool
    }

    /// The outcome of `reserve`.
    public enum Reservation: Sendable, Equatable {
        /// Room was made (by evicting these, possibly none) and the entry is now loading.
        case reserved(evicted: [Eviction])
        /// Not now: pinned or loading experts hold the room; retry after releases.
        case noRoom
        /// Never: the expert is larger than the whole (or its layer's) budget.
        case tooLarge
    }

    /// Total bytes the cache may hold (moved by `resize` under `--memory-budget auto`).
    public private(set) var budgetBytes: Int
    /// Bytes one layer may hold, for the per-layer partitioned caches of trace replay; nil
    /// when all layers share `budgetBytes`.
    public let layerBudgetBytes: Int?
    /// Experts per layer protected from other layers' evictions.
    public let floorSlots: Int
    /// Bytes of prefetched, unused experts one layer may hold; nil for no bound.
    public let speculativeLayerBytes: Int?
    /// The eviction policy (the replay feeds it future knowledge directly).
    public internal(set) var policy: any CachePolicy

    /// Tracked experts.
    public private(set) var entries: [ExpertKey: Entry] = [:]
    /// Bytes reserved by loading and resident entries.
    public private(set) var usedBytes = 0
    /// The most `usedBytes` ever reached.
    public private(set) var peakUsedBytes = 0
    private var layerBytes: [Int: Int] = [:]
    private var layerSlots: [Int: Int] = [:]
    /// Tracked keys per layer, so a per-layer eviction scans one layer, not the whole cache.
    private var layerKeys: [Int: Set<ExpertKey>] = [:]
    /// Resident, unpinned keys: the eviction candidates, kept up to date so that choosing a
    /// victim does not scan and test every entry (it ran for every reservation, and prefetch
    /// makes many: 7% of a decode step's CPU time before).
    private var evictable: Set<ExpertKey> = []
    /// Bytes of prefetched, not yet used entries (loading or resident) per layer.
    private var speculativeBytes: [Int: Int] = [:]
    /// Tracked experts a prediction says their layer will use soon (`expect`): evicted only when
    /// no other candidate would do, until used, withdrawn (`unexpect`) or removed. Without this, a
    /// guess for an expert that was already resident did nothing, and the reads of the layers in
    /// between could evict it just before its layer came (the perfect predictor three layers
    /// ahead left more demand reads than two, docs/PREDICTOR.md "Session 17").
    public private(set) var expected: Set<ExpertKey> = []

    /// An empty cache of `budgetBytes` (and at most `layerBudgetBytes` per layer), with
    /// floors of `floorSlots` experts per layer, evicting by `policy`.
    public init(budgetBytes: Int, layerBudgetBytes: Int? = nil, floorSlots: Int = 0, speculativeLayerBytes: Int? = nil,
                policy: any CachePolicy) {
        precondition(budgetBytes >= 0 && floorSlots >= 0)
        self.budgetBytes = budgetBytes
        self.layerBudgetBytes = layerBudgetBytes
        self.floorSlots = floorSlots
        self.speculativeLayerBytes = speculativeLayerBytes
        self.policy = policy
    }

    /// Bytes of `layer`'s prefetched experts no demand has used yet.
    public func speculativeBytes(layer: Int) -> Int { speculativeBytes[layer] ?? 0 }

    /// The entry for `key`, if tracked.
    public func entry(_ key: ExpertKey) -> Entry? { entries[key] }

    /// Experts of `layer` tracked (loading or resident).
    public func slots(layer: Int) -> Int { layerSlots[layer] ?? 0 }

    /// Bytes held by `layer`.
    public func bytes(layer: Int) -> Int { layerBytes[layer] ?? 0 }

    /// Resident experts, sorted.
    public var residentKeys: [ExpertKey] {
        entries.filter { $0.value.residency == .resident }.keys.sorted()
    }

    /// Adds a user of `key` (tracked, loading or resident).
    public mutating func pin(_ key: ExpertKey) {
        precondition(entries[key] != nil, "pin of untracked \(key)")
        entries[key]!.pins += 1
        evictable.remove(key)
    }

    /// Removes a user of `key`.
    public mutating func unpin(_ key: ExpertKey) {
        precondition((entries[key]?.pins ?? 0) > 0, "unpin of unpinned \(key)")
        entries[key]!.pins -= 1
        if entries[key]!.pins == 0 && entries[key]!.residency == .resident { evictable.insert(key) }
    }

    /// Marks tracked `key` as about to be used by its layer: it is evicted last (see `expected`).
    public mutating func expect(_ key: ExpertKey) {
        precondition(entries[key] != nil, "expect of untracked \(key)")
        expected.insert(key)
    }

    /// Withdraws the mark of `key` (a guess its layer did not use, or a cancelled one).
    public mutating func unexpect(_ key: ExpertKey) { expected.remove(key) }

    /// Withdraws the marks of the keys `isWithdrawn` picks.
    public mutating func unexpect(where isWithdrawn: (ExpertKey) -> Bool) {
        if !expected.isEmpty { expected = expected.filter { !isWithdrawn($0) } }
    }

    /// Records a demand use of resident `key`; returns true if this is the first use of a
    /// prefetched expert (a prefetch hit).
    @discardableResult
    public mutating func use(_ key: ExpertKey) -> Bool {
        precondition(entries[key]?.residency == .resident, "use of non-resident \(key)")
        policy.didAccess(key)
        expected.remove(key)
        let wasPrefetched = entries[key]!.prefetchedUnused
        if wasPrefetched { speculativeBytes[key.layer]! -= entries[key]!.bytes }
        entries[key]!.prefetchedUnused = false
        return wasPrefetched
    }

    /// Makes room for `bytes` of `key` (absent) by evicting unpinned resident experts chosen
    /// by the policy, within floors, and records it as loading with `pins` users. Nothing is
    /// evicted unless the reservation succeeds. A prefetch is held to the layer's speculative
    /// bound unless `unbounded` (the prefill pipeline: a prompt chunk's union of predicted
    /// experts is needed nearly whole, and the bound would cut the pipeline to top-k experts).
    public mutating func reserve(_ key: ExpertKey, bytes: Int, pins: Int, prefetch: Bool = false, unbounded: Bool = false) -> Reservation {
        precondition(entries[key] == nil, "reserve of tracked \(key)")
        if bytes > budgetBytes || bytes > (layerBudgetBytes ?? Int.max) { return .tooLarge }
        var victims: [ExpertKey] = []
        if prefetch, !unbounded, let limit = speculativeLayerBytes {
            // The layer's own unused prefetches make way first; others' experts are not touched for this.
            guard bytes <= limit, let replaced = speculativeVictims(layer: key.layer, bytes: bytes, limit: limit) else { return .noRoom }
            victims = replaced
        }
        guard let more = chooseVictims(for: key, bytes: bytes, freed: victims) else { return .noRoom }
        let evicted = evict(victims + more)
        entries[key] = Entry(bytes: bytes, pins: pins, residency: .loading, prefetchedUnused: prefetch)
        if prefetch { speculativeBytes[key.layer, default: 0] += bytes }
        hold(key, bytes: bytes)
        return .reserved(evicted: evicted)
    }

    /// Tracks `key` (absent) as a demand read with `pins` users whose room is made only when
    /// its read starts (`makeRoom`): nothing is evicted and no bytes are held until then, so
    /// the victims are chosen by the policy as it stands at that moment. A batch step that
    /// misses most of a layer then gives up its own finished experts for its later reads,
    /// instead of reserving the whole union up front out of the other layers (docs/expert-cache.md,
    /// "Room made when the read starts"). `.reserved` (evicting nothing) once tracked, or
    /// `.tooLarge`, tracking nothing, if `bytes` can never fit; never `.noRoom`.
    public mutating func reserveLater(_ key: ExpertKey, bytes: Int, pins: Int) -> Reservation {
        precondition(entries[key] == nil, "reserve of tracked \(key)")
        if bytes > budgetBytes || bytes > (layerBudgetBytes ?? Int.max) { return .tooLarge }
        entries[key] = Entry(bytes: bytes, pins: pins, residency: .loading, prefetchedUnused: false, awaitingRoom: true)
        return .reserved(evicted: [])
    }

    /// Makes the room of `key`, tracked by `reserveLater`, by evicting as `reserve` does; on
    /// success it holds its bytes like any loading entry. `.noRoom` leaves it waiting.
    public mutating func makeRoom(for key: ExpertKey) -> Reservation {
        guard let entry = entries[key], entry.awaitingRoom else { preconditionFailure("makeRoom for \(key), which does not await room") }
        if entry.bytes > budgetBytes { return .tooLarge }
        guard let victims = chooseVictims(for: key, bytes: entry.bytes) else { return .noRoom }
        let evicted = evict(victims)
        entries[key]!.awaitingRoom = false
        hold(key, bytes: entry.bytes)
        return .reserved(evicted: evicted)
    }

    /// Evicts `victims` (resident, unpinned). Returns what they freed.
    private mutating func evict(_ victims: [ExpertKey]) -> [Eviction] {
        var evicted: [Eviction] = []
        for victim in victims {
            let entry = entries[victim]!
            evicted.append(Eviction(key: victim, bytes: entry.bytes, wastedPrefetch: entry.prefetchedUnused))
            removeEntry(victim)
            policy.didEvict(victim)
        }
        return evicted
    }

    /// Counts `bytes` of tracked `key` against the budget and its layer.
    private mutating func hold(_ key: ExpertKey, bytes: Int) {
        usedBytes += bytes
        peakUsedBytes = max(peakUsedBytes, usedBytes)
        layerBytes[key.layer, default: 0] += bytes
        layerSlots[key.layer, default: 0] += 1
        layerKeys[key.layer, default: []].insert(key)
    }

    /// Sets the budget to `bytes`. Shrinking evicts unpinned resident experts, in policy order,
    /// until the bytes held fit or nothing more can go; what pinned and loading experts still
    /// hold above the budget is given back as they are released (reservations evict for it
    /// meanwhile). Floors are not protected here: the caller never shrinks below the plan's
    /// floor, and a floor is a share of the budget, not a promise above it. Returns the evictions.
    public mutating func resize(budgetBytes bytes: Int) -> [Eviction] {
        precondition(bytes >= 0)
        budgetBytes = bytes
        var evicted: [Eviction] = []
        while usedBytes > budgetBytes, !evictable.isEmpty {
            let victim = policy.victim(among: Array(evictable))
            let entry = entries[victim]!
            evicted.append(Eviction(key: victim, bytes: entry.bytes, wastedPrefetch: entry.prefetchedUnused))
            removeEntry(victim)
            policy.didEvict(victim)
        }
        return evicted
    }

    /// The read of loading `key` finished: it is resident (and known to the policy).
    public mutating func loaded(_ key: ExpertKey) {
        precondition(entries[key]?.residency == .loading && entries[key]?.awaitingRoom == false, "loaded of non-loading \(key)")
        entries[key]!.residency = .resident
        if entries[key]!.pins == 0 { evictable.insert(key) }
        policy.didInsert(key)
    }

    /// Forgets `key` whatever its pins (a failed or cancelled read); frees its bytes.
    public mutating func remove(_ key: ExpertKey) {
        guard let entry = entries[key] else { return }
        removeEntry(key)
        if entry.residency == .resident { policy.didEvict(key) }
    }

    private mutating func removeEntry(_ key: ExpertKey) {
        let entry = entries.removeValue(forKey: key)!
        evictable.remove(key)
        expected.remove(key)
        if entry.awaitingRoom { return }   // it held nothing yet
        if entry.prefetchedUnused { speculativeBytes[key.layer]! -= entry.bytes }
        usedBytes -= entry.bytes
        layerBytes[key.layer]! -= entry.bytes
        layerSlots[key.layer]! -= 1
        layerKeys[key.layer]!.remove(key)
    }

    /// The layer's own unused, unpinned, resident prefetches to evict (policy order) so that
    /// `bytes` more fit its speculative bound; nil if loading ones hold the room.
    private func speculativeVictims(layer: Int, bytes: Int, limit: Int) -> [ExpertKey]? {
        var excess = speculativeBytes(layer: layer) + bytes - limit
        if excess <= 0 { return [] }
        var pool = (layerKeys[layer] ?? []).filter { evictable.contains($0) && entries[$0]!.prefetchedUnused }
        var chosen: [ExpertKey] = []
        while excess > 0 {
            guard !pool.isEmpty else { return nil }
            let victim = policy.victim(among: Array(pool))
            chosen.append(victim)
            pool.remove(victim)
            excess -= entries[victim]!.bytes
        }
        return chosen
    }

    /// The victims that make room for `key`, or nil if pins, loads and floors leave too few.
    /// Chosen one at a time, because floors change as a layer loses experts.
    private func chooseVictims(for key: ExpertKey, bytes: Int, freed: [ExpertKey] = []) -> [ExpertKey]? {
        let freedBytes = freed.reduce(0) { $0 + entries[$1]!.bytes }
        var globalExcess = usedBytes - freedBytes + bytes - budgetBytes
        var layerExcess = layerBudgetBytes.map { self.bytes(layer: key.layer) - freedBytes + bytes - $0 } ?? 0
        if globalExcess <= 0 && layerExcess <= 0 { return [] }
        var slots = layerSlots
        for victim in freed { slots[victim.layer, default: 0] -= 1 }
        var chosen: [ExpertKey] = []
        // Only the requester's own layer can relieve its per-layer budget.
        var restricted = layerExcess > 0
        var pool = (restricted ? evictable.filter { $0.layer == key.layer } : evictable).subtracting(freed)
        while globalExcess > 0 || layerExcess > 0 {
            if restricted && layerExcess <= 0 {
                // The layer fits now but the whole cache does not: widen to every layer.
                restricted = false
                pool = evictable.subtracting(chosen).subtracting(freed)
            }
            let candidates = pool.filter { $0.layer == key.layer || slots[$0.layer, default: 0] > floorSlots }
            if candidates.isEmpty { return nil }
            // Experts about to be used go last, whatever the policy thinks of their past.
            let unexpected = expected.isEmpty ? candidates : candidates.filter { !expected.contains($0) }
            let victim = policy.victim(among: Array(unexpected.isEmpty ? candidates : unexpected))
            chosen.append(victim)
            pool.remove(victim)
            let freed = entries[victim]!.bytes
            globalExcess -= freed
            if victim.layer == key.layer { layerExcess -= freed }
            slots[victim.layer, default: 0] -= 1
        }
        return chosen
    }
}
