import Foundation
import ModelFormats
import TensorMath

/// Grouped-query causal self-attention with RoPE and the architecture's switches
/// (`AttentionSpec`): optional q/k/v biases, optional q/k RMSNorm (per head or over the whole
/// projection), optional q/k/v clipping, an optional sliding window (per layer with
/// `layer_types`), an o_proj bias when the checkpoint has one, and learned sinks (gpt-oss).
struct AttentionLayer {
    let layer: Int
    let qProj: WeightMatrix, kProj: WeightMatrix, vProj: WeightMatrix, oProj: WeightMatrix
    let qBias: [Float]?, kBias: [Float]?, vBias: [Float]?
    /// `[hidden]` added after o_proj (gpt-oss), nil for none.
    let oBias: [Float]?
    /// `[heads]` learned sink logits (gpt-oss), nil for none.
    let sinks: [Float]?
    let qNorm: [Float]?, kNorm: [Float]?
    let normalization: QKNormalization
    let clip: Float?
    let headCount: Int, kvHeadCount: Int, headDim: Int
    let eps: Float
    let rope: RotaryEmbedding
    let slidingWindow: Int?
    /// Gated attention: `q_proj` yields `[heads, 2·headDim]` (query, then gate per head) and the
    /// output is scaled by `sigmoid(gate)`; its bias, if any, is `queryGateBias` over that width.
    let outputGate: Bool
    let queryGateBias: [Float]?

    init(layer: Int, config: ModelConfig, description: ArchitectureDescription, weights: WeightSource) throws {
        let prefix = description.attentionPrefix(layer)
        let hidden = config.hiddenSize
        let qWidth = config.headCount * config.headDim, kvWidth = config.kvHeadCount * config.headDim
        self.layer = layer
        let gated = description.attention(config).outputGate
        qProj = try weights.matrix("\(prefix).q_proj.weight", rows: gated ? 2 * qWidth : qWidth, cols: hidden)
        kProj = try weights.matrix("\(prefix).k_proj.weight", rows: kvWidth, cols: hidden)
        vProj = try weights.matrix("\(prefix).v_proj.weight", rows: kvWidth, cols: hidden)
        oProj = try weights.matrix("\(prefix).o_proj.weight", rows: hidden, cols: qWidth)
        // Biases are taken when the checkpoint has them: Qwen2-MoE always, others when attention_bias.
        func optionalVector(_ name: String, _ count: Int) throws -> [Float]? {
            weights.contains(name) ? try weights.vector(name, count: count) : nil
        }
        qBias = try gated ? nil : optionalVector("\(prefix).q_proj.bias", qWidth)
        queryGateBias = try gated ? optionalVector("\(prefix).q_proj.bias", 2 * qWidth) : nil
        outputGate = gated
        kBias = try optionalVector("\(prefix).k_proj.bias", kvWidth)
        vBias = try optionalVector("\(prefix).v_proj.bias", kvWidth)
        oBias = try optionalVector("\(prefix).o_proj.bias", hidden)
        let spec = description.attention(config)
        sinks = spec.sinks ? try weights.vector("\(prefix).sinks", count: config.headCount) : nil
        if spec.requiresBias && qBias == nil && queryGateBias == nil {
            throw ModelFormatError("\(prefix).q_proj.bias: missing from the checkpoint although the config sets attention_bias")
        }
        normalization = spec.qkNormalization
        switch normalization {
        case .none:
            qNorm = nil; kNorm = nil
        case .perHead:
            qNorm = try weights.vector("\(prefix).q_norm.weight", count: config.headDim).map { $0 + description.normWeightOffset }
            kNorm = try weights.vector("\(prefix).k_norm.weight", count: config.headDim).map { $0 + description.normWeightOffset }
        case .wholeProjection:
            qNorm = try weights.vector("\(prefix).q_norm.weight", count: qWidth)
            kNorm = try weights.vector("\(prefix).k_norm.weight", count: kvWidth)
        }
        clip = spec.clipQKV
        headCount = config.headCount
        kvHeadCount = config.kvHeadCount
        headDim = config.headDim
        eps = config.rmsNormEps
        rope = RotaryEmbedding(config: config)
        slidingWindow = spec.slidingWindow(layer: layer)
    }

