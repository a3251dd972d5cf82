import CKernels
import Foundation
import Testing
import ModelFormats
import MoEModels
import TensorMath

/// Packs a checkpoint with the architecture's expert names.
@discardableResult
func pack(_ checkpoint: URL, to store: URL, dtype: ExpertDType = .bf16, codec: ExpertCodec = .none,
          failAfterBlobs: Int? = nil) throws -> ExpertStorePacker.Summary {
    let source = try CheckpointDirectory(url: checkpoint)
    let names = ArchitectureDescription.of(source.config.architecture)
    var packer = ExpertStorePacker()
    packer.dtype = dtype
    packer.codec = codec
    packer.failAfterBlobs = failAfterBlobs
    return try packer.pack(checkpoint: source, expertTensorNames: { layer, expert in
        let n = names.expertTensorNames(layer, expert)
        return [n.gate, n.up, n.down]
    }, to: store)
}

/// Logits of every position of a prompt, then of two single-token decode steps (the
/// multi-row sgemm path and the one-row gemv path both run).
func logits(_ model: TransformerModel) throws -> [Float] {
    let cache = model.makeCache()
    var all = try model.forward([SequenceInput(cache: cache, tokens: [1, 5, 9, 14, 33, 60, 7], allLogits: true)])[0]
    all += try model.forward([SequenceInput(cache: cache, tokens: [42])])[0]
    all += try model.forward([SequenceInput(cache: cache, tokens: [3])])[0]
    return all
}

/// Flips one byte of `file` at `offset`.
func flipByte(_ file: URL, at offset: Int) throws {
    let handle = try FileHandle(forUpdating: file)
    defer { try? handle.close() }
    try handle.seek(toOffset: UInt64(offset))
    let byte = try handle.read(upToCount: 1)![0]
    try handle.seek(toOffset: UInt64(offset))
    try handle.write(contentsOf: Data([byte ^ 0x10]))
}

func errorText(_ body: () throws -> Void) -> String? {
    do { try body(); return nil } catch { return "\(error)" }
}

@Suite struct ExpertStoreRoundTripTests {
    @Test(arguments: [(TinyCheckpoint.Kind.mixtral, TensorDType.bf16, ExpertDType.bf16, ExpertCodec.none),
                      (.mixtral, .f32, .f32, .none),
                      (.qwen2Moe, .bf16, .bf16, .none),
                      (.qwen2Moe, .f32, .f32, .none),
                      (.mixtral, .bf16, .bf16, .lz4),
                      (.qwen2Moe, .bf16, .bf16, .lz4),
                      (.qwen2Moe, .f32, .f32, .lz4),
                      (.mixtral, .bf16, .f32, .none)])
    func logitsMatchCheckpointBitForBit(kind: TinyCheckpoint.Kind, source: TensorDType, dtype: ExpertDType, codec: ExpertCodec) throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(kind, dtype: source, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        try pack(hf, to: storeURL, dtype: dtype, codec: codec)

        let store = try ExpertStore(url: storeURL)
        #expect(store.verify().isEmpty)
        #expect(FileManager.default.fileExists(atPath: storeURL.appendingPathComponent("tokenizer.json").path))
        #expect(FileManager.default.fileExists(atPath: storeURL.appendingPathComponent("config.json").path))
        for blob in store.manifest.experts.blobs { #expect(blob.offset % 4096 == 0) }
        for tensor in store.manifest.dense.tensors { #expect(tensor.offset % 64 == 0) }

        let expected = try logits(ModelLoader.loadCheckpoint(at: hf))
        let actual = try logits(ModelLoader.load(at: storeURL))
        if source == .bf16 && dtype == .f32 {
            // Widened bf16 runs through the f32 kernels: equal up to float summation order.
            let scale = expected.map(abs).max()!
            #expect(zip(expected, actual).allSatisfy { abs($0 - $1) <= 1e-4 * scale })
        } else {
            #expect(expected.map(\.bitPattern) == actual.map(\.bitPattern))
        }
    }

    @Test func lz4CompressesTheExponentPlaneOfBF16() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let summary = try pack(hf, to: dir.appendingPathComponent("store"), dtype: .bf16, codec: .lz4)
        let blobs = summary.manifest.experts.blobs
        #expect(summary.expertStoredBytes < summary.expertRawBytes)
        for blob in blobs where !blob.storedRaw {
            #expect(blob.planes.count == 2)
            #expect(!blob.planes[0].storedRaw)  // sign/exponent bytes compress
            #expect(blob.planes[1].storedRaw)   // mantissa bytes are noise: stored raw
        }
    }

    @Test(arguments: [ExpertDType.int8, .q4])
    func quantisedStoresStayWithinTheirBound(dtype: ExpertDType) throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.qwen2Moe, dtype: .f32, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        try pack(hf, to: storeURL, dtype: dtype, codec: .lz4)
        let store = try ExpertStore(url: storeURL)
        #expect(store.verify().isEmpty)

        // Every expert weight within the per-element bound documented in docs/STORE.md.
        let checkpoint = try CheckpointDirectory(url: hf)
        let names = ArchitectureDescription.of(checkpoint.config.architecture)
        for layer in checkpoint.config.moeLayers {
            for expert in 0..<checkpoint.config.expertCount {
                let stored = try store.readExpert(layer: layer, expert: expert)
                let n = names.expertTensorNames(layer, expert)
                for (name, matrix) in [(n.gate, stored.gate), (n.up, stored.up), (n.down, stored.down)] {
                    let original = try checkpoint.matrix(name, rows: matrix.rows, cols: matrix.cols)
                    for r in 0..<matrix.rows {
                        let a = original.row(r), b = matrix.row(r)
                        for start in stride(from: 0, to: a.count, by: dtype == .q4 ? 32 : a.count) {
                            let group = start..<min(a.count, start + (dtype == .q4 ? 32 : a.count))
                            let maximum = group.map { abs(a[$0]) }.max()!
                            let bound = maximum / (dtype == .q4 ? 14 : 254) * 1.0001 + 1e-7
                            #expect(group.allSatisfy { abs(a[$0] - b[$0]) <= bound })
                        }
                    }
                }
            }
        }

        // Whole-model effect: relative RMS error of the logits (measured, bound in docs/STORE.md).
        let expected = try logits(ModelLoader.loadCheckpoint(at: hf))
        let actual = try logits(ModelLoader.load(at: storeURL))
        let rms = { (v: [Float]) in (v.reduce(0) { $0 + $1 * $1 } / Float(v.count)).squareRoot() }
        let relative = rms(zip(expected, actual).map { $0 - $1 }) / rms(expected)
        print("\(dtype) store: relative logit RMS error \(relative)")
        #expect(relative < (dtype == .int8 ? 0.01 : 0.1), "relative logit RMS error \(relative)")
    }
}

