/// Two policies side by side, the cache evicting as the one that has been hitting more: set
/// dueling (Qureshi et al., ISCA 2007), with simulated caches of a sample of the layers in place of
/// sampled sets.
///
/// Each contender runs twice. One instance hears the real cache's events, so that it is ready
/// to choose victims whenever it leads. The other runs a simulated cache of the real one's size
/// on the same stream of uses (and sequence reports), with no prefetches, pins or floors, and
/// counts its hits. A saturating counter moves one step towards whichever simulation hit where
/// the other missed; the second contender leads while the counter is above zero, so a tie keeps
/// the first (the default).
///
/// Why: which recency bonus suits a routing stream differs by model. On the synthetic trace of
/// realistic shape the measured bonus closes 37-45% of the shared pool's LRU→Belady gap and
/// the fixed one 5-35%; on the trained demo's streams the fixed one hits up to a point more
/// (docs/expert-cache.md, "The live routing replayed"). Neither setting is right for every
/// model, and the cache cannot know beforehand which it serves.
///
/// The simulations sample the layers, as set dueling samples a cache's sets: they see the uses
/// of every `sampleStride`-th layer only, counted in the order the layers first appear (so
/// models whose MoE layers are every other one are sampled too), and hold that share of the
/// experts the real cache held when it last had to evict (the real cache counts bytes, so its
/// capacity in experts is learned, not given). A simulated miss scores the simulation's whole
/// cache, so sampling half the layers cuts the simulations' scoring to a quarter: in trace
/// replay the duel costs 6.5-9.0 µs per expert request against the fixed bonus's 4.1-5.2 µs
/// (whole simulations: 11.5-14.6 µs). Until the real cache first evicts, the simulations never
/// do either, and the counter stays where it is. The size is the largest seen at an eviction
/// and never shrinks: after `--memory-budget auto` shrinks the cache, the contenders are
/// compared at the larger size.
///
/// Pure state, no I/O.
public struct DuelingPolicy<First: CachePolicy, Second: CachePolicy>: CachePolicy {
    public let name: String
    /// The counter's bound: how many uses where only one simulation hit it takes, at most, for
    /// the lead to change after a long run favouring one side.
    public let limit: Int
    /// The simulations see one layer in this many.
    public let sampleStride: Int

    private var first: First
    private var second: Second
    private var firstSimulation: SimulatedCache<First>
    private var secondSimulation: SimulatedCache<Second>
    /// Experts the real cache holds (insertions minus evictions), and the most it held at an
    /// eviction: the size the simulations share out (nil until the real cache first evicts).
    private var realResident = 0
    private var capacity: Int?
    /// Per layer seen so far, whether the simulations sample it; and how many they sample.
    private var sampled: [Int: Bool] = [:]
    private var layersSampled = 0
    /// Above zero: the second contender has been hitting more.
    public private(set) var advantage = 0

    /// Simulations sample one layer in two unless told otherwise: in replay that chooses as
    /// whole simulations do on every trace, one in four did not (prose at 16 of 32 experts per
    /// layer: 27% of the LRU→Belady gap closed against 48%).
    public static var defaultSampleStride: Int { 2 }

    /// `first` leads on a tie (the default); both must be fresh (no events yet).
    public init(_ first: First, _ second: Second, limit: Int = 1024, sampleStride: Int = defaultSampleStride,
                name: String = "dueling") {
        precondition(limit > 0 && sampleStride > 0)
        self.sampleStride = sampleStride
        self.first = first
        self.second = second
        firstSimulation = SimulatedCache(policy: first)
        secondSimulation = SimulatedCache(policy: second)
        self.limit = limit
        self.name = name
    }

    /// Whether the second contender chooses the victims now.
    public var secondLeads: Bool { advantage > 0 }

    /// The two contenders as the real cache's events left them (for inspection).
    public var contenders: (first: First, second: Second) { (first, second) }

    /// The name of the contender choosing the victims now.
    public var leader: String? { secondLeads ? second.name : first.name }

    /// The simulations' hits and uses so far (first, second).
    public var simulatedHits: (first: Int, second: Int, uses: Int) {
        (firstSimulation.hits, secondSimulation.hits, firstSimulation.uses)
    }