    /// `output[T, hidden] = attention(x[T, hidden])` for every sequence span of the batch;
    /// appends this layer's keys and values to each span's cache at its positions. Scratch
    /// comes from `workspace`, sized for at least `rowCount` rows.
    func forward(_ x: UnsafePointer<Float>, rowCount: Int, spans: [SequenceSpan], workspace: ForwardWorkspace,
                 output: UnsafeMutablePointer<Float>) {
        let qWidth = headCount * headDim, kvWidth = kvHeadCount * headDim
        let q = workspace.q   // [T, heads*headDim]
        let k = workspace.k   // [T, kvHeads*headDim]
        let v = workspace.v   // [T, kvHeads*headDim]
        if outputGate {
            // [T, heads, 2·headDim] → the query half of each head into q; the gate half is read below.
            let gated = workspace.gatedQuery.pointer
            qProj.apply(x, rowCount: rowCount, into: gated)
            for row in 0..<rowCount {
                let raw = gated + row * 2 * qWidth
                if let queryGateBias { for i in 0..<(2 * qWidth) { raw[i] += queryGateBias[i] } }
                for head in 0..<headCount {
                    (q.pointer + row * qWidth + head * headDim).update(from: raw + head * 2 * headDim, count: headDim)
                }
            }
        } else {
            qProj.apply(x, rowCount: rowCount, into: q.pointer)
        }
        kProj.apply(x, rowCount: rowCount, into: k.pointer)
        vProj.apply(x, rowCount: rowCount, into: v.pointer)
        finishProjections(q: q.pointer, k: k.pointer, v: v.pointer, rowCount: rowCount)

        let context = workspace.context // [T, heads*headDim]
        for span in spans {
            let cache = span.cache
            if span.rowCount >= Self.parallelRows && slidingWindow == nil && cache.windows[layer] == nil && Self.parallelPrefill {
                attendInParallel(span: span, q: q.pointer, k: k.pointer, v: v.pointer, context: context.pointer)
                continue
            }
            let scores = workspace.scores.pointer // [keys], one query's scores at a time
            // Each row's key and value are stored right before its query runs: a sliding-window
            // layer's cache keeps only the last rows (KVCache), and the query at a position
            // reads exactly those; later rows' keys are not visible to it anyway.
            for i in 0..<span.rowCount {
                let row = span.firstRow + i, position = span.startPosition + i
                rope.apply(q.pointer + row * qWidth, headCount: headCount, headStride: rope.headDim, position: position,
                           llamaCppAngles: cache.llamaCppRotaryAngles)
                rope.apply(k.pointer + row * kvWidth, headCount: kvHeadCount, headStride: rope.headDim, position: position,
                           llamaCppAngles: cache.llamaCppRotaryAngles)
                cache.store(layer: layer, position: position, key: k.pointer + row * kvWidth, value: v.pointer + row * kvWidth)
                // Keys visible to this query: causal, and inside the sliding window if any.
                let firstKey = slidingWindow.map { max(0, position - $0 + 1) } ?? 0
                let keyCount = position + 1 - firstKey
                let firstRow = firstKey - cache.firstPosition(layer)
                if span.rowCount == 1 && headCount >= 2 && keyCount >= Self.decodeHeadSplitKeys {
                    attendHeadsInParallel(row: row, cache: cache, firstRow: firstRow, keyCount: keyCount, q: q.pointer,
                                          context: context.pointer, scores: (scores, scores + workspace.scores.count / 2))
                    continue
                }
                attendHeads(row: row, cache: cache, firstRow: firstRow, keyCount: keyCount, q: q.pointer, context: context.pointer,
                            scores: scores)
            }
        }
        if outputGate {
            let gated = workspace.gatedQuery.pointer
            for row in 0..<rowCount {
                for head in 0..<headCount {
                    let out = context.pointer + row * qWidth + head * headDim
                    let gate = gated + row * 2 * qWidth + head * 2 * headDim + headDim
                    for i in 0..<headDim { out[i] *= Ops.sigmoid(gate[i]) }
                }
            }
        }
        oProj.apply(context.pointer, rowCount: rowCount, into: output)
        if let oBias {
            let hidden = oBias.count
            for row in 0..<rowCount {
                for i in 0..<hidden { output[row * hidden + i] += oBias[i] }
            }
        }
    }

