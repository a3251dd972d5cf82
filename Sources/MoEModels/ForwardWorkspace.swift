import ModelFormats
import TensorMath

/// Every scratch buffer of a forward step, allocated once for steps of at most `maxRows` token
/// rows from at most `maxSequences` sequences, and reused by every layer and every step: a
/// decode step allocates and maps nothing (`BufferAllocations` counts it in the tests).
/// `Sizes` is the one place the layout is written, so `TransformerModel.workspaceBytes` (what
/// the memory plan counts) and the buffers allocated here are the same numbers.
final class ForwardWorkspace {
    /// Element counts (float32) of every buffer for one step shape.
    struct Sizes: Equatable {
        let maxRows: Int
        let maxSequences: Int
        /// `[rows, hidden]`: residual stream, normalised input, block output, each.
        let hiddenRows: Int
        /// `[sequences, hidden]` and `[sequences, vocab]`: the rows whose logits are wanted.
        let logitInputs: Int
        let logits: Int
        /// Attention: q and context `[rows, heads*headDim]`, k and v `[rows, kvHeads*headDim]`,
        /// two queries' scores `[2, maxPositions]`.
        let query: Int
        let keyValue: Int
        let scores: Int
        /// MoE: router logits `[rows, experts]`, per-(row, rank) outputs `[rows, k, hidden]`.
        let routerLogits: Int
        let contributions: Int
        /// Per expert worker: gathered input and expert output `[rows, hidden]`, and the MLP's
        /// gate and up activations `[rows, widest MLP]`.
        let workers: Int
        let workerRows: Int
        let workerActivations: Int
        /// Shared expert: its output `[rows, hidden]` and gate `[rows]`; 0 without one.
        let sharedOutput: Int
        let sharedGate: Int
        /// Gated delta-net layers (Qwen3-Next): projections, conv input and output, decays,
        /// outputs `[rows, ...]` and one chunk's system (`GatedDeltaNet.ScratchLayout`); 0 without.
        var linearScratch = 0
        /// Gated attention: `q_proj`'s query-and-gate rows `[rows, 2·heads·headDim]`; 0 without a gate.
        var gatedQuery = 0
        /// Index scratch (`Int`): the MoE block's grouping by expert, first entry per expert
        /// `[experts + 1]` and `row·k + rank` entries `[rows, k]` (0 without MoE layers), and each
        /// sequence's first logits row `[sequences + 1]`.
        var indices = 0
        /// Routed experts per MoE layer and experts chosen per token; 0 without MoE layers.
        var expertCount = 0
        var topK = 0
        /// Element bytes of the reused lists: every row's routing (`k + 1` experts, `k`
        /// weights), the step's distinct experts, and the step's sequence spans.
        var listBytes = 0

        init(config: ModelConfig, maxRows: Int, maxSequences: Int) {
            let rows = max(1, maxRows), sequences = max(1, min(maxSequences, rows))
            let definition = config.architecture.definition
            let hidden = config.hiddenSize
            self.maxRows = rows
            self.maxSequences = sequences
            hiddenRows = rows * hidden
            logitInputs = sequences * hidden
            logits = sequences * config.vocabSize
            if let latent = config.latentAttention {
                // Multi-head latent attention (`LatentAttentionLayer`): q `[T, heads*qk_head]`, the
                // context `[T, heads*v_head]` (first the query bottleneck `[T, q_rank]`), the
                // compressed latents `[T, rank + rope]` and the absorbed queries `[T, heads*rank]`;
                // latent and rotary scores side by side.
                let heads = config.headCount
                query = rows * max(heads * max(latent.queryHeadDim, latent.valueDim), latent.queryRank ?? 0)
                keyValue = rows * max(latent.cachedValuesPerToken, heads * latent.latentRank)
                scores = 2 * config.maxPositionEmbeddings
            } else {
                query = rows * config.headCount * config.headDim
                keyValue = rows * config.kvHeadCount * config.headDim
                // Two queries' scores: a decode row's heads run on both cores (AttentionLayer).
                scores = 2 * config.maxPositionEmbeddings
            }
            let moeLayers = config.moeLayers
            let hasDense = moeLayers.count < config.layerCount
            let sharedExperts = moeLayers.compactMap { definition.sharedExpert(config, $0) }
            let sharedWidth = sharedExperts.map(\.width).max() ?? 0
            routerLogits = moeLayers.isEmpty ? 0 : rows * config.expertCount
            contributions = moeLayers.isEmpty ? 0 : rows * config.expertsPerToken * hidden
            workers = SparseMoEBlock.expertWorkers
            workerRows = rows * hidden
            let widest = max(moeLayers.isEmpty ? 0 : config.expertIntermediateSize, hasDense ? config.denseIntermediateSize : 0, sharedWidth)
            workerActivations = rows * widest
            // Qwen2-MoE checkpoints with a width-0 shared expert still carry its (empty) tensors
            // and run it, so the output is sized whenever the architecture has one.
            sharedOutput = sharedExperts.isEmpty ? 0 : rows * hidden
            sharedGate = sharedExperts.isEmpty ? 0 : rows
            linearScratch = config.linearAttention.map { GatedDeltaNet.ScratchLayout($0, rows: rows).count } ?? 0
            gatedQuery = definition.attention(config).outputGate ? 2 * query : 0
            expertCount = moeLayers.isEmpty ? 0 : config.expertCount
            topK = moeLayers.isEmpty ? 0 : config.expertsPerToken
            indices = (moeLayers.isEmpty ? 0 : expertCount + 1 + rows * topK) + sequences + 1
            listBytes = rows * ((topK + 1) * MemoryLayout<Int>.stride + topK * MemoryLayout<Float>.stride)
                + min(rows * topK, expertCount) * MemoryLayout<Int>.stride + sequences * MemoryLayout<SequenceSpan>.stride
        }

