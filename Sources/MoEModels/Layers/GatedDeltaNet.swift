import Foundation
import ModelFormats
import TensorMath

/// Qwen3-Next's linear-attention token mixer, as transformers' `Qwen3NextGatedDeltaNet` computes
/// it: projections `in_proj_qkvz` and `in_proj_ba` (laid out per key head), a causal depthwise
/// convolution with SiLU over q, k and v, L2-normalised q and k, a per-value-head decay
/// `g = -exp(A_log) · softplus(a + dt_bias)` and learning rate `β = sigmoid(b)`, the gated delta
/// rule over a recurrent state `S [keyHeadDim, valueHeadDim]` per value head,
///
///     S ← S · exp(g);  S ← S + k ⊗ β (v − Sᵀk);  o = Sᵀq / √keyHeadDim,
///
/// then an RMSNorm of each head's output scaled by `silu(z)` and `out_proj`. Each sequence's
/// state (recurrent and conv) lives in its cache's `LinearAttentionState`. A span of several
/// tokens (a prompt or a prefill chunk) runs the recurrent form (`torch_recurrent_gated_delta_rule`)
/// token by token, as a decode step does (see `chunkedSpans`); with `MOE_DELTA_RULE=chunked` it
/// runs transformers' chunked form in chunks of 64 tokens (`torch_chunk_gated_delta_rule`).
struct GatedDeltaNet {
    let layer: Int
    let shapes: LinearAttentionConfig
    /// The input projection to q, k, v and the output gate z.
    let inProj: InputProjection
    /// `[2·valueHeads, hidden]`: per key head, its value heads' b, then their a.
    let inProjBA: WeightMatrix
    /// `[convChannels, convKernel]`: the depthwise kernel, last tap on the current token.
    let convWeight: [Float]
    /// `[valueHeads]`: `-exp(A_log)`.
    let negativeA: [Float]
    /// `[valueHeads]`
    let dtBias: [Float]
    /// `[valueHeadDim]`: the gated RMSNorm's weight (a plain scale, no offset).
    let normWeight: [Float]
    /// `[hidden, valueWidth]`
    let outProj: WeightMatrix
    let eps: Float

    /// Tokens per chunk of the chunked delta rule (transformers' `chunk_size`).
    static let chunkSize = 64

    /// Whether a span of several tokens runs the chunked form (`MOE_DELTA_RULE=chunked`) rather
    /// than the recurrent form token by token (the default). The recurrent form gives every
    /// position the arithmetic a decode step gives it, whatever chunk of the prompt it arrives in,
    /// so a prompt's state and logits do not depend on how the prefill was cut: that is what lets
    /// a partial prompt-cache hit (a chat's next turn) be bit-identical to an uncached run
    /// (`Engine.exactPrefill` finds the model exact). On a CPU it costs about what the chunked
    /// form costs: ≈5·dk·dv multiply-adds per token and value head against ≈3·dk·dv + 96·(dk + dv)
    /// for 64-token chunks (the chunked form exists for GPUs' matrix units).
    static let chunkedSpans = ProcessInfo.processInfo.environment["MOE_DELTA_RULE"] == "chunked"

    /// How q, k, v and z are projected: Hugging Face's one `in_proj_qkvz`, or the two halves
    /// llama.cpp's converter regroups it into (GGUF `attn_qkv` and `attn_gate`, served as
    /// `in_proj_qkv`/`in_proj_z`, the names Qwen3.5's checkpoints give the same split).
    enum InputProjection {
        /// `[2·keyWidth + 2·valueWidth, hidden]`: per key head, its q, k, then its value heads' v and z.
        case fused(WeightMatrix)
        /// `qkv [2·keyWidth + valueWidth, hidden]`: every head's q, then k, then v (the convolution's
        /// channel order); `z [valueWidth, hidden]`: every value head's z.
        case split(qkv: WeightMatrix, z: WeightMatrix)
    }