    /// Biases, q/k normalisation and clipping of projected rows, in place: `q [T, heads·headDim]`,
    /// `k` and `v [T, kvHeads·headDim]`.
    private func finishProjections(q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>,
                                   rowCount: Int) {
        let qWidth = headCount * headDim, kvWidth = kvHeadCount * headDim
        for row in 0..<rowCount {
            let qRow = q + row * qWidth, kRow = k + row * kvWidth, vRow = v + row * kvWidth
            if let qBias { for i in 0..<qWidth { qRow[i] += qBias[i] } }
            if let kBias { for i in 0..<kvWidth { kRow[i] += kBias[i] } }
            if let vBias { for i in 0..<kvWidth { vRow[i] += vBias[i] } }
            switch normalization {
            case .none: break
            case .perHead:
                Ops.rmsNorm(qRow, rowCount: headCount, dim: headDim, weight: qNorm!, eps: eps)
                Ops.rmsNorm(kRow, rowCount: kvHeadCount, dim: headDim, weight: kNorm!, eps: eps)
            case .wholeProjection:
                Ops.rmsNorm(qRow, rowCount: 1, dim: qWidth, weight: qNorm!, eps: eps)
                Ops.rmsNorm(kRow, rowCount: 1, dim: kvWidth, weight: kNorm!, eps: eps)
            }
            if let clip {
                for i in 0..<qWidth { qRow[i] = min(max(qRow[i], -clip), clip) }
                for i in 0..<kvWidth { kRow[i] = min(max(kRow[i], -clip), clip); vRow[i] = min(max(vRow[i], -clip), clip) }
            }
        }
    }

    /// Whether `shadowForward` can run this layer: full causal attention with plain queries.
    var supportsShadow: Bool { slidingWindow == nil && !outputGate }

    /// This layer's attention output for rows that are each a sequence's one new token, computed
    /// as `forward` computes it but leaving the KV cache as it was: each row attends to its
    /// sequence's cached keys and values and to its own, which are used in place and not stored.
    /// The shadow of the next layer (`ShadowRouting`) runs it on an estimate of that layer's input
    /// while the current layer's misses load. Runs on one thread, unsplit (it runs inside the expert
    /// workers' section, as worker 0); `supportsShadow` must hold. Scratch: `q`, `context`
    /// `[T, heads·headDim]`, `k`, `v` `[T, kvHeads·headDim]`, `scores` one query's keys plus one.
    func shadowForward(_ x: UnsafePointer<Float>, spans: [SequenceSpan], q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>,
                       v: UnsafeMutablePointer<Float>, context: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>,
                       output: UnsafeMutablePointer<Float>) {
        precondition(supportsShadow, "the shadow runs full causal attention with plain queries only")
        let rowCount = spans.count
        let qWidth = headCount * headDim, kvWidth = kvHeadCount * headDim
        let scale = 1 / Float(headDim).squareRoot()
        let groupSize = headCount / kvHeadCount
        qProj.apply(x, rowCount: rowCount, into: q)
        kProj.apply(x, rowCount: rowCount, into: k)
        vProj.apply(x, rowCount: rowCount, into: v)
        finishProjections(q: q, k: k, v: v, rowCount: rowCount)
        for (row, span) in spans.enumerated() {
            precondition(span.rowCount == 1, "the shadow runs decode rows, one per sequence")
            let cache = span.cache, position = span.startPosition
            rope.apply(q + row * qWidth, headCount: headCount, headStride: rope.headDim, position: position,
                       llamaCppAngles: cache.llamaCppRotaryAngles)
            rope.apply(k + row * kvWidth, headCount: kvHeadCount, headStride: rope.headDim, position: position,
                       llamaCppAngles: cache.llamaCppRotaryAngles)
            // Keys 0 ..< position are cached (this layer has not run this step); the row's own is last.
            let past = position, firstRow = -cache.firstPosition(layer)
            for head in 0..<headCount {
                let group = head / groupSize
                let query = q + row * qWidth + head * headDim
                let ownKey = k + row * kvWidth + group * headDim, ownValue = v + row * kvWidth + group * headDim
                let offset = firstRow * kvWidth + group * headDim
                let out = context + row * qWidth + head * headDim
                if past > 0 {
                    switch cache.precision {
                    case .f32:
                        AttentionKernels.scores(query: query, keys: cache.keyRows(layer) + offset, keyStride: kvWidth,
                                                count: past, dim: headDim, scale: scale, into: scores)
                    case .f16:
                        AttentionKernels.scores(query: query, halfKeys: cache.halfKeyRows(layer) + offset, keyStride: kvWidth,
                                                count: past, dim: headDim, scale: scale, into: scores)
                    }
                }
                var own: Float = 0
                for i in 0..<headDim { own += query[i] * ownKey[i] }
                scores[past] = own * scale
                softmax(scores, count: past + 1, head: head)
                if past > 0 {
                    switch cache.precision {
                    case .f32:
                        AttentionKernels.weightedSum(scores, values: cache.valueRows(layer) + offset, valueStride: kvWidth,
                                                     count: past, dim: headDim, into: out)
                    case .f16:
                        AttentionKernels.weightedSum(scores, halfValues: cache.halfValueRows(layer) + offset,
                                                     valueStride: kvWidth, count: past, dim: headDim, into: out)
                    }
                } else {
                    out.update(repeating: 0, count: headDim)
                }
                let selfWeight = scores[past]
                for i in 0..<headDim { out[i] += selfWeight * ownValue[i] }
            }
        }
        oProj.apply(context, rowCount: rowCount, into: output)
        if let oBias {
            let hidden = oBias.count
            for row in 0..<rowCount {
                for i in 0..<hidden { output[row * hidden + i] += oBias[i] }
            }
        }
    }

