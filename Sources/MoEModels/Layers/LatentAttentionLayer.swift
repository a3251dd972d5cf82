import Foundation
import ModelFormats
import TensorMath

/// A decoder layer's self-attention: grouped-query (`AttentionLayer`) or multi-head latent
/// (`LatentAttentionLayer`). Both append the step's positions to each span's KV cache.
protocol SelfAttentionLayer {
    /// `output[T, hidden] = attention(x[T, hidden])` for every sequence span of the batch.
    func forward(_ x: UnsafePointer<Float>, rowCount: Int, spans: [SequenceSpan], workspace: ForwardWorkspace,
                 output: UnsafeMutablePointer<Float>)
}

extension AttentionLayer: SelfAttentionLayer {}

/// DeepSeek's multi-head latent attention (MLA), as transformers' `DeepseekV3Attention` computes
/// it, with the KV cache holding only what MLA needs per token: the normalised latent
/// `c = norm(W_DKV x)` (`kv_lora_rank` values, the cache's key row) and the shared rotary key
/// `k_pe` (`qk_rope_head_dim` values, its value row), not per-head keys and values.
///
/// Attention runs in the latent space with the up-projection `kv_b_proj` absorbed: for head h,
/// with `W_UK_h [qk_nope, rank]` and `W_UV_h [v_head, rank]` its rows of `kv_b_proj`,
/// `q_nope·k_nope_j = (W_UK_hᵀ q_nope)·c_j`, and `Σ_j p_j v_j = W_UV_h (Σ_j p_j c_j)`; so a
/// token's keys and values are never expanded, in prefill or decode.
struct LatentAttentionLayer: SelfAttentionLayer {
    let layer: Int
    let dims: LatentAttentionConfig
    let headCount: Int
    /// `[heads * qk_head, hidden]` without query compression.
    let qProj: WeightMatrix?
    /// Query compression: `q_a_proj [q_rank, hidden]` (+ bias), its RMSNorm, `q_b_proj [heads * qk_head, q_rank]`.
    let qA: WeightMatrix?, qABias: [Float]?, qANorm: [Float]?, qB: WeightMatrix?
    /// `kv_a_proj_with_mqa [rank + rope, hidden]` (+ bias) and the latent's RMSNorm `[rank]`.
    let kvA: WeightMatrix, kvABias: [Float]?, kvANorm: [Float]
    /// Per head: `W_UK_hᵀ [rank, qk_nope]` and `W_UV_h [v_head, rank]`, float32 (from `kv_b_proj`),
    /// or a GGUF's `attn_k_b`/`attn_v_b` blocks in their own type (`head(_:of:rows:)`).
    let absorbKeys: [WeightMatrix], expandValues: [WeightMatrix]
    /// `o_proj [hidden, heads * v_head]` (+ bias).
    let oProj: WeightMatrix, oBias: [Float]?
    let rope: RotaryEmbedding
    /// `qk_head^-0.5`, times YaRN's mscale² (transformers' `yarn_apply_mscale`).
    let scale: Float

    /// The latent RMSNorms are built with transformers' default epsilon, not `rms_norm_eps`.
    static let latentNormEpsilon: Float = 1e-6