    init(layer: Int, config: ModelConfig, description: ArchitectureDescription, weights: WeightSource) throws {
        guard let shapes = config.linearAttention else {
            preconditionFailure("a gated delta-net layer needs the config's linear attention shapes")
        }
        let prefix = description.linearAttentionPrefix(layer)
        let hidden = config.hiddenSize
        self.layer = layer
        self.shapes = shapes
        if weights.contains("\(prefix).in_proj_qkvz.weight") || !weights.contains("\(prefix).in_proj_qkv.weight") {
            inProj = .fused(try weights.matrix("\(prefix).in_proj_qkvz.weight", rows: 2 * shapes.keyWidth + 2 * shapes.valueWidth, cols: hidden))
        } else {
            inProj = .split(qkv: try weights.matrix("\(prefix).in_proj_qkv.weight", rows: shapes.convChannels, cols: hidden),
                            z: try weights.matrix("\(prefix).in_proj_z.weight", rows: shapes.valueWidth, cols: hidden))
        }
        inProjBA = try weights.matrix("\(prefix).in_proj_ba.weight", rows: 2 * shapes.valueHeadCount, cols: hidden)
        // Stored [channels, 1, kernel]; read as its channels × kernel values.
        convWeight = try weights.vector("\(prefix).conv1d.weight", count: shapes.convChannels * shapes.convKernel)
        negativeA = try weights.vector("\(prefix).A_log", count: shapes.valueHeadCount).map { -expf($0) }
        dtBias = try weights.vector("\(prefix).dt_bias", count: shapes.valueHeadCount)
        normWeight = try weights.vector("\(prefix).norm.weight", count: shapes.valueHeadDim)
        outProj = try weights.matrix("\(prefix).out_proj.weight", rows: hidden, cols: shapes.valueWidth)
        eps = config.rmsNormEps
    }

    /// Where each part of the layer's scratch sits in `ForwardWorkspace.linearScratch`, for
    /// steps of at most `rows` rows (float offsets).
    struct ScratchLayout {
        let projection: Int, ba: Int, mixed: Int, convolved: Int, gates: Int, core: Int
        let chunkSystem: Int, chunkSolved: Int, chunkValues: Int, chunkDecay: Int
        let count: Int

        init(_ shapes: LinearAttentionConfig, rows: Int) {
            let chunk = min(rows, GatedDeltaNet.chunkSize)
            var next = 0
            func take(_ n: Int) -> Int { defer { next += n }; return next }
            projection = take(rows * (2 * shapes.keyWidth + 2 * shapes.valueWidth)) // [T, qkvz]
            ba = take(rows * 2 * shapes.valueHeadCount)                            // [T, ba]
            mixed = take(rows * shapes.convChannels)                               // [T, q|k|v] before the conv
            convolved = take(rows * shapes.convChannels)                           // [T, q|k|v] after it
            gates = take(rows * 2 * shapes.valueHeadCount)                         // [T, g | β]
            core = take(rows * shapes.valueWidth)                                  // [T, valueHeads·valueHeadDim]
            chunkSystem = take(chunk * chunk)                                      // [C, C]
            chunkSolved = take(chunk * (shapes.valueHeadDim + shapes.keyHeadDim))  // [C, dv + dk]
            chunkValues = take(chunk * shapes.valueHeadDim)                        // [C, dv]
            chunkDecay = take(chunk)                                               // [C]
            count = next
        }
    }