    /// Every head of one query row: `context[row]` from `q[row]` and keys and values
    /// `firstRow ..< firstRow + keyCount` of the cache; `scores` holds `keyCount` floats.
    @inline(__always)
    private func attendHeads(row: Int, cache: KVCache, firstRow: Int, keyCount: Int, q: UnsafeMutablePointer<Float>,
                             context: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>,
                             heads: Range<Int>? = nil) {
        let qWidth = headCount * headDim, kvWidth = kvHeadCount * headDim
        let scale = 1 / Float(headDim).squareRoot()
        let groupSize = headCount / kvHeadCount
        for head in heads ?? 0..<headCount {
            let group = head / groupSize
            let query = q + row * qWidth + head * headDim
            let offset = firstRow * kvWidth + group * headDim
            let out = context + row * qWidth + head * headDim
            // scores[j] = scale · K[firstKey + j, group] · query, then softmax, then
            // context = Σ_j p[j] · V[firstKey + j, group]
            switch cache.precision {
            case .f32:
                AttentionKernels.scores(query: query, keys: cache.keyRows(layer) + offset, keyStride: kvWidth,
                                        count: keyCount, dim: headDim, scale: scale, into: scores)
                softmax(scores, count: keyCount, head: head)
                AttentionKernels.weightedSum(scores, values: cache.valueRows(layer) + offset, valueStride: kvWidth,
                                             count: keyCount, dim: headDim, into: out)
            case .f16 where cache.llamaCppFlashAttention:
                GGMLFlashAttention.head(query: query, halfKeys: cache.halfKeyRows(layer) + offset,
                                        halfValues: cache.halfValueRows(layer) + offset, stride: kvWidth,
                                        count: keyCount, dim: headDim, scale: scale, sink: sinks?[head], into: out)
            case .f16:
                AttentionKernels.scores(query: query, halfKeys: cache.halfKeyRows(layer) + offset, keyStride: kvWidth,
                                        count: keyCount, dim: headDim, scale: scale, into: scores)
                softmax(scores, count: keyCount, head: head)
                AttentionKernels.weightedSum(scores, halfValues: cache.halfValueRows(layer) + offset,
                                             valueStride: kvWidth, count: keyCount, dim: headDim, into: out)
            }
        }
    }

    /// A decode row whose query sees at least this many keys runs half its heads on the core
    /// pair's helper. One token's attention ran on one core while the helper spun idle: on the
    /// trained demo (4 heads, ~160 keys) the split gave decode 1.12-1.14x, paired, 6 of 6 rounds
    /// faster (docs/BENCHMARKS.md, session 16); 32 keys keeps the hand-off (about a microsecond)
    /// away from the shortest contexts, where a head is only a few thousand multiply-adds.
    /// `MOE_DECODE_HEAD_SPLIT_KEYS` overrides it; tests set it to compare the two paths (a plain
    /// variable, not `Synchronization.Atomic`: that module's import clashed with CURing's `fd_set`
    /// in the test targets' clean builds; it is written only before the layers run).
    nonisolated(unsafe) public static var decodeHeadSplitKeys =
        ProcessInfo.processInfo.environment["MOE_DECODE_HEAD_SPLIT_KEYS"].flatMap { Int($0) } ?? 32

