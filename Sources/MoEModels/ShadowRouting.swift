import Foundation
import ModelFormats
import TensorMath

/// A shadow of the next MoE layer, run while the current layer's missing experts load, that
/// tells the predictor which experts the next layer's router will choose.
///
/// Decode reads take longer than a layer's compute, so the guesses that matter are made before
/// the next layer's input exists. By the time the current layer's resident experts have run, the
/// next layer's input is known except for the missing experts' share:
///
///     h' = h_mid + Σ_{experts that ran} w_e · E_e(x)          (the residual after this layer, partial)
///     h'' = h' + attention_{l+1}(norm(h'))                     (the next layer's attention, not cached)
///     routes' = router_{l+1}(norm(h''))
///
/// On the trained demo's held-out text, with an LRU cache of a quarter of the experts, `routes'`
/// agrees with the real top-4 at 0.94 (the fitted one-ahead probes 0.89, the cross-layer gate 0.79),
/// and of the guesses that cost a read 92% are used, covering 81% of the misses (the probes at
/// their floor 94% and 65%; `scripts/shadow_routing_probe.py`). Live it cut the demo's demand
/// reads by 27% and raised OLMoE-1B-7B's recall from 0.17 to 0.74. Its guesses come less than a
/// layer ahead, so it gains little speed: a median 1.04x over the default predictor in 20 paired
/// rounds on four models (0.95-1.33x). It never cost more than the disk's spread, so it is on by
/// default (`--shadow-routing off` turns it off; docs/PREDICTOR.md, sessions 19 and 20). The
/// attention runs on the row's own key and value without storing them, so the KV cache is as it
/// was; everything here runs on the engine thread inside the MoE block's expert section, with
/// its products unsplit.
final class ShadowRouting {
    /// Decode steps of at most this many sequences run the shadow; larger ones make no guesses
    /// (`ExpertPredictor.saturatedDecode`) or are prefill chunks, whose pipeline guesses well.
    static let maxRows = 8

    private let hidden: Int
    /// `[rows, hidden]`: the partial MoE output the block fills, then h', h''.
    let partial: AlignedBuffer<Float>
    private let estimate: AlignedBuffer<Float>
    private let normalized: AlignedBuffer<Float>
    private let attentionOutput: AlignedBuffer<Float>
    /// Attention scratch: `[rows, heads·headDim]` and `[rows, kvHeads·headDim]`, one query's scores.
    private let q: AlignedBuffer<Float>, k: AlignedBuffer<Float>, v: AlignedBuffer<Float>, context: AlignedBuffer<Float>
    private let scores: AlignedBuffer<Float>
    /// `[rows, experts]`
    private let logits: AlignedBuffer<Float>
    /// One list of routes per row count (1 ... maxRows), lent to the router and given back, so
    /// that a run allocates no list of its own.
    private var routesByRows: [[TokenRouting]]

    init(config: ModelConfig) {
        hidden = config.hiddenSize
        let rows = Self.maxRows
        let qWidth = config.headCount * config.headDim, kvWidth = config.kvHeadCount * config.headDim
        partial = AlignedBuffer(count: rows * hidden)
        estimate = AlignedBuffer(count: rows * hidden)
        normalized = AlignedBuffer(count: rows * hidden)
        attentionOutput = AlignedBuffer(count: rows * hidden)
        q = AlignedBuffer(count: rows * qWidth)
        context = AlignedBuffer(count: rows * qWidth)
        k = AlignedBuffer(count: rows * kvWidth)
        v = AlignedBuffer(count: rows * kvWidth)
        scores = AlignedBuffer(count: config.maxPositionEmbeddings + 1)
        logits = AlignedBuffer(count: rows * max(config.expertCount, 1))
        routesByRows = (1...rows).map { count in (0..<count).map { _ in TokenRouting(experts: [], weights: []) } }
    }

    /// One layer the shadow runs: its attention, norms and MoE block.
    struct Target {
        let attention: AttentionLayer
        let inputNorm: [Float]
        let postAttentionNorm: [Float]
        let block: SparseMoEBlock
    }