    init(layer: Int, config: ModelConfig, dims: LatentAttentionConfig, weights: WeightSource) throws {
        let prefix = "model.layers.\(layer).self_attn"
        let hidden = config.hiddenSize, heads = config.headCount
        let qWidth = heads * dims.queryHeadDim
        self.layer = layer
        self.dims = dims
        headCount = heads
        func optionalVector(_ name: String, _ count: Int) throws -> [Float]? {
            weights.contains(name) ? try weights.vector(name, count: count) : nil
        }
        if let rank = dims.queryRank {
            qProj = nil
            qA = try weights.matrix("\(prefix).q_a_proj.weight", rows: rank, cols: hidden)
            qABias = try optionalVector("\(prefix).q_a_proj.bias", rank)
            qANorm = try weights.vector("\(prefix).q_a_layernorm.weight", count: rank)
            qB = try weights.matrix("\(prefix).q_b_proj.weight", rows: qWidth, cols: rank)
        } else {
            qProj = try weights.matrix("\(prefix).q_proj.weight", rows: qWidth, cols: hidden)
            qA = nil; qABias = nil; qANorm = nil; qB = nil
        }
        let rank = dims.latentRank
        kvA = try weights.matrix("\(prefix).kv_a_proj_with_mqa.weight", rows: rank + dims.ropeDim, cols: hidden)
        kvABias = try optionalVector("\(prefix).kv_a_proj_with_mqa.bias", rank + dims.ropeDim)
        kvANorm = try weights.vector("\(prefix).kv_a_layernorm.weight", count: rank)
        var absorbKeys: [WeightMatrix] = [], expandValues: [WeightMatrix] = []
        if !weights.contains("\(prefix).kv_b_proj.weight") && weights.contains("\(prefix).k_b_proj.weight") {
            // llama.cpp's deepseek2 GGUF: kv_b_proj split per head, already as this layer uses it.
            // k_b_proj [heads * rank, qk_nope]: head h's rows are W_UK_hᵀ; v_b_proj [heads * v_head, rank]: W_UV_h.
            let kB = try weights.matrix("\(prefix).k_b_proj.weight", rows: heads * rank, cols: dims.noPositionDim)
            let vB = try weights.matrix("\(prefix).v_b_proj.weight", rows: heads * dims.valueDim, cols: rank)
            for h in 0..<heads {
                absorbKeys.append(Self.head(h, of: kB, rows: rank))
                expandValues.append(Self.head(h, of: vB, rows: dims.valueDim))
            }
        }
        // kv_b_proj [heads * (qk_nope + v_head), rank]: head h's rows are its W_UK_h then its W_UV_h.
        let kvB = absorbKeys.isEmpty
            ? try weights.matrix("\(prefix).kv_b_proj.weight", rows: heads * (dims.noPositionDim + dims.valueDim), cols: rank) : nil
        for h in 0..<(kvB == nil ? 0 : heads) {
            let kvB = kvB!
            let first = h * (dims.noPositionDim + dims.valueDim)
            let uk = (0..<dims.noPositionDim).map { kvB.row(first + $0) } // [qk_nope][rank]
            var transposed = [Float](repeating: 0, count: rank * dims.noPositionDim) // [rank, qk_nope]
            for d in 0..<dims.noPositionDim { for c in 0..<rank { transposed[c * dims.noPositionDim + d] = uk[d][c] } }
            absorbKeys.append(WeightMatrix(rows: rank, cols: dims.noPositionDim, values: transposed))
            let uv = (0..<dims.valueDim).flatMap { kvB.row(first + dims.noPositionDim + $0) } // [v_head, rank]
            expandValues.append(WeightMatrix(rows: dims.valueDim, cols: rank, values: uv))
        }
        self.absorbKeys = absorbKeys
        self.expandValues = expandValues
        oProj = try weights.matrix("\(prefix).o_proj.weight", rows: hidden, cols: heads * dims.valueDim)
        oBias = try optionalVector("\(prefix).o_proj.bias", hidden)
        rope = RotaryEmbedding(headDim: dims.ropeDim, theta: config.ropeTheta, parameters: config.rope,
                               maxPositionEmbeddings: config.maxPositionEmbeddings,
                               layout: dims.interleavedRope ? .interleaved : .rotateHalf)
        let multiplier = config.rope.softmaxScaleMultiplier(maxPositionEmbeddings: config.maxPositionEmbeddings)
        scale = Float(pow(Double(dims.queryHeadDim), -0.5) * multiplier)
    }