    /// One decode row's heads, the first half on this thread and the rest on the core pair's
    /// helper, each half with its own `[keyCount]` scores; every head is computed as
    /// `attendHeads` computes it, so the bits do not depend on the split.
    private func attendHeadsInParallel(row: Int, cache: KVCache, firstRow: Int, keyCount: Int, q: UnsafeMutablePointer<Float>,
                                       context: UnsafeMutablePointer<Float>,
                                       scores: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>)) {
        // Everything the halves need, passed by pointer to a capture-free C function
        // (`CorePair.run(context:_:)`): a Swift closure here cost heap allocations per call.
        struct Job {
            let layer: UnsafePointer<AttentionLayer>
            let cache: Unmanaged<KVCache>
            let row, firstRow, keyCount, half: Int
            let q, context, scores, helperScores: UnsafeMutablePointer<Float>
        }
        withUnsafePointer(to: self) { layer in
            var job = Job(layer: layer, cache: .passUnretained(cache), row: row, firstRow: firstRow, keyCount: keyCount,
                          half: (headCount + 1) / 2, q: q, context: context, scores: scores.0, helperScores: scores.1)
            withUnsafeMutablePointer(to: &job) { pointer in
                CorePair.run(context: UnsafeMutableRawPointer(pointer)) { context, part in
                    let job = context!.assumingMemoryBound(to: Job.self).pointee
                    let layer = job.layer.pointee
                    layer.attendHeads(row: job.row, cache: job.cache.takeUnretainedValue(), firstRow: job.firstRow,
                                      keyCount: job.keyCount, q: job.q, context: job.context,
                                      scores: part == 0 ? job.scores : job.helperScores,
                                      heads: part == 0 ? 0..<job.half : job.half..<layer.headCount)
                }
            }
        }
    }

    /// Spans of at least this many rows (prefill chunks) run their queries on both cores.
    static let parallelRows = 8
    /// `MOE_PREFILL_ATTENTION=serial` keeps a prefill chunk's queries on one thread (for measurements).
    static let parallelPrefill = ProcessInfo.processInfo.environment["MOE_PREFILL_ATTENTION"] != "serial"

    /// A prefill span whose layer keeps every position: every row's rotated key and value are
    /// stored first (a query reads only keys up to its own position, so the later rows' keys
    /// change nothing), then the rows' queries run on two threads, alternate rows each (the causal
    /// work grows with the row), each with its own scores. Every (row, head) is computed exactly
    /// as on one thread, so the bits do not depend on the split.
    private func attendInParallel(span: SequenceSpan, q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>,
                                  v: UnsafeMutablePointer<Float>, context: UnsafeMutablePointer<Float>) {
        let qWidth = headCount * headDim, kvWidth = kvHeadCount * headDim
        let cache = span.cache
        for i in 0..<span.rowCount {
            let row = span.firstRow + i, position = span.startPosition + i
            rope.apply(q + row * qWidth, headCount: headCount, headStride: rope.headDim, position: position,
                       llamaCppAngles: cache.llamaCppRotaryAngles)
            rope.apply(k + row * kvWidth, headCount: kvHeadCount, headStride: rope.headDim, position: position,
                       llamaCppAngles: cache.llamaCppRotaryAngles)
            cache.store(layer: layer, position: position, key: k + row * kvWidth, value: v + row * kvWidth)
        }
        let operands = UncheckedSendable((q, context))
        let maxKeys = span.startPosition + span.rowCount
        CorePair.run { part in
            let (q, context) = operands.value
            withUnsafeTemporaryAllocation(of: Float.self, capacity: maxKeys) { scores in
                for i in stride(from: part, to: span.rowCount, by: 2) {
                    let position = span.startPosition + i
                    attendHeads(row: span.firstRow + i, cache: cache, firstRow: -cache.firstPosition(layer), keyCount: position + 1,
                                q: q, context: context, scores: scores.baseAddress!)
                }
            }
        }
    }

    /// The attention softmax of one query's scores, with the head's sink logit when the
    /// architecture has sinks.
    @inline(__always)
    private func softmax(_ scores: UnsafeMutablePointer<Float>, count: Int, head: Int) {
        if let sinks { Ops.softmax(scores, count: count, sink: sinks[head]) } else { Ops.softmax(scores, count: count) }
    }
}
