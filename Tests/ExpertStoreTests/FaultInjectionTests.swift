import Foundation
import Testing
import ModelFormats
import MoEModels

/// Faults injected into the expert read path and the packer (`MOE_FAULTS`, docs/RELIABILITY.md):
/// each fails the read or the pack with a clear error, and the next read (or a pack without the
/// fault) works. Each test uses its own injector, so suites running in parallel see no faults.
@Suite struct FaultInjectionTests {
    /// A packed tiny Mixtral store in a temporary directory (removed by the caller).
    func packedStore() throws -> (dir: URL, store: URL) {
        let dir = try TinyCheckpoint.temporaryDirectory()
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        try pack(hf, to: storeURL)
        return (dir, storeURL)
    }

    func plan(_ spec: String) throws -> FaultInjector { FaultInjector(try FaultPlan(specification: spec)) }

    @Test func specificationParsesAndRejectsWithTheItemNamed() throws {
        let p = try FaultPlan(specification: "read_error=0.01, short_read:once,latency_ms=5,corrupt_blob=3/17,enospc_after=4096,seed=9")
        #expect(p.readError == .probability(0.01))
        #expect(p.shortRead == .once)
        #expect(p.latencyMilliseconds == 5)
        #expect(p.corruptBlob?.layer == 3 && p.corruptBlob?.expert == 17)
        #expect(p.enospcAfterBytes == 4096)
        #expect(p.seed == 9)
        #expect(try FaultPlan(specification: "").isEmpty)
        for (bad, words) in [("read_error=2", "probability"), ("corrupt_blob=3/x", "LAYER/EXPERT"), ("disk_on_fire=1", "unknown fault"),
                             ("latency_ms", "key=value"), ("enospc_after=-1", "byte count")] {
            let message = errorText { _ = try FaultPlan(specification: bad) }
            #expect(message?.contains("MOE_FAULTS") == true && message?.contains(words) == true, "\(bad): \(message ?? "accepted")")
        }
    }