    func forward(_ x: UnsafePointer<Float>, rowCount: Int, spans: [SequenceSpan], workspace: ForwardWorkspace,
                 output: UnsafeMutablePointer<Float>) {
        let heads = headCount, rank = dims.latentRank, ropeDim = dims.ropeDim, nope = dims.noPositionDim
        let qkHead = dims.queryHeadDim, valueDim = dims.valueDim
        let qWidth = heads * qkHead, latentWidth = rank + ropeDim
        let q = workspace.q              // [T, heads * qk_head]
        let compressed = workspace.k     // [T, rank + rope]: latent, then the rotary key
        let absorbed = workspace.v       // [T, heads * rank]: W_UK_hᵀ q_nope, then the latent context
        let context = workspace.context  // [T, q_rank] scratch, then [T, heads * v_head]

        if let qProj {
            qProj.apply(x, rowCount: rowCount, into: q.pointer)
        } else if let qA, let qANorm, let qB, let queryRank = dims.queryRank {
            qA.apply(x, rowCount: rowCount, into: context.pointer)
            if let qABias { for row in 0..<rowCount { addBias(context.pointer + row * queryRank, qABias) } }
            Ops.rmsNorm(context.pointer, rowCount: rowCount, dim: queryRank, weight: qANorm, eps: Self.latentNormEpsilon)
            qB.apply(context.pointer, rowCount: rowCount, into: q.pointer)
        }
        kvA.apply(x, rowCount: rowCount, into: compressed.pointer)
        for row in 0..<rowCount {
            let latent = compressed.pointer + row * latentWidth
            if let kvABias { addBias(latent, kvABias) }
            Ops.rmsNorm(latent, rowCount: 1, dim: rank, weight: kvANorm, eps: Self.latentNormEpsilon)
        }

        let scores = workspace.scores.pointer // [keys] latent scores, then [keys] rotary scores after them
        let ropeScores = scores + workspace.sizes.scores / 2
        for span in spans {
            let cache = span.cache
            for i in 0..<span.rowCount {
                let row = span.firstRow + i, position = span.startPosition + i
                let latent = compressed.pointer + row * latentWidth
                rope.apply(q.pointer + row * qWidth + nope, headCount: heads, headStride: qkHead, position: position,
                           llamaCppAngles: cache.llamaCppRotaryAngles)
                rope.apply(latent + rank, headCount: 1, headStride: ropeDim, position: position,
                           llamaCppAngles: cache.llamaCppRotaryAngles)
                cache.store(layer: layer, position: position, key: latent, value: latent + rank)
            }
            for i in 0..<span.rowCount {
                let row = span.firstRow + i, keyCount = span.startPosition + i + 1
                for h in 0..<heads {
                    let query = q.pointer + row * qWidth + h * qkHead // [qk_nope | rope]
                    let latentQuery = absorbed.pointer + (row * heads + h) * rank
                    absorbKeys[h].apply(query, rowCount: 1, into: latentQuery)
                    if cache.precision == .f16 && cache.llamaCppFlashAttention {
                        flashAttention(cache: cache, latentQuery: latentQuery, ropeQuery: query + nope, keyCount: keyCount)
                        expandValues[h].apply(latentQuery, rowCount: 1, into: context.pointer + row * heads * valueDim + h * valueDim)
                        continue
                    }
                    // scores[j] = scale · (W_UK_hᵀ q_nope · c_j + q_pe · k_pe_j)
                    switch cache.precision {
                    case .f32:
                        AttentionKernels.scores(query: latentQuery, keys: cache.keyRows(layer), keyStride: rank,
                                                count: keyCount, dim: rank, scale: scale, into: scores)
                        AttentionKernels.scores(query: query + nope, keys: cache.valueRows(layer), keyStride: ropeDim,
                                                count: keyCount, dim: ropeDim, scale: scale, into: ropeScores)
                    case .f16:
                        AttentionKernels.scores(query: latentQuery, halfKeys: cache.halfKeyRows(layer), keyStride: rank,
                                                count: keyCount, dim: rank, scale: scale, into: scores)
                        AttentionKernels.scores(query: query + nope, halfKeys: cache.halfValueRows(layer), keyStride: ropeDim,
                                                count: keyCount, dim: ropeDim, scale: scale, into: ropeScores)
                    }
                    Ops.addScaled(scores, ropeScores, alpha: 1, count: keyCount)
                    Ops.softmax(scores, count: keyCount)
                    // The latent context Σ_j p_j c_j replaces the absorbed query (no longer needed).
                    switch cache.precision {
                    case .f32:
                        AttentionKernels.weightedSum(scores, values: cache.keyRows(layer), valueStride: rank, count: keyCount,
                                                     dim: rank, into: latentQuery)
                    case .f16:
                        AttentionKernels.weightedSum(scores, halfValues: cache.halfKeyRows(layer), valueStride: rank,
                                                     count: keyCount, dim: rank, into: latentQuery)
                    }
                    expandValues[h].apply(latentQuery, rowCount: 1, into: context.pointer + row * heads * valueDim + h * valueDim)
                }
            }
        }
        oProj.apply(context.pointer, rowCount: rowCount, into: output)
        if let oBias { for row in 0..<rowCount { addBias(output + row * oProj.rows, oBias) } }
    }