        /// Total bytes.
        var bytes: Int {
            let perWorker = 2 * workerRows + 2 * workerActivations
            let floats = 3 * hiddenRows + logitInputs + logits + 2 * query + 2 * keyValue + scores
                + routerLogits + contributions + workers * perWorker + sharedOutput + sharedGate + linearScratch + gatedQuery
            return floats * MemoryLayout<Float>.stride + indices * MemoryLayout<Int>.stride + listBytes
        }

        /// Whether a step of `rows` rows from `sequences` sequences fits.
        func fits(rows: Int, sequences: Int) -> Bool { rows <= maxRows && sequences <= maxSequences }
    }

    /// Per-thread buffers of the expert workers.
    struct Worker {
        /// `[rows, hidden]` an expert's input rows, gathered.
        let gathered: AlignedBuffer<Float>
        /// `[rows, hidden]` the expert's output rows.
        let produced: AlignedBuffer<Float>
        /// `[rows, width]` the MLP's gate, then its activated product.
        let gate: AlignedBuffer<Float>
        /// `[rows, width]` the MLP's up projection.
        let up: AlignedBuffer<Float>
    }

    let sizes: Sizes
    let residual: AlignedBuffer<Float>      // [T, hidden]
    let normalized: AlignedBuffer<Float>    // [T, hidden]
    let blockOutput: AlignedBuffer<Float>   // [T, hidden]
    let logitInputs: AlignedBuffer<Float>   // [S, hidden]
    let logits: AlignedBuffer<Float>        // [S, vocab]
    let q: AlignedBuffer<Float>             // [T, heads*headDim]
    let k: AlignedBuffer<Float>             // [T, kvHeads*headDim]
    let v: AlignedBuffer<Float>             // [T, kvHeads*headDim]
    let context: AlignedBuffer<Float>       // [T, heads*headDim]
    let scores: AlignedBuffer<Float>        // [2, maxPositions]
    let routerLogits: AlignedBuffer<Float>  // [T, experts]
    let contributions: AlignedBuffer<Float> // [T, k, hidden]
    let workers: [Worker]
    let sharedOutput: AlignedBuffer<Float>  // [T, hidden]
    let sharedGate: AlignedBuffer<Float>    // [T]
    /// Whether this MoE layer's shared expert already ran into `sharedOutput` (the shadow of the
    /// next layer needs it before the routed experts are done; `SparseMoEBlock.forward`).
    var sharedExpertDone = false
    let linearScratch: AlignedBuffer<Float> // GatedDeltaNet.ScratchLayout
    let gatedQuery: AlignedBuffer<Float>    // [T, 2*heads*headDim]
    /// The MoE block's grouping of `row·k + rank` entries by expert (a counting sort): entries
    /// of expert `e` are `expertEntries[expertStarts[e] ..< expertStarts[e + 1]]`.
    let expertStarts: AlignedBuffer<Int>    // [experts + 1]
    let expertEntries: AlignedBuffer<Int>   // [T, k]
    /// Where each sequence's logits rows start in `logits`, and where the last ends.
    let logitOffsets: AlignedBuffer<Int>    // [S + 1]

    // Lists handed to the step's code and taken back after it (`take…` / `give…`), so that
    // their storage is reused and a decode step allocates nothing. The lock of
    // `TransformerModel.forward` makes one step at a time their user.
    /// One routing per row, each with room for `k + 1` experts and `k` weights.
    private var routePool: [TokenRouting]
    /// The step's routes: empty between uses, with room for every row.
    private var routes: [TokenRouting]
    /// The step's distinct experts of one layer: empty between uses, with room for all.
    private var experts: [Int]
    /// The step's sequence spans: empty between steps (no cache is kept alive), with room for all.
    private var spans: [SequenceSpan]

