import Foundation
import Testing
import ModelFormats
import TensorMath
@testable import MoEModels

/// What a steady-state decode step allocates: the calls to the C allocator and to `mmap` made by
/// one sequence's decode steps (`TransformerModel.forwardStep`, the path the engine and the
/// generator take) on the fixture models, counted on the calling thread by a preloaded counting
/// library (`AllocationCounter`). The test runs this bundle again, with the library preloaded,
/// for `DecodeStepAllocationProbe` alone, and checks what the probe measured.
@Suite(.serialized) struct DecodeStepAllocationTests {
    /// Nothing, on every architecture: the step's lists (sequence spans, routes, the distinct
    /// experts) are the forward workspace's, reused; the grouping by expert and the logits
    /// offsets are workspace scratch; rotary tables and grouped-selection scores are stack memory;
    /// the logits stay in the workspace (`StepLogits`). `forward`, which copies the logits out
    /// as `[[Float]]`, allocates those copies and nothing else.
    @Test func decodeStepsAllocateAndMapNothing() throws {
        let library: URL
        switch AllocationCounter.library {
        case .success(let built): library = built
        case .failure(let error):
            Issue.record("no counting library: \(error)")
            return
        }
        let output = library.deletingLastPathComponent().appendingPathComponent("probe.jsonl")
        try? FileManager.default.removeItem(at: output)
        let child = Process()
        child.executableURL = URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0])
        child.arguments = ["--testing-library", "swift-testing", "--filter", "DecodeStepAllocationProbe"]
        child.environment = ProcessInfo.processInfo.environment.merging(
            ["LD_PRELOAD": library.path, DecodeStepAllocationProbe.outputVariable: output.path]) { $1 }
        let log = Pipe()
        child.standardOutput = log
        child.standardError = log
        try child.run()
        let text = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        try #require(child.terminationStatus == 0, "the probe failed: \(text.suffix(2000))")

        let lines = try String(contentsOf: output, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == ReferenceFixture.committed.count)
        for line in lines {
            let row = try JSONDecoder().decode(DecodeStepAllocationProbe.Row.self, from: Data(line.utf8))
            #expect(row.allocations.allSatisfy { $0 == 0 }, "\(row.fixture): allocations per step \(row.allocations)")
            #expect(row.mappings.allSatisfy { $0 == 0 }, "\(row.fixture): mappings per step \(row.mappings)")
            #expect(row.batchedAllocations.allSatisfy { $0 == 0 }, "\(row.fixture): two-sequence steps \(row.batchedAllocations)")
            // The copying `forward`: the `[[Float]]` and its one row, nothing more.
            #expect(row.copyingAllocations.allSatisfy { $0 == 2 }, "\(row.fixture): forward allocations per step \(row.copyingAllocations)")
            print("decode step: \(row.fixture): \(row.allocations.max()!) allocations, \(row.mappings.max()!) mappings (forward: \(row.copyingAllocations.max()!)); \(row.layers) layers, \(row.moeLayers) MoE, top-\(row.topK)")
        }
        // The integer-dot products no fixture reaches (q4, int8, GGUF K-quants), at decode sizes.
        let kernels = try JSONDecoder().decode([String: Int].self, from: Data(contentsOf: DecodeStepAllocationProbe.kernelOutput(output)))
        #expect(Set(kernels.keys) == Set(DecodeStepAllocationProbe.kernelProducts))
        for (product, allocations) in kernels.sorted(by: { $0.key < $1.key }) {
            #expect(allocations == 0, "\(product): \(allocations) allocations in 8 products")
        }
    }
}

/// Runs only inside the child process the test above starts (with the counting library
/// preloaded and `MOE_ALLOCATION_PROBE` naming its output); anywhere else it does nothing.
@Suite struct DecodeStepAllocationProbe {
    static let outputVariable = "MOE_ALLOCATION_PROBE"

    struct Row: Codable {
        var fixture: String
        var layers: Int
        var moeLayers: Int
        var topK: Int
        /// Per measured step of `forwardStep`.
        var allocations: [Int]
        var mappings: [Int]
        /// Per measured step of the copying `forward`.
        var copyingAllocations: [Int]
        /// Allocations and mappings per measured `forwardStep` of two sequences at once.
        var batchedAllocations: [Int] = []
    }