    /// llama.cpp's MLA attention (`deepseek2` graph, CPU flash attention), for the GGUF comparison
    /// with llama.cpp only: an MQA over keys `[latent | rotary key]` (kv_lora + rope wide, one f16
    /// row per token) with the latent as the value, the query `[W_UK_hᵀ q_nope | q_pe]`. The cache
    /// keeps the two parts apart, so each key row is put together in f16 here; the latent context
    /// (the first `rank` values) replaces `latentQuery`.
    private func flashAttention(cache: KVCache, latentQuery: UnsafeMutablePointer<Float>, ropeQuery: UnsafePointer<Float>,
                                keyCount: Int) {
        let rank = dims.latentRank, width = dims.latentRank + dims.ropeDim
        withUnsafeTemporaryAllocation(of: UInt16.self, capacity: keyCount * width) { keys in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * width) { buffer in
                let query = buffer.baseAddress!, out = query + width // [rank + rope] each
                let latents = cache.halfKeyRows(layer), ropeKeys = cache.halfValueRows(layer)
                for j in 0..<keyCount {
                    (keys.baseAddress! + j * width).update(from: latents + j * rank, count: rank)
                    (keys.baseAddress! + j * width + rank).update(from: ropeKeys + j * dims.ropeDim, count: dims.ropeDim)
                }
                query.update(from: latentQuery, count: rank)
                (query + rank).update(from: ropeQuery, count: dims.ropeDim)
                GGMLFlashAttention.head(query: query, halfKeys: keys.baseAddress!, halfValues: keys.baseAddress!, stride: width,
                                        count: keyCount, dim: width, scale: scale, into: out)
                latentQuery.update(from: out, count: rank)
            }
        }
    }

    /// Head `h`'s `[rows, cols]` of a matrix whose heads are stacked as rows. Block-quantised
    /// (ggml) heads stay in their type, multiplied as llama.cpp multiplies `attn_k_b`/`attn_v_b`
    /// (the activation rounded to 8-bit blocks first): widened to float32 instead, the absorbed
    /// query and the head outputs drift by ~1% from llama.cpp's, enough to flip DeepSeek-V3's
    /// near-tied group choices (issue 21). A GGUF file's Q4_0 arrives as q4 (`GGMLQ4_0`: the same
    /// values) and is sliced alike. Other storage is copied out as float32.
    static func head(_ h: Int, of stacked: WeightMatrix, rows: Int) -> WeightMatrix {
        if case .ggml(let type, let blocks) = stacked.storage, let rowBytes = type.byteCount(elements: stacked.cols) {
            return WeightMatrix(rows: rows, cols: stacked.cols, storage: .ggml(type: type, blocks: blocks + h * rows * rowBytes),
                                owner: stacked.owner)
        }
        if case .q4(let blocks, let scales) = stacked.storage {
            let blocksPerRow = stacked.cols / Quantization.q4BlockSize
            return WeightMatrix(rows: rows, cols: stacked.cols,
                                storage: .q4(blocks: blocks + h * rows * blocksPerRow * Quantization.q4BlockBytes,
                                             scales: scales + h * rows * blocksPerRow),
                                owner: stacked.owner)
        }
        if case .q4f16(let blocks, let scales) = stacked.storage { // the same, with float16 scales
            let blocksPerRow = stacked.cols / Quantization.q4BlockSize
            return WeightMatrix(rows: rows, cols: stacked.cols,
                                storage: .q4f16(blocks: blocks + h * rows * blocksPerRow * Quantization.q4BlockBytes,
                                                scales: scales + h * rows * blocksPerRow),
                                owner: stacked.owner)
        }
        return WeightMatrix(rows: rows, cols: stacked.cols, values: (0..<rows).flatMap { stacked.row(h * rows + $0) })
    }

    private func addBias(_ row: UnsafeMutablePointer<Float>, _ bias: [Float]) {
        for i in bias.indices { row[i] += bias[i] }
    }
}
