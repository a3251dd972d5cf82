import Foundation
import Testing
import ModelFormats
import TensorMath

/// Low-bit copies in the store (issue 27 item 2, docs/LOSSY.md): the Q2_K / Q4_0 encoders, the
/// copies `low-bit-copies` appends to a store, the version that marks them, and old stores.
@Suite struct LowBitCopiesTests {
    static let demo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("DemoModel")

    static func gaussian(_ count: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<count).map { _ in
            let u = max(Float(rng.next() % 1_000_000) / 1_000_000, 1e-6), v = Float(rng.next() % 1_000_000) / 1_000_000
            return (-2 * log(u)).squareRoot() * cos(2 * .pi * v)
        }
    }

    /// Relative RMS error of `decoded` against `x`.
    static func relativeRMS(_ x: [Float], _ decoded: [Float]) -> Double {
        let error = zip(x, decoded).reduce(0.0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
        let norm = x.reduce(0.0) { $0 + Double($1 * $1) }
        return (error / norm).squareRoot()
    }

    /// The encoders write blocks the existing decoder reads, within the error of their bits:
    /// on Gaussian weights measured 0.26 (Q2_K: 4 levels per 16 weights) and 0.10 (Q4_0).
    @Test func encodersRoundTripWithinTheirBits() {
        let cols = 1024
        let x = Self.gaussian(cols, seed: 3)
        for (type, bound) in [(GGMLType.q2_K, 0.35), (.q4_0, 0.13)] {
            var blocks = [UInt8](repeating: 0, count: type.byteCount(elements: cols)!)
            var decoded = [Float](repeating: 0, count: cols)
            x.withUnsafeBufferPointer { xs in
                blocks.withUnsafeMutableBytes { out in
                    if type == .q2_K { GGMLQuantize.q2K(xs.baseAddress!, cols: cols, into: out.baseAddress!) } else {
                        GGMLQuantize.q4_0(xs.baseAddress!, cols: cols, into: out.baseAddress!)
                    }
                }
            }
            blocks.withUnsafeBytes { GGMLDequantize.row(type, $0.baseAddress!, count: cols, into: &decoded) }
            let error = Self.relativeRMS(x, decoded)
            #expect(error < bound, "\(type): relative RMS \(error)")
            #expect(error > 0.01, "\(type) cannot be this exact with its bits: \(error)")
        }
    }

    /// Q2_K matrices multiply through the integer-dot kernel (`IntegerDotKernels.kQuantTypes`)
    /// as the decoded weights do, up to the 8-bit rounding of the activations.
    @Test func q2KProductsMatchTheDecodedWeights() {
        let rows = 16, cols = 512
        let w = Self.gaussian(rows * cols, seed: 7), x = Self.gaussian(cols, seed: 8)
        let rowBytes = GGMLType.q2_K.byteCount(elements: cols)!
        var blocks = [UInt8](repeating: 0, count: rows * rowBytes)
        w.withUnsafeBufferPointer { ws in
            blocks.withUnsafeMutableBytes { out in
                for r in 0..<rows { GGMLQuantize.q2K(ws.baseAddress! + r * cols, cols: cols, into: out.baseAddress! + r * rowBytes) }
            }
        }
        var y = [Float](repeating: 0, count: rows)
        blocks.withUnsafeBufferPointer { b in
            let matrix = WeightMatrix(rows: rows, cols: cols, storage: .ggml(type: .q2_K, blocks: b.baseAddress!), owner: nil)
            matrix.apply(x, rowCount: 1, into: &y)
            for r in 0..<rows {
                let decoded = matrix.row(r)
                let exact = zip(decoded, x).reduce(0.0) { $0 + Double($1.0 * $1.1) }
                let magnitude = zip(decoded, x).reduce(0.0) { $0 + Double(abs($1.0 * $1.1)) }
                #expect(abs(Double(y[r]) - exact) < 0.02 * magnitude, "row \(r): \(y[r]) vs \(exact)")
            }
        }
    }

    /// `LowBitCopies.add` on a copy of the demo store: one copy per expert after the full blobs,
    /// format version 4, verified by `verify`, each copy close to its full expert and smaller;
    /// the untouched demo store (version 1-3, no copies) still opens, without copies.
    @Test func addingCopiesToTheDemoStore() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moe-lowbit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let store = dir.appendingPathComponent("demo")
        try FileManager.default.createDirectory(at: store, withIntermediateDirectories: true)
        for name in ["manifest.json", "dense.bin", "experts.bin", "config.json", "tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(at: Self.demo.appendingPathComponent(name), to: store.appendingPathComponent(name))
        }
        let old = try ExpertStore(url: Self.demo)
        #expect(old.lowBitLayout == nil && old.manifest.formatVersion < 4)
        #expect(throws: (any Error).self) { try old.readLowBitExpert(layer: 0, expert: 0) }

        let summary = try LowBitCopies.add(kind: .q2, to: store)
        // The demo: gate/up [128, 256] -> Q2_K, down [256, 128] (128 is not a multiple of 256) -> Q4_0.
        #expect(summary.section.ggmlTypes == ["Q2_K", "Q2_K", "Q4_0"])
        #expect(summary.copyBytes < summary.fullBytes * 7 / 10)
        let reopened = try ExpertStore(url: store)
        #expect(reopened.manifest.formatVersion == 4)
        #expect(reopened.manifest.lowBitCopies?.blobs.count == old.manifest.experts.blobs.count)
        #expect(reopened.manifest.experts.blobs == old.manifest.experts.blobs)   // full blobs untouched
        #expect(reopened.verify().isEmpty)
        #expect(throws: (any Error).self) { try LowBitCopies.add(kind: .q2, to: store) }   // only once

        var worst = 0.0
        for (layer, expert) in [(0, 0), (3, 17), (7, 31)] {
            let full = try reopened.readExpert(layer: layer, expert: expert)
            let copy = try reopened.readLowBitExpert(layer: layer, expert: expert)
            #expect(copy.byteCount < full.byteCount)
            for (a, b) in [(full.gate, copy.gate), (full.up, copy.up), (full.down, copy.down)] {
                let x = (0..<a.rows).flatMap { a.row($0) }, y = (0..<b.rows).flatMap { b.row($0) }
                worst = max(worst, Self.relativeRMS(x, y))
            }
        }
        // Trained q4 weights through 2-bit codes: measured 0.24-0.27 relative RMS per matrix.
        #expect(worst < 0.4, "worst relative RMS \(worst)")
        print("low-bit copies: \(summary.copyBytes) of \(summary.fullBytes) bytes per expert, worst matrix relative RMS \(worst)")
    }
}