    /// Runs the shadow of the next layer on `residual + partial` (`residual` is the current layer's
    /// h_mid, `[rows, hidden]`, one row per span) and reports its routing to `observer`.
    ///
    /// With `then` and surrogates of the next layer's experts, it goes on one layer further: the
    /// surrogates of the experts the shadow chose stand in for the next layer's MoE output, and the
    /// layer after runs its attention and router on that and reports too. On the demo's sampled
    /// text this guesses two layers ahead at 0.90-0.93 top-4 agreement, against 0.82 for the fitted
    /// two-ahead probes (`scripts/shadow_routing_probe.py --surrogates`).
    ///
    /// With `confidentFloor`, it reports (`didShadowGuess`) only the experts whose routing weight
    /// reaches the floor in some row, to be added to the guesses rather than replace them.
    func run(_ target: Target, then: Target? = nil, surrogates: ExpertSurrogates? = nil, confidentFloor: Float? = nil,
             residual: UnsafePointer<Float>, spans: [SequenceSpan], eps: Float, observer: RoutingObserver) {
        let rowCount = spans.count
        let count = rowCount * hidden
        IntegerDotKernels.serially {
            let h = estimate.pointer, x = normalized.pointer
            for i in 0..<count { h[i] = residual[i] + partial.pointer[i] }
            // The kept list of `rowCount` routes, refilled (its storage reused), and put back.
            var taken: [TokenRouting] = []
            swap(&taken, &routesByRows[rowCount - 1])
            defer { swap(&taken, &routesByRows[rowCount - 1]) }
            shadowLayer(target, h: h, x: x, rowCount: rowCount, spans: spans, eps: eps, routes: &taken)
            report(layer: target.block.layer, taken, confidentFloor: confidentFloor, to: observer)
            guard let then, let surrogates, surrogates.covers(layer: target.block.layer) else { return }
            // h'' of the next layer plus its chosen experts' surrogates (on its normalised input x)
            // is the estimate of the layer after's input.
            let layer = target.block.layer
            for (row, routing) in taken.enumerated() {
                for (slot, expert) in routing.experts.enumerated() {
                    surrogates.accumulate(layer: layer, expert: expert, input: x + row * hidden, weight: routing.weights[slot], into: h + row * hidden)
                }
            }
            shadowLayer(then, h: h, x: x, rowCount: rowCount, spans: spans, eps: eps, routes: &taken)
            report(layer: then.block.layer, taken, confidentFloor: confidentFloor, to: observer)
        }
    }

    private func report(layer: Int, _ routes: [TokenRouting], confidentFloor: Float?, to observer: RoutingObserver) {
        guard let floor = confidentFloor else {
            observer.didShadowRoute(layer: layer, routes: routes)
            return
        }
        var confident: [Int] = []
        for routing in routes {
            for (expert, weight) in zip(routing.experts, routing.weights) where weight >= floor && !confident.contains(expert) {
                confident.append(expert)
            }
        }
        if !confident.isEmpty { observer.didShadowGuess(layer: layer, experts: confident) }
    }

    /// `h += attention(norm(h))`, `x = norm'(h)`, `routes = router(x)`, for `rowCount` rows.
    private func shadowLayer(_ target: Target, h: UnsafeMutablePointer<Float>, x: UnsafeMutablePointer<Float>, rowCount: Int,
                             spans: [SequenceSpan], eps: Float, routes: inout [TokenRouting]) {
        let count = rowCount * hidden
        x.update(from: h, count: count)
        Ops.rmsNorm(x, rowCount: rowCount, dim: hidden, weight: target.inputNorm, eps: eps)
        target.attention.shadowForward(x, spans: spans, q: q.pointer, k: k.pointer, v: v.pointer, context: context.pointer,
                                       scores: scores.pointer, output: attentionOutput.pointer)
        Ops.addScaled(h, attentionOutput.pointer, alpha: 1, count: count)
        x.update(from: h, count: count)
        Ops.rmsNorm(x, rowCount: rowCount, dim: hidden, weight: target.postAttentionNorm, eps: eps)
        target.block.route(x, rowCount: rowCount, logits: logits.pointer, into: &routes)
    }
}