    init(_ sizes: Sizes) {
        self.sizes = sizes
        // Not zeroed: every buffer is written before it is read in each step.
        func buffer(_ count: Int) -> AlignedBuffer<Float> { AlignedBuffer(count: count, zeroed: false) }
        residual = buffer(sizes.hiddenRows)
        normalized = buffer(sizes.hiddenRows)
        blockOutput = buffer(sizes.hiddenRows)
        logitInputs = buffer(sizes.logitInputs)
        logits = buffer(sizes.logits)
        q = buffer(sizes.query)
        k = buffer(sizes.keyValue)
        v = buffer(sizes.keyValue)
        context = buffer(sizes.query)
        scores = buffer(sizes.scores)
        routerLogits = buffer(sizes.routerLogits)
        contributions = buffer(sizes.contributions)
        workers = (0..<sizes.workers).map { _ in
            Worker(gathered: buffer(sizes.workerRows), produced: buffer(sizes.workerRows),
                   gate: buffer(sizes.workerActivations), up: buffer(sizes.workerActivations))
        }
        sharedOutput = buffer(sizes.sharedOutput)
        sharedGate = buffer(sizes.sharedGate)
        linearScratch = buffer(sizes.linearScratch)
        gatedQuery = buffer(sizes.gatedQuery)
        let hasExperts = sizes.expertCount > 0, topK = sizes.topK
        expertStarts = AlignedBuffer(count: hasExperts ? sizes.expertCount + 1 : 0, zeroed: false)
        expertEntries = AlignedBuffer(count: sizes.maxRows * topK, zeroed: false)
        logitOffsets = AlignedBuffer(count: sizes.maxSequences + 1, zeroed: false)
        routePool = (0..<(hasExperts ? sizes.maxRows : 0)).map { _ in
            var routing = TokenRouting(experts: [], weights: [])
            routing.experts.reserveCapacity(topK + 1)
            routing.weights.reserveCapacity(topK)
            return routing
        }
        routes = []
        routes.reserveCapacity(routePool.count)
        experts = []
        experts.reserveCapacity(min(sizes.maxRows * topK, sizes.expertCount))
        spans = []
        spans.reserveCapacity(sizes.maxSequences)
    }

    /// The step's routes: `rows` routings whose lists come from the pool (filled by the router).
    func takeRoutes(rows: Int) -> [TokenRouting] {
        var taken: [TokenRouting] = []
        swap(&taken, &routes)
        for row in 0..<rows {
            var routing = TokenRouting(experts: [], weights: [])
            if row < routePool.count { swap(&routing, &routePool[row]) }
            taken.append(routing)
        }
        return taken
    }

    /// Takes back what `takeRoutes` handed out, its lists returning to the pool.
    func giveBack(routes given: inout [TokenRouting]) {
        for row in given.indices where row < routePool.count { swap(&given[row], &routePool[row]) }
        given.removeAll(keepingCapacity: true)
        swap(&given, &routes)
    }

    /// An empty list with room for one layer's distinct experts.
    func takeExperts() -> [Int] {
        var taken: [Int] = []
        swap(&taken, &experts)
        return taken
    }

    /// Takes back what `takeExperts` handed out.
    func giveBack(experts given: inout [Int]) {
        given.removeAll(keepingCapacity: true)
        swap(&given, &experts)
    }

    /// An empty list with room for the step's sequences.
    func takeSpans() -> [SequenceSpan] {
        var taken: [SequenceSpan] = []
        swap(&taken, &spans)
        return taken
    }

    /// Takes back what `takeSpans` handed out, emptied (the caches are not kept alive).
    func giveBack(spans given: inout [SequenceSpan]) {
        given.removeAll(keepingCapacity: true)
        swap(&given, &spans)
    }

    /// Bytes held: the element bytes of every buffer (mappings round up to whole pages).
    var byteCount: Int {
        [residual, normalized, blockOutput, logitInputs, logits, q, k, v, context, scores, routerLogits, contributions,
         sharedOutput, sharedGate, linearScratch, gatedQuery].reduce(0) { $0 + $1.byteCount }
            + workers.reduce(0) { $0 + $1.gathered.byteCount + $1.produced.byteCount + $1.gate.byteCount + $1.up.byteCount }
            + [expertStarts, expertEntries, logitOffsets].reduce(0) { $0 + $1.byteCount } + sizes.listBytes
    }
}
