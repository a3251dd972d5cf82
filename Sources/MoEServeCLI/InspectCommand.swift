import ArgumentParser
import Foundation
import ModelFormats
import MoEModels

/// `moe-serve inspect PATH`: what a checkpoint directory or an expert store holds.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Describe a checkpoint directory or expert store: architecture, sizes, dtype, compression.")

    @Argument(help: "A Hugging Face model directory or an expert store.") var path: String

    struct Output: Encodable {
        var kind: String
        var path: String
        var architecture: String
        var layers: Int
        var moeLayers: Int
        var expertsPerLayer: Int
        var expertsPerToken: Int
        var hiddenSize: Int
        var expertWidth: Int
        var expertDtype: String
        /// One expert's bytes as decoded in RAM.
        var expertBytes: Int
        var routedExpertBytes: Int
        var denseBytes: Int
        // Store only.
        var formatVersion: Int?
        var compression: String?
        var expertsFileBytes: Int?
        var expertStoredBytes: Int?
        /// Decoded bytes / stored bytes (≥ 1 when compression helps).
        var compressionRatio: Double?
        var exponentPlaneRatio: Double?
        var mantissaPlaneRatio: Double?
        var blobsStoredRaw: Int?
        var decompressionGBps: Double?
        /// Compression pays only on disks slower than this: decode GB/s × (1 − stored/raw).
        var breakEvenDiskGBps: Double?
        var directIO: Bool?
        // GGUF files and stores packed from them: tensor group (name without the layer) → ggml type → tensor count.
        var tensorTypes: [String: [String: Int]]?

        enum CodingKeys: String, CodingKey {
            case kind, path, architecture, layers, compression
            case moeLayers = "moe_layers", expertsPerLayer = "experts_per_layer", expertsPerToken = "experts_per_token"
            case hiddenSize = "hidden_size", expertWidth = "expert_width", expertDtype = "expert_dtype"
            case expertBytes = "expert_bytes", routedExpertBytes = "routed_expert_bytes", denseBytes = "dense_bytes"
            case formatVersion = "format_version", expertsFileBytes = "experts_file_bytes", expertStoredBytes = "expert_stored_bytes"
            case compressionRatio = "compression_ratio", exponentPlaneRatio = "exponent_plane_ratio"
            case mantissaPlaneRatio = "mantissa_plane_ratio", blobsStoredRaw = "blobs_stored_raw"
            case decompressionGBps = "decompression_gbps", breakEvenDiskGBps = "break_even_disk_gbps", directIO = "direct_io"
            case tensorTypes = "tensor_types"
        }
    }

    func run() throws {
        try reportingErrors {
            let url = URL(fileURLWithPath: path)
            let output = GGUFModel.isGGUF(at: url) ? try inspectGGUF(url)
                : ExpertStore.isStore(at: url) ? try inspectStore(url) : try inspectCheckpoint(url)
            printError("\(output.kind) \(path): \(output.architecture), \(output.layers) layers (\(output.moeLayers) MoE), \(output.expertsPerLayer) experts/layer, top-\(output.expertsPerToken)")
            printError("  experts: \(output.expertDtype), \(output.expertBytes) bytes each, \(format(output.routedExpertBytes)) routed, \(format(output.denseBytes)) dense")
            if let codec = output.compression, let ratio = output.compressionRatio {
                let planes = codec == "lz4" && output.exponentPlaneRatio != nil
                    ? String(format: " (exponent plane %.3f, mantissa plane %.3f)", output.exponentPlaneRatio ?? 1, output.mantissaPlaneRatio ?? 1) : ""
                printError(String(format: "  compression: %@, ratio %.3f%@, %d of %d blobs stored raw", codec, ratio, planes,
                                  output.blobsStoredRaw ?? 0, output.moeLayers * output.expertsPerLayer))
            }
            if let gbps = output.decompressionGBps {
                printError(String(format: "  decode: %.2f GB/s; compression pays only on disks slower than %.2f GB/s; O_DIRECT: %@",
                                  gbps, output.breakEvenDiskGBps ?? 0, (output.directIO ?? false) ? "yes" : "no (buffered + DONTNEED)"))
            }
            for (group, types) in (output.tensorTypes ?? [:]).sorted(by: { $0.key < $1.key }) {
                printError("  \(group): " + types.sorted(by: { $0.key < $1.key }).map { "\($0.value) \($0.key)" }.joined(separator: ", "))
            }
            try printJSON(output)
        }
    }

    private func format(_ bytes: Int) -> String { String(format: "%.1f MB", Double(bytes) / 1e6) }

    private func inspectCheckpoint(_ url: URL) throws -> Output {
        let checkpoint = try CheckpointDirectory(url: url)
        let config = checkpoint.config
        let names = ArchitectureDescription.of(config.architecture)
        var expertNames = Set<String>()
        var expertBytes = 0, dtype = "none"
        for layer in config.moeLayers {
            for expert in 0..<config.expertCount {
                let n = names.expertTensorNames(layer, expert)
                expertNames.formUnion([n.gate, n.up, n.down])
            }
        }
        if let fused = try FusedExpertReader.of(checkpoint, description: names), let layer = config.moeLayers.first {
            // Experts stored fused per layer (gpt-oss): one expert is a layer's tensors / experts.
            for l in config.moeLayers { expertNames.formUnion(fused.tensorNames(layer: l)) }
            let weights = try fused.expert(layer: layer, expert: 0)
            expertBytes = weights.byteCount
            dtype = fused.isMXFP4(layer: layer) ? "mxfp4" : (try? checkpoint.entry(fused.names(layer).gateUp).0.dtype.rawValue.lowercased()) ?? "none"
        } else if let layer = config.moeLayers.first {
            let n = names.expertTensorNames(layer, 0)
            for name in [n.gate, n.up, n.down] {
                let (entry, _) = try checkpoint.entry(name)
                expertBytes += entry.byteCount
                dtype = entry.dtype.rawValue.lowercased()
            }
        }
        var routed = 0, dense = 0
        for name in checkpoint.tensorNames {
            let bytes = try checkpoint.entry(name).0.byteCount
            if expertNames.contains(name) { routed += bytes } else { dense += bytes }
        }
        return Output(kind: "checkpoint", path: path, architecture: config.architecture.rawValue, layers: config.layerCount,
                      moeLayers: config.moeLayers.count, expertsPerLayer: config.expertCount, expertsPerToken: config.expertsPerToken,
                      hiddenSize: config.hiddenSize, expertWidth: config.expertIntermediateSize, expertDtype: dtype,
                      expertBytes: expertBytes, routedExpertBytes: routed, denseBytes: dense)
    }

    /// A GGUF file: its configuration and the ggml types of each tensor group.
    private func inspectGGUF(_ url: URL) throws -> Output {
        let gguf = try GGUFModel(url: url)
        let config = gguf.config
        var routed = 0, expertTypes = Set<String>()
        for (name, entry) in gguf.tensors where name.contains("_exps.") {
            routed += entry.info.byteCount
            expertTypes.insert(entry.info.type.name)
        }
        let moeCount = config.moeLayers.count * config.expertCount
        var groups: [String: [String: Int]] = [:]
        for group in gguf.typesByGroup() {
            groups[group.group] = Dictionary(uniqueKeysWithValues: group.types.map { ($0.type, $0.count) })
        }
        return Output(kind: "gguf", path: path, architecture: "\(config.architecture.rawValue) (gguf \(gguf.ggufArchitecture))",
                      layers: config.layerCount, moeLayers: config.moeLayers.count, expertsPerLayer: config.expertCount,
                      expertsPerToken: config.expertsPerToken, hiddenSize: config.hiddenSize, expertWidth: config.expertIntermediateSize,
                      expertDtype: expertTypes.sorted().joined(separator: "+"), expertBytes: moeCount > 0 ? routed / moeCount : 0,
                      routedExpertBytes: routed, denseBytes: gguf.denseByteCount, tensorTypes: groups)
    }

    private func inspectStore(_ url: URL) throws -> Output {
        let store = try ExpertStore(url: url)
        let config = store.config
        let blobs = store.manifest.experts.blobs
        let raw = blobs.reduce(0) { $0 + $1.rawLength }
        let stored = blobs.reduce(0) { $0 + $1.storedLength }
        // Per-plane ratios over the compressed blobs (raw blobs count as ratio 1 for their planes).
        var planeRaw = [0, 0], planeStored = [0, 0]
        for blob in blobs {
            if blob.storedRaw {
                let planes = store.layout.dtype == .bf16 ? 2 : 1
                for p in 0..<planes { planeRaw[p] += blob.rawLength / planes; planeStored[p] += blob.rawLength / planes }
            } else {
                for (p, plane) in blob.planes.enumerated() where p < 2 { planeRaw[p] += plane.rawLength; planeStored[p] += plane.storedLength }
            }
        }
        let ratio = Double(raw) / Double(max(stored, 1))
        // ggml stores (packed from GGUF): the types of each expert matrix and dense tensor group.
        var groups: [String: [String: Int]]?
        if store.manifest.experts.dtype == .ggml {
            var byGroup: [String: [String: Int]] = [:]
            for blob in blobs {
                for (matrix, type) in zip(["experts.gate", "experts.up", "experts.down"], blob.ggmlTypes ?? []) { byGroup[matrix, default: [:]][type, default: 0] += 1 }
            }
            for tensor in store.manifest.dense.tensors {
                // model.layers.N.x.y -> layers.*.x.y
                let group = tensor.name.replacingOccurrences(of: #"\.\d+\."#, with: ".*.", options: .regularExpression)
                byGroup[group, default: [:]][tensor.ggmlType ?? tensor.dtype.rawValue, default: 0] += 1
            }
            groups = byGroup // printed per group by the human summary
        }
        let decode = try store.measureDecodeThroughput()
        let isBF16 = store.layout.dtype == .bf16
        return Output(kind: "store", path: path, architecture: config.architecture.rawValue, layers: config.layerCount,
                      moeLayers: config.moeLayers.count, expertsPerLayer: config.expertCount, expertsPerToken: config.expertsPerToken,
                      hiddenSize: config.hiddenSize, expertWidth: config.expertIntermediateSize,
                      expertDtype: store.layout.dtype.rawValue, expertBytes: store.layout.rawLength, routedExpertBytes: raw,
                      denseBytes: store.manifest.dense.fileSize, formatVersion: store.manifest.formatVersion,
                      compression: store.manifest.experts.codec.rawValue, expertsFileBytes: store.manifest.experts.fileSize,
                      expertStoredBytes: stored, compressionRatio: ratio,
                      exponentPlaneRatio: isBF16 ? Double(planeRaw[0]) / Double(max(planeStored[0], 1)) : nil,
                      mantissaPlaneRatio: isBF16 ? Double(planeRaw[1]) / Double(max(planeStored[1], 1)) : nil,
                      blobsStoredRaw: blobs.filter(\.storedRaw).count, decompressionGBps: decode,
                      breakEvenDiskGBps: decode * max(0, 1 - 1 / ratio), directIO: store.expertFile.usesDirectIO, tensorTypes: groups)
    }
}