    @Test func faultsFromAFileFollowItsContent() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("faults")
        let injector = FaultInjector(file: file.path)
        #expect(injector.readFaults(layer: 0, expert: 0) == FaultInjector.ReadFaults()) // missing file: none
        try Data("read_error=1,latency_ms=3".utf8).write(to: file)
        #expect(injector.readFaults(layer: 0, expert: 0).error)
        #expect(injector.readFaults(layer: 0, expert: 0).latencyMilliseconds == 3)
        try Data("corrupt_blob=2/5".utf8).write(to: file)
        #expect(!injector.readFaults(layer: 2, expert: 5).error)
        #expect(injector.readFaults(layer: 2, expert: 5).corrupt)
        try Data("not a fault".utf8).write(to: file)
        #expect(injector.readFaults(layer: 2, expert: 5) == FaultInjector.ReadFaults()) // a bad edit: none
    }

    @Test func readErrorFailsThatReadOnly() throws {
        let (dir, storeURL) = try packedStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try ExpertStore(url: storeURL, faults: try plan("read_error=once"))
        let message = errorText { _ = try store.readExpert(layer: 1, expert: 2) }
        #expect(message?.contains("layer 1 expert 2") == true)
        #expect(message?.contains("Input/output error") == true, "\(message ?? "no error")")
        _ = try store.readExpert(layer: 1, expert: 2) // the next read of the same expert succeeds

        // Through the model's expert provider: the step fails, the next one runs.
        let failing = try ExpertStore(url: storeURL, faults: try plan("read_error=once"))
        let provider = StoreExpertProvider(store: failing)
        #expect(errorText { try provider.withExperts(layer: 0, experts: [0, 1]) { _, _ in } }?.contains("Input/output error") == true)
        try provider.withExperts(layer: 0, experts: [0, 1]) { _, _ in }
    }

    @Test func shortReadIsRefused() throws {
        let (dir, storeURL) = try packedStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try ExpertStore(url: storeURL, faults: try plan("short_read=once"))
        let message = errorText { _ = try store.readExpert(layer: 0, expert: 3) }
        #expect(message?.contains("layer 0 expert 3: short read") == true, "\(message ?? "no error")")
        _ = try store.readExpert(layer: 0, expert: 3)
    }

    /// `transferred` (where an emulated disk waits for the transfer's end) comes after the bytes
    /// are in memory and before their checksum: a corrupt read calls it, then fails the check.
    @Test func theTransferEndsBeforeTheChecksum() throws {
        let (dir, storeURL) = try packedStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try ExpertStore(url: storeURL, faults: try plan("corrupt_blob=1/2"))
        var transfers = 0
        let message = errorText { _ = try store.readExpert(layer: 1, expert: 2) { transfers += 1 } }
        #expect(transfers == 1 && message?.contains("layer 1 expert 2: checksum mismatch") == true, "\(message ?? "no error")")
        let good = try store.readExpert(layer: 1, expert: 1) { transfers += 1 }
        let reference = try ExpertStore(url: storeURL, faults: FaultInjector()).readExpert(layer: 1, expert: 1)
        #expect(transfers == 2 && (0..<good.down.rows).allSatisfy { good.down.row($0) == reference.down.row($0) })
    }

    @Test func blobCorruptedWhileServingIsCaughtByItsChecksum() throws {
        let (dir, storeURL) = try packedStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try ExpertStore(url: storeURL, faults: try plan("corrupt_blob=1/2"))
        for _ in 0..<2 {
            let message = errorText { _ = try store.readExpert(layer: 1, expert: 2) }
            #expect(message?.contains("layer 1 expert 2: checksum mismatch") == true, "\(message ?? "no error")")
        }
        _ = try store.readExpert(layer: 1, expert: 1) // other experts are unaffected
        #expect(store.statistics.checksumFailures == 2)

        let once = try ExpertStore(url: storeURL, faults: try plan("corrupt_blob=once"))
        #expect(errorText { _ = try once.readExpert(layer: 0, expert: 0) }?.contains("checksum mismatch") == true)
        _ = try once.readExpert(layer: 0, expert: 0)

        // The same with the bytes really changed on disk under an open store (O_DIRECT reads see it).
        let live = try ExpertStore(url: storeURL, faults: FaultInjector())
        _ = try live.readExpert(layer: 0, expert: 1)
        let entry = try live.blob(layer: 0, expert: 1)
        try flipByte(storeURL.appendingPathComponent("experts.bin"), at: entry.offset + entry.storedLength / 3)
        #expect(errorText { _ = try live.readExpert(layer: 0, expert: 1) }?.contains("layer 0 expert 1: checksum mismatch") == true)
    }

    @Test func latencyDelaysEveryRead() throws {
        let (dir, storeURL) = try packedStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = try ExpertStore(url: storeURL, faults: try plan("latency_ms=40"))
        let start = DispatchTime.now().uptimeNanoseconds
        for expert in 0..<3 { _ = try store.readExpert(layer: 0, expert: expert) }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        #expect(seconds >= 0.12, "3 reads took \(seconds) s")
    }

    @Test func probabilisticErrorsAreReproducibleFromTheirSeed() throws {
        let (dir, storeURL) = try packedStore()
        defer { try? FileManager.default.removeItem(at: dir) }
        func outcomes(seed: Int) throws -> [Bool] {
            let store = try ExpertStore(url: storeURL, faults: try plan("read_error=0.3,seed=\(seed)"))
            return (0..<40).map { i in (try? store.readExpert(layer: i % 2, expert: i % 4)) != nil }
        }
        let a = try outcomes(seed: 5)
        #expect(a == (try outcomes(seed: 5)))
        let failures = a.filter { !$0 }.count
        #expect(failures > 2 && failures < 25, "\(failures) of 40 reads failed at p = 0.3")
    }

    @Test func diskFullWhilePackingLeavesNoStore() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let reference = dir.appendingPathComponent("reference")
        try pack(hf, to: reference)
        let total = try ["dense.bin", "experts.bin", "manifest.json"].reduce(0) {
            $0 + (try FileManager.default.attributesOfItem(atPath: reference.appendingPathComponent($1).path)[.size] as! Int)
        }
        try FileManager.default.removeItem(at: reference)

        let source = try CheckpointDirectory(url: hf)
        let names = ArchitectureDescription.of(source.config.architecture)
        let storeURL = dir.appendingPathComponent("store")
        // The disk fills at the start, inside the dense tensors, inside the experts, and one byte
        // before the manifest is complete.
        for limit in [0, 1000, total / 2, total - 1] {
            var packer = ExpertStorePacker()
            packer.faults = try plan("enospc_after=\(limit)")
            let message = errorText {
                _ = try packer.pack(checkpoint: source, expertTensorNames: { layer, expert in
                    let n = names.expertTensorNames(layer, expert)
                    return [n.gate, n.up, n.down]
                }, to: storeURL)
            }
            #expect(message?.contains("out of disk space") == true, "limit \(limit): \(message ?? "packed")")
            let left = try FileManager.default.contentsOfDirectory(atPath: dir.path)
            #expect(left == ["hf"], "limit \(limit): left behind \(left)")
            #expect(!ExpertStore.isStore(at: storeURL))
        }
        // With room for everything it packs, and the store verifies.
        var packer = ExpertStorePacker()
        packer.faults = try plan("enospc_after=\(total)")
        _ = try packer.pack(checkpoint: source, expertTensorNames: { layer, expert in
            let n = names.expertTensorNames(layer, expert)
            return [n.gate, n.up, n.down]
        }, to: storeURL)
        #expect(try ExpertStore(url: storeURL).verify().isEmpty)
    }
}