    /// `output[T, hidden] = deltaNet(x[T, hidden])` for every span of the batch, advancing each
    /// span's linear-attention state by its tokens.
    func forward(_ x: UnsafePointer<Float>, rowCount: Int, spans: [SequenceSpan], workspace: ForwardWorkspace,
                 output: UnsafeMutablePointer<Float>) {
        let layout = ScratchLayout(shapes, rows: rowCount)
        let base = workspace.linearScratch.pointer
        let projection = base + layout.projection, ba = base + layout.ba
        let mixed = base + layout.mixed, convolved = base + layout.convolved
        let gates = base + layout.gates, core = base + layout.core
        let kHeads = shapes.keyHeadCount, vHeads = shapes.valueHeadCount
        let dk = shapes.keyHeadDim, dv = shapes.valueHeadDim, perKey = vHeads / kHeads
        let keyWidth = shapes.keyWidth, valueWidth = shapes.valueWidth, channels = shapes.convChannels
        let projectionWidth = 2 * keyWidth + 2 * valueWidth

        let fused: Bool
        switch inProj {
        case .fused(let qkvz):
            qkvz.apply(x, rowCount: rowCount, into: projection)
            fused = true
        case .split(let qkv, let z):
            qkv.apply(x, rowCount: rowCount, into: mixed) // already q|k|v in the channel order
            z.apply(x, rowCount: rowCount, into: projection) // [T, valueWidth]
            fused = false
        }
        inProjBA.apply(x, rowCount: rowCount, into: ba)
        // Per row: q|k|v in the convolution's channel order, g and β per value head.
        for row in 0..<rowCount {
            let source = projection + row * projectionWidth, target = mixed + row * channels
            let group = 2 * dk + 2 * perKey * dv // one key head's q, k, v, z
            for head in 0..<kHeads where fused {
                let segment = source + head * group
                (target + head * dk).update(from: segment, count: dk)
                (target + keyWidth + head * dk).update(from: segment + dk, count: dk)
                (target + 2 * keyWidth + head * perKey * dv).update(from: segment + 2 * dk, count: perKey * dv)
            }
            let baRow = ba + row * 2 * vHeads, g = gates + row * 2 * vHeads, beta = g + vHeads
            for head in 0..<kHeads {
                for i in 0..<perKey {
                    let v = head * perKey + i
                    beta[v] = Ops.sigmoid(baRow[head * 2 * perKey + i])
                    g[v] = negativeA[v] * Self.softplus(baRow[head * 2 * perKey + perKey + i] + dtBias[v])
                }
            }
        }

        for span in spans {
            guard let state = span.cache.linearState else {
                preconditionFailure("a hybrid model's sequence needs a cache made by its makeCache()")
            }
            convolve(mixed, into: convolved, span: span, state: state.convState(layer: layer))
            // L2-normalised q and k per key head (eps 1e-6 as transformers' l2norm), q scaled by 1/√dk.
            let scale = 1 / Float(dk).squareRoot()
            for row in span.firstRow..<(span.firstRow + span.rowCount) {
                let r = convolved + row * channels
                for head in 0..<(2 * kHeads) {
                    let vector = r + head * dk
                    var sum: Float = 0
                    for i in 0..<dk { sum += vector[i] * vector[i] }
                    let inverse = 1 / (sum + 1e-6).squareRoot() * (head < kHeads ? scale : 1)
                    for i in 0..<dk { vector[i] *= inverse }
                }
            }
            let recurrent = state.recurrentState(layer: layer)
            for v in 0..<vHeads {
                let heads = HeadView(convolved: convolved, gates: gates, core: core, channels: channels, keyWidth: keyWidth,
                                     valueHeads: vHeads, valueWidth: valueWidth, keyHead: v / perKey, valueHead: v, dk: dk, dv: dv)
                let s = recurrent + v * dk * dv
                if span.rowCount == 1 || !Self.chunkedSpans {
                    for row in span.firstRow..<(span.firstRow + span.rowCount) { recurrentStep(heads, row: row, state: s) }
                } else {
                    var start = 0
                    while start < span.rowCount {
                        let length = min(Self.chunkSize, span.rowCount - start)
                        chunk(heads, firstRow: span.firstRow + start, length: length, state: s, scratch: base, layout: layout)
                        start += length
                    }
                }
            }
        }

        // Gated RMSNorm per value head: norm(o) · weight · silu(z).
        for row in 0..<rowCount {
            let group = 2 * dk + 2 * perKey * dv
            for v in 0..<vHeads {
                let o = core + row * valueWidth + v * dv
                let z = fused ? projection + row * projectionWidth + (v / perKey) * group + 2 * dk + perKey * dv + (v % perKey) * dv
                              : projection + row * valueWidth + v * dv
                var sum: Float = 0
                for i in 0..<dv { sum += o[i] * o[i] }
                let inverse = 1 / (sum / Float(dv) + eps).squareRoot()
                for i in 0..<dv {
                    let gate = z[i] / (1 + expf(-z[i]))
                    o[i] = normWeight[i] * (o[i] * inverse) * gate
                }
            }
        }
        outProj.apply(core, rowCount: rowCount, into: output)
    }

