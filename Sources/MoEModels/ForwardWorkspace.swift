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
        /// one query's scores `[maxPositions]`.
        let query: Int
        let keyValue: Int
        let scores: Int
        /// MoE: router logits `[rows, experts]`, per-(row, rank) outputs `[min(rows, 64), k, hidden]`.
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
                scores = config.maxPositionEmbeddings
            }
            let moeLayers = config.moeLayers
            let hasDense = moeLayers.count < config.layerCount
            let sharedExperts = moeLayers.compactMap { definition.sharedExpert(config, $0) }
            let sharedWidth = sharedExperts.map(\.width).max() ?? 0
            routerLogits = moeLayers.isEmpty ? 0 : rows * config.expertCount
            contributions = moeLayers.isEmpty ? 0 : min(rows, SparseMoEBlock.parallelRowLimit) * config.expertsPerToken * hidden
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
        }

        /// Total bytes.
        var bytes: Int {
            let perWorker = 2 * workerRows + 2 * workerActivations
            let floats = 3 * hiddenRows + logitInputs + logits + 2 * query + 2 * keyValue + scores
                + routerLogits + contributions + workers * perWorker + sharedOutput + sharedGate + linearScratch + gatedQuery
            return floats * MemoryLayout<Float>.stride
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
    let scores: AlignedBuffer<Float>        // [maxPositions]
    let routerLogits: AlignedBuffer<Float>  // [T, experts]
    let contributions: AlignedBuffer<Float> // [min(T, 64), k, hidden]
    let workers: [Worker]
    let sharedOutput: AlignedBuffer<Float>  // [T, hidden]
    let sharedGate: AlignedBuffer<Float>    // [T]
    let linearScratch: AlignedBuffer<Float> // GatedDeltaNet.ScratchLayout
    let gatedQuery: AlignedBuffer<Float>    // [T, 2*heads*headDim]

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
    }

    /// Bytes held: the element bytes of every buffer (mappings round up to whole pages).
    var byteCount: Int {
        [residual, normalized, blockOutput, logitInputs, logits, q, k, v, context, scores, routerLogits, contributions,
         sharedOutput, sharedGate, linearScratch, gatedQuery].reduce(0) { $0 + $1.byteCount }
            + workers.reduce(0) { $0 + $1.gathered.byteCount + $1.produced.byteCount + $1.gate.byteCount + $1.up.byteCount }
    }
}