    @Test func measureDecodeSteps() throws {
        guard let path = ProcessInfo.processInfo.environment[Self.outputVariable] else { return }
        try #require(AllocationCounter.counts() != nil, "the counting library is not loaded")
        var lines = ""
        for fixture in ReferenceFixture.committed {
            let reference = try fixture.reference()
            let model = try ModelLoader.loadCheckpoint(at: fixture.directory)
            let prompt = Array(reference.prompt.prefix(4))
            let steps = 16
            model.reserveWorkspace(maxRows: prompt.count, maxSequences: 2)
            let cache = model.makeCache()
            cache.reserve(prompt.count + 8 + 3 * steps)
            _ = try model.forward([SequenceInput(cache: cache, tokens: prompt)])
            // Inputs exist before anything is counted (the tokens need not be the greedy ones);
            // four warm-up steps let lazy state settle.
            let inputs = (0..<(4 + 2 * steps)).map { [SequenceInput(cache: cache, tokens: [(7 + 13 * $0) % model.config.vocabSize])] }
            for input in inputs.prefix(4) { _ = try model.forwardStep(input) }
            var row = Row(fixture: fixture.testDescription, layers: model.config.layerCount, moeLayers: model.config.moeLayers.count,
                          topK: model.config.expertsPerToken, allocations: [], mappings: [], copyingAllocations: [])
            row.allocations.reserveCapacity(steps)
            row.mappings.reserveCapacity(steps)
            row.copyingAllocations.reserveCapacity(steps)
            for input in inputs.dropFirst(4).prefix(steps) {
                let before = AllocationCounter.counts()!
                let logits = try model.forwardStep(input)
                let after = AllocationCounter.counts()!
                withExtendedLifetime(logits) {}
                row.allocations.append(after.allocations - before.allocations)
                row.mappings.append(after.mappings - before.mappings)
            }
            for input in inputs.suffix(steps) {
                let before = AllocationCounter.counts()!
                let logits = try model.forward(input)
                let after = AllocationCounter.counts()!
                withExtendedLifetime(logits) {}
                row.copyingAllocations.append(after.allocations - before.allocations)
            }
            // Two sequences in one step (two rows: the batched path of the MoE block).
            let other = model.makeCache()
            other.reserve(prompt.count + 4 + steps)
            _ = try model.forwardStep([SequenceInput(cache: other, tokens: prompt)])
            let pairs = (0..<(4 + steps)).map { step in
                [cache, other].map { SequenceInput(cache: $0, tokens: [(5 + 11 * step) % model.config.vocabSize]) }
            }
            row.batchedAllocations.reserveCapacity(steps)
            for (step, input) in pairs.enumerated() {
                let before = AllocationCounter.counts()!
                let logits = try model.forwardStep(input)
                let after = AllocationCounter.counts()!
                withExtendedLifetime(logits) {}
                if step >= 4 { row.batchedAllocations.append(after.allocations - before.allocations + after.mappings - before.mappings) }
            }
            lines += String(decoding: try JSONEncoder().encode(row), as: UTF8.self) + "\n"
        }
        try lines.write(toFile: path, atomically: true, encoding: .utf8)
        try JSONEncoder().encode(Self.measureKernelProducts()).write(to: Self.kernelOutput(URL(fileURLWithPath: path)))
    }

    /// Where the probe writes its per-kernel counts, beside the fixture rows.
    static func kernelOutput(_ output: URL) -> URL { output.appendingPathExtension("kernels") }

    /// The integer-dot products measured one by one (`kernelProducts` names them).
    static let kernelProducts = ["q4 1 row", "q4 2 rows", "int8 1 row", "int8 2 rows", "q4_K 1 row", "q5_K 1 row", "q6_K 2 rows",
                                 "q5_1 2 rows", "iq4_NL 1 row", "iq4_XS 2 rows"]

    /// Allocations made by eight products of each kind (a 64 × 256 matrix whatever its bytes hold: the count,
    /// not the values, is measured), after one warm-up product.
    static func measureKernelProducts() -> [String: Int] {
        let rows = 64, cols = 256
        let weights = AlignedBuffer<UInt8>(count: rows * cols * 2)
        let scales = AlignedBuffer<Float>(count: rows * cols / 32)
        let x = AlignedBuffer<Float>(count: 2 * cols), y = AlignedBuffer<Float>(count: 2 * rows)
        for i in 0..<(2 * cols) { x[i] = Float(i % 7) - 3 }
        let level = KernelLevel.detected
        let products: [(String, () -> Void)] = [
            ("q4 1 row", { IntegerDotKernels.q4(weights.pointer, scales: scales.pointer, rows: rows, cols: cols, x: x.pointer, count: 1, y: y.pointer, level: level) }),
            ("q4 2 rows", { IntegerDotKernels.q4(weights.pointer, scales: scales.pointer, rows: rows, cols: cols, x: x.pointer, count: 2, y: y.pointer, level: level) }),
            ("int8 1 row", { weights.pointer.withMemoryRebound(to: Int8.self, capacity: rows * cols) {
                IntegerDotKernels.int8($0, scales: scales.pointer, rows: rows, cols: cols, x: x.pointer, count: 1, y: y.pointer, level: level) } }),
            ("int8 2 rows", { weights.pointer.withMemoryRebound(to: Int8.self, capacity: rows * cols) {
                IntegerDotKernels.int8($0, scales: scales.pointer, rows: rows, cols: cols, x: x.pointer, count: 2, y: y.pointer, level: level) } }),
            ("q4_K 1 row", { IntegerDotKernels.kQuant(level: level, type: .q4_K, weights.pointer, rows: rows, cols: cols, x: x.pointer, count: 1, y: y.pointer) }),
            ("q5_K 1 row", { IntegerDotKernels.kQuant(level: level, type: .q5_K, weights.pointer, rows: rows, cols: cols, x: x.pointer, count: 1, y: y.pointer) }),
            ("q6_K 2 rows", { IntegerDotKernels.kQuant(level: level, type: .q6_K, weights.pointer, rows: rows, cols: cols, x: x.pointer, count: 2, y: y.pointer) }),
            ("q5_1 2 rows", { IntegerDotKernels.ggml32(level: level, type: .q5_1, weights.pointer, rows: rows, cols: cols, x: x.pointer, count: 2, y: y.pointer) }),
            ("iq4_NL 1 row", { IntegerDotKernels.ggml32(level: level, type: .iq4_NL, weights.pointer, rows: rows, cols: cols, x: x.pointer, count: 1, y: y.pointer) }),
            ("iq4_XS 2 rows", { IntegerDotKernels.kQuant(level: level, type: .iq4_XS, weights.pointer, rows: rows, cols: cols, x: x.pointer, count: 2, y: y.pointer) }),
        ]
        var counts: [String: Int] = [:]
        for (name, product) in products {
            product()
            let before = AllocationCounter.counts()!
            for _ in 0..<8 { product() }
            let after = AllocationCounter.counts()!
            counts[name] = after.allocations - before.allocations
        }
        return counts
    }
}