    /// torch's `F.softplus` (threshold 20: above it, the identity).
    static func softplus(_ x: Float) -> Float { x > 20 ? x : log1pf(expf(x)) }

    /// The causal depthwise convolution with SiLU over a span's rows of `mixed`, continuing from
    /// and updating the sequence's conv state (its last `kernel - 1` inputs).
    private func convolve(_ mixed: UnsafeMutablePointer<Float>, into convolved: UnsafeMutablePointer<Float>, span: SequenceSpan,
                          state: UnsafeMutablePointer<Float>) {
        let kernel = shapes.convKernel, channels = shapes.convChannels, history = kernel - 1
        let n = span.rowCount
        // Input `s` of the extended sequence (state rows first, then the span's rows), channel c.
        @inline(__always) func input(_ s: Int) -> UnsafeMutablePointer<Float> {
            s < history ? state + s * channels : mixed + (span.firstRow + s - history) * channels
        }
        for t in 0..<n {
            let out = convolved + (span.firstRow + t) * channels
            for c in 0..<channels { out[c] = 0 }
            for j in 0..<kernel {
                let x = input(t + j)
                for c in 0..<channels { out[c] += convWeight[c * kernel + j] * x[c] }
            }
            for c in 0..<channels { out[c] = out[c] / (1 + expf(-out[c])) }
        }
        // New state: the last `history` inputs. Ascending order reads each old row before it is overwritten.
        for s in 0..<history { (state + s * channels).update(from: input(n + s), count: channels) }
    }

    /// One value head's rows in the step's buffers.
    struct HeadView {
        let convolved: UnsafeMutablePointer<Float>, gates: UnsafeMutablePointer<Float>, core: UnsafeMutablePointer<Float>
        let channels: Int, keyWidth: Int, valueHeads: Int, valueWidth: Int, keyHead: Int, valueHead: Int, dk: Int, dv: Int

        /// `[dk]` normalised, scaled query of `row`.
        @inline(__always) func query(_ row: Int) -> UnsafeMutablePointer<Float> { convolved + row * channels + keyHead * dk }
        /// `[dk]` normalised key of `row`.
        @inline(__always) func key(_ row: Int) -> UnsafeMutablePointer<Float> { convolved + row * channels + keyWidth + keyHead * dk }
        /// `[dv]` value of `row`.
        @inline(__always) func value(_ row: Int) -> UnsafeMutablePointer<Float> { convolved + row * channels + 2 * keyWidth + valueHead * dv }
        @inline(__always) func decay(_ row: Int) -> Float { gates[row * 2 * valueHeads + valueHead] }
        @inline(__always) func beta(_ row: Int) -> Float { gates[row * 2 * valueHeads + valueHeads + valueHead] }
        /// `[dv]` this head's output at `row`.
        @inline(__always) func output(_ row: Int) -> UnsafeMutablePointer<Float> { core + row * valueWidth + valueHead * dv }
    }

    /// The recurrent form for one token: decay the state, write the corrected value, read.
    private func recurrentStep(_ head: HeadView, row: Int, state s: UnsafeMutablePointer<Float>) {
        let dk = head.dk, dv = head.dv
        let q = head.query(row), k = head.key(row), v = head.value(row), out = head.output(row)
        let decay = expf(head.decay(row)), beta = head.beta(row)
        for i in 0..<(dk * dv) { s[i] *= decay }
        // delta = β (v − Sᵀk), into `out` as scratch
        for j in 0..<dv { out[j] = 0 }
        for i in 0..<dk {
            let ki = k[i], sRow = s + i * dv
            for j in 0..<dv { out[j] += sRow[j] * ki }
        }
        for j in 0..<dv { out[j] = (v[j] - out[j]) * beta }
        for i in 0..<dk {
            let ki = k[i], sRow = s + i * dv
            for j in 0..<dv { sRow[j] += ki * out[j] }
        }
        // o = Sᵀq
        for j in 0..<dv { out[j] = 0 }
        for i in 0..<dk {
            let qi = q[i], sRow = s + i * dv
            for j in 0..<dv { out[j] += sRow[j] * qi }
        }
    }