@Suite struct ExpertStoreDamageTests {
    @Test func flippedByteIsCaughtByVerifyAndAtRunTime() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        try pack(hf, to: storeURL, codec: .lz4)
        let manifest = try ExpertStoreManifest.load(from: storeURL)
        let target = manifest.experts.blobs.first { $0.layer == 1 && $0.expert == 2 }!
        try flipByte(storeURL.appendingPathComponent("experts.bin"), at: target.offset + target.storedLength / 2)

        let store = try ExpertStore(url: storeURL)
        let problems = store.verify()
        #expect(problems.count == 1)
        #expect(problems.first?.contains("layer 1 expert 2") == true)

        let message = errorText { _ = try store.readExpert(layer: 1, expert: 2) }
        #expect(message?.contains("layer 1 expert 2") == true)
        #expect(message?.contains("checksum mismatch") == true)
        #expect(store.statistics.checksumFailures == 1)
        // The other experts still read.
        _ = try store.readExpert(layer: 1, expert: 1)

        // Through the model: the step that needs the expert fails; nothing crashes.
        let provider = StoreExpertProvider(store: store)
        let viaProvider = errorText { try provider.withExperts(layer: 1, experts: [0, 2]) { _, _ in } }
        #expect(viaProvider?.contains("layer 1 expert 2") == true)
    }

    @Test func corruptedExpertFailsTheForwardPass() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        try pack(hf, to: storeURL)
        // Corrupt every expert of layer 0 so that any routing hits one.
        for blob in try ExpertStoreManifest.load(from: storeURL).experts.blobs where blob.layer == 0 {
            try flipByte(storeURL.appendingPathComponent("experts.bin"), at: blob.offset + 100)
        }
        let model = try ModelLoader.load(at: storeURL)
        let message = errorText { _ = try model.forward([SequenceInput(cache: model.makeCache(), tokens: [1, 2, 3])]) }
        #expect(message?.contains("layer 0 expert") == true)
    }

    @Test func truncatedExpertsFileNamesTheLostExperts() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        try pack(hf, to: storeURL)
        let manifest = try ExpertStoreManifest.load(from: storeURL)
        let last = manifest.experts.blobs.last!
        truncate(storeURL.appendingPathComponent("experts.bin").path, off_t(last.offset + 10))
        let message = errorText { _ = try ExpertStore(url: storeURL) }
        #expect(message?.contains("truncated") == true)
        #expect(message?.contains("layer \(last.layer) expert \(last.expert)") == true)
    }

    @Test func damagedManifestAndNewerVersionGiveClearErrors() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        try pack(hf, to: storeURL)
        let manifestURL = storeURL.appendingPathComponent("manifest.json")
        let original = try Data(contentsOf: manifestURL)

        try original.prefix(original.count / 2).write(to: manifestURL)
        #expect(errorText { _ = try ExpertStore(url: storeURL) }?.contains("damaged store manifest") == true)

        let text = String(decoding: original, as: UTF8.self)
        try Data(text.replacingOccurrences(of: "\"format_version\" : 5", with: "\"format_version\" : 99").utf8).write(to: manifestURL)
        let newer = errorText { _ = try ExpertStore(url: storeURL) }
        #expect(newer?.contains("newer") == true, "\(newer ?? "no error")")

        try Data(text.replacingOccurrences(of: "\"stored_length\"", with: "\"stored_len\"").utf8).write(to: manifestURL)
        #expect(errorText { _ = try ExpertStore(url: storeURL) }?.contains("damaged store manifest") == true)
    }

    @Test func failedPackLeavesNothingBehind() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        #expect(throws: (any Error).self) { try pack(hf, to: storeURL, failAfterBlobs: 3) }
        let left = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        #expect(left == ["hf"], "left behind: \(left)")
        #expect(!ExpertStore.isStore(at: storeURL))

        // An existing destination is refused and left untouched.
        try pack(hf, to: storeURL)
        let message = errorText { try pack(hf, to: storeURL) }
        #expect(message?.contains("already exists") == true)
        #expect(try ExpertStore(url: storeURL).verify().isEmpty)
    }
}