    public mutating func didInsert(_ key: ExpertKey) {
        realResident += 1
        first.didInsert(key)
        second.didInsert(key)
    }

    public mutating func didAccess(_ key: ExpertKey) {
        first.didAccess(key)
        second.didAccess(key)
        guard samples(key.layer) else { return }
        // The sampled layers' share of the real cache, rounded (at least one expert).
        let share = capacity.map { max(1, ($0 * layersSampled + sampled.count / 2) / sampled.count) }
        let firstHit = firstSimulation.use(key, capacity: share)
        let secondHit = secondSimulation.use(key, capacity: share)
        if firstHit != secondHit { advantage = max(-limit, min(limit, advantage + (secondHit ? 1 : -1))) }
    }

    public mutating func didEvict(_ key: ExpertKey) {
        // Read and loading experts both count against the real budget, but only resident ones
        // reach the policy: at an eviction with reads in flight it holds fewer than it can, so
        // the largest count seen at an eviction is the size.
        capacity = max(capacity ?? 0, realResident)
        realResident -= 1
        first.didEvict(key)
        second.didEvict(key)
    }

    public func victim(among candidates: [ExpertKey]) -> ExpertKey {
        secondLeads ? second.victim(among: candidates) : first.victim(among: candidates)
    }

    public mutating func observeNextUse(_ key: ExpertKey, at time: Int) {
        first.observeNextUse(key, at: time)
        second.observeNextUse(key, at: time)
        guard samples(key.layer) else { return }
        firstSimulation.policy.observeNextUse(key, at: time)
        secondSimulation.policy.observeNextUse(key, at: time)
    }

    public mutating func sequence(_ sequence: Int, routedTo routed: [Int], layer: Int) {
        first.sequence(sequence, routedTo: routed, layer: layer)
        second.sequence(sequence, routedTo: routed, layer: layer)
        guard samples(layer) else { return }
        firstSimulation.policy.sequence(sequence, routedTo: routed, layer: layer)
        secondSimulation.policy.sequence(sequence, routedTo: routed, layer: layer)
    }

    public mutating func sequenceEnded(_ sequence: Int) {
        first.sequenceEnded(sequence)
        second.sequenceEnded(sequence)
        firstSimulation.policy.sequenceEnded(sequence)
        secondSimulation.policy.sequenceEnded(sequence)
    }
}

extension DuelingPolicy {
    /// Whether the simulations sample `layer`, decided when it first appears: the first layer
    /// seen, and every `sampleStride`-th after it.
    private mutating func samples(_ layer: Int) -> Bool {
        if let known = sampled[layer] { return known }
        let chosen = sampled.count % sampleStride == 0
        sampled[layer] = chosen
        if chosen { layersSampled += 1 }
        return chosen
    }
}

/// A cache of keys only, run by `policy`: what a policy would have hit on a stream of uses.
struct SimulatedCache<Policy: CachePolicy>: Sendable {
    var policy: Policy
    private(set) var hits = 0
    private(set) var uses = 0
    /// The resident keys, and each one's index in `resident` (removal swaps the last in).
    private var resident: [ExpertKey] = []
    private var slot: [ExpertKey: Int] = [:]

    init(policy: Policy) { self.policy = policy }

    /// Uses `key`, reading it on a miss after evicting down to `capacity` (nil: unbounded).
    /// Returns whether it hit.
    mutating func use(_ key: ExpertKey, capacity: Int?) -> Bool {
        uses += 1
        if slot[key] != nil {
            hits += 1
            policy.didAccess(key)
            return true
        }
        if let capacity {
            while resident.count >= max(capacity, 1) { evict(policy.victim(among: resident)) }
        }
        slot[key] = resident.count
        resident.append(key)
        policy.didInsert(key)
        policy.didAccess(key)
        return false
    }

    private mutating func evict(_ key: ExpertKey) {
        let index = slot.removeValue(forKey: key)!
        let last = resident.removeLast()
        if index < resident.count {
            resident[index] = last
            slot[last] = index
        }
        policy.didEvict(key)
    }
}