    /// The chunked form over `length` (≤ 64) consecutive rows of one value head, from and into
    /// the state `s [dk, dv]`: the delta rule's updates inside the chunk condensed by the UT
    /// transform `(I + tril(β K Kᵀ ⊙ Γ, −1))⁻¹`, as `torch_chunk_gated_delta_rule` does (its zero
    /// padding of the last chunk changes nothing, so a short chunk is run as it is).
    private func chunk(_ head: HeadView, firstRow: Int, length n: Int, state s: UnsafeMutablePointer<Float>,
                       scratch: UnsafeMutablePointer<Float>, layout: ScratchLayout) {
        let dk = head.dk, dv = head.dv, width = dv + dk
        let system = scratch + layout.chunkSystem  // [n, n]: β_i k_i·k_j exp(G_i − G_j), j < i
        let solved = scratch + layout.chunkSolved  // [n, dv + dk]: new values | decayed β-keys, solved
        let vNew = scratch + layout.chunkValues    // [n, dv]
        let cumulative = scratch + layout.chunkDecay // [n]: G_i, the decay summed from the chunk's start
        var total: Float = 0
        for i in 0..<n { total += head.decay(firstRow + i); cumulative[i] = total }

        @inline(__always) func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ count: Int) -> Float {
            var sum: Float = 0
            for i in 0..<count { sum += a[i] * b[i] }
            return sum
        }
        for i in 0..<n {
            let ki = head.key(firstRow + i), beta = head.beta(firstRow + i)
            for j in 0..<i { system[i * n + j] = beta * dot(ki, head.key(firstRow + j), dk) * expf(cumulative[i] - cumulative[j]) }
            // Right-hand sides: β v_i and β k_i exp(G_i).
            let rhs = solved + i * width, v = head.value(firstRow + i), decay = expf(cumulative[i])
            for j in 0..<dv { rhs[j] = v[j] * beta }
            for j in 0..<dk { rhs[dv + j] = ki[j] * beta * decay }
            // Forward substitution with the unit lower-triangular system.
            for j in 0..<i {
                let a = system[i * n + j], earlier = solved + j * width
                for c in 0..<width { rhs[c] -= a * earlier[c] }
            }
        }
        // v_new = new values − (decayed β-keys) S
        for i in 0..<n {
            let target = vNew + i * dv, row = solved + i * width, kc = row + dv
            target.update(from: row, count: dv)
            for a in 0..<dk {
                let weight = kc[a], sRow = s + a * dv
                for j in 0..<dv { target[j] -= weight * sRow[j] }
            }
        }
        // o_i = exp(G_i) q_i S + Σ_{j ≤ i} (q_i·k_j) exp(G_i − G_j) v_new_j
        for i in 0..<n {
            let q = head.query(firstRow + i), out = head.output(firstRow + i), decay = expf(cumulative[i])
            for j in 0..<dv { out[j] = 0 }
            for a in 0..<dk {
                let weight = q[a] * decay, sRow = s + a * dv
                for j in 0..<dv { out[j] += weight * sRow[j] }
            }
            for j in 0...i {
                let weight = dot(q, head.key(firstRow + j), dk) * expf(cumulative[i] - cumulative[j])
                let value = vNew + j * dv
                for c in 0..<dv { out[c] += weight * value[c] }
            }
        }
        // S ← S exp(G_last) + Σ_i (k_i exp(G_last − G_i)) ⊗ v_new_i
        let last = cumulative[n - 1], chunkDecay = expf(last)
        for i in 0..<(dk * dv) { s[i] *= chunkDecay }
        for i in 0..<n {
            let k = head.key(firstRow + i), decay = expf(last - cumulative[i]), value = vNew + i * dv
            for a in 0..<dk {
                let weight = k[a] * decay, sRow = s + a * dv
                for j in 0..<dv { sRow[j] += weight * value[j] }
            }
        }
    }
}