@Suite struct XXHash64Tests {
    @Test func knownDigests() {
        func digest(_ text: String) -> UInt64 { Array(text.utf8).withUnsafeBytes { XXHash64.hash($0) } }
        #expect(digest("") == 0xEF46_DB37_51D8_E999)
        #expect(digest("abc") == 0x44BC_2CF5_AD77_0999)
        #expect(digest("Nobody inspects the spammish repetition") == 0xFBCE_A83C_8A37_8BF1)
    }

    /// Inputs of many 32-byte stripes and a tail, against Python's `xxhash` package
    /// (`xxhash.xxh64(bytes((i * 131 + 7) % 251 for i in range(n))).intdigest()`).
    @Test func longInputsMatchTheReference() {
        func pattern(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(($0 * 131 + 7) % 251) } }
        #expect(pattern(1000).withUnsafeBytes { XXHash64.hash($0) } == 0xE046_69F6_18D1_3C00)
        #expect(pattern(4096 + 77).withUnsafeBytes { XXHash64.hash($0) } == 0x9BD3_C1BA_7817_4112)
    }
}

/// CRC-32C, the checksum of stores packed since session 33 (`StoreChecksum`): against a bitwise
/// reference in Python (`c = 0xFFFFFFFF; for b in data: c ^= b; 8 × c = (c >> 1) ^ (0x82F63B78 if
/// c & 1 else 0); return c ^ 0xFFFFFFFF`), on lengths that run the three-stream path (3 × 16 KiB
/// steps, joined) and its tail; the hardware and table paths agree on every length and alignment.
@Suite struct CRC32CTests {
    static func pattern(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(($0 * 131 + 7) % 251) } }

    @Test func knownDigests() {
        #expect(Array("123456789".utf8).withUnsafeBytes { moe_crc32c(0, $0.baseAddress, $0.count) } == 0xE306_9283)
        for (count, want) in [(0, 0x0), (1000, 0x2440_904D), (4096 + 77, 0xAB4C_D717), (3 * 16384, 0x4C4A_2582),
                              (2 * 3 * 16384 + 77, 0x865A_7614), (300_000, 0x999C_6AA2)] as [(Int, UInt32)] {
            #expect(Self.pattern(count).withUnsafeBytes { moe_crc32c(0, $0.baseAddress, $0.count) } == want, "\(count) bytes")
        }
        #expect(StoreChecksum.crc32c.digest(Array("123456789".utf8).withUnsafeBytes { $0 }) == "e3069283")
    }

    @Test func hardwareAndTableAgreeAndContinue() {
        let bytes = Self.pattern(200_000)
        bytes.withUnsafeBytes { all in
            let base = all.baseAddress!
            for start in [0, 1, 3, 8] {
                for count in [0, 1, 7, 8, 9, 3 * 16384 - 1, 3 * 16384, 3 * 16384 + 1, 100_001, 200_000 - start] where start + count <= all.count {
                    #expect(moe_crc32c(0, base + start, count) == moe_crc32c_portable(0, base + start, count), "start \(start) count \(count)")
                }
            }
            // Continuing from a CRC gives the CRC of the whole.
            let whole = moe_crc32c(0, base, 150_000)
            #expect(moe_crc32c(moe_crc32c(0, base, 60_000), base + 60_000, 90_000) == whole)
        }
    }

    /// Stores name their algorithm; none named is XXH64 (stores before session 33); an unknown
    /// one is refused with the names this build knows.
    @Test func theManifestNamesTheAlgorithm() throws {
        #expect(try StoreChecksum(manifestName: nil) == .xxh64)
        #expect(try StoreChecksum(manifestName: "crc32c") == .crc32c)
        let message = errorText { _ = try StoreChecksum(manifestName: "sha1") }
        #expect(message?.contains("unknown checksum algorithm 'sha1'") == true && message?.contains("crc32c") == true, "\(message ?? "no error")")
        let text = Array("abc".utf8)
        #expect(text.withUnsafeBytes { StoreChecksum.xxh64.digest($0) } == XXHash64.hex(0x44BC_2CF5_AD77_0999))
        #expect(StoreChecksum.packDefault == .crc32c)
    }

    /// A store packed now checks with CRC-32C (format 5); the same store relabelled as XXH64 with
    /// XXH64 digests (what a store before session 33 is) still loads, reads and verifies.
    @Test func storesOfEitherAlgorithmLoadAndVerify() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        try pack(hf, to: storeURL)
        let store = try ExpertStore(url: storeURL)
        #expect(store.checksum == .crc32c && store.manifest.checksumAlgorithm == "crc32c" && store.manifest.formatVersion == 5)
        #expect(store.verify().isEmpty)
        let want = try store.readExpert(layer: 1, expert: 2)

        var old = store.manifest
        old.checksumAlgorithm = nil
        old.formatVersion = 1
        let experts = try Data(contentsOf: storeURL.appendingPathComponent("experts.bin"))
        let dense = try Data(contentsOf: storeURL.appendingPathComponent("dense.bin"))
        old.experts.blobs = old.experts.blobs.map { blob in
            var blob = blob
            blob.checksum = experts.withUnsafeBytes { XXHash64.hex(XXHash64.hash($0.baseAddress! + blob.offset, count: blob.storedLength)) }
            return blob
        }
        old.dense.tensors = old.dense.tensors.map { tensor in
            var tensor = tensor
            tensor.checksum = dense.withUnsafeBytes { XXHash64.hex(XXHash64.hash($0.baseAddress! + tensor.offset, count: tensor.length)) }
            return tensor
        }
        try old.encoded().write(to: storeURL.appendingPathComponent("manifest.json"))
        let reopened = try ExpertStore(url: storeURL)
        #expect(reopened.checksum == .xxh64 && reopened.verify().isEmpty)
        let got = try reopened.readExpert(layer: 1, expert: 2)
        #expect((0..<got.down.rows).allSatisfy { got.down.row($0) == want.down.row($0) })
    }
}

@Suite struct ExpertStoreConcurrencyTests {
    @Test func readsFromManyThreadsAgreeWithOneThread() throws {
        let dir = try TinyCheckpoint.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let hf = try TinyCheckpoint.write(.mixtral, dtype: .bf16, in: dir)
        let storeURL = dir.appendingPathComponent("store")
        try pack(hf, to: storeURL, codec: .lz4)
        let store = try ExpertStore(url: storeURL)
        let blobs = store.manifest.experts.blobs
        let reference = try blobs.map { try store.readExpert(layer: $0.layer, expert: $0.expert).down.row(3) }
        let lock = NSLock()
        nonisolated(unsafe) var mismatches = 0
        DispatchQueue.concurrentPerform(iterations: 64) { i in
            let blob = blobs[i % blobs.count]
            let row = (try? store.readExpert(layer: blob.layer, expert: blob.expert).down.row(3)) ?? []
            if row != reference[i % blobs.count] { lock.lock(); mismatches += 1; lock.unlock() }
        }
        #expect(mismatches == 0)
        #expect(store.statistics.reads == blobs.count + 64)
    }
}
