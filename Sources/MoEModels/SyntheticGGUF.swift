import Foundation
import ModelFormats
import TensorMath

/// A synthetic multi-head latent attention checkpoint (`synth --shape deepseek-v2-lite
/// --gguf-out FILE.gguf`) written straight to a GGUF file in llama.cpp's `deepseek2` layout,
/// with no bf16 checkpoint on disk and never more than one tensor in memory. The values are
/// those the Hugging Face checkpoint of the same shape and seed holds (the same generator per
/// tensor name), encoded byte for byte as `convert_hf_to_gguf.py --outtype bf16` followed by
/// `llama-quantize --output-tensor-type q4_0 --token-embedding-type q4_0 … Q4_0` encodes them
/// (every tensor's bytes compared by `scripts/gguf/check_synth_gguf.py`):
///
/// - every matrix Q4_0 (ggml's reference encoder, `GGMLReferenceQ4_0`), routed experts stacked
///   per layer and projection (`blk.N.ffn_{gate,up,down}_exps.weight`, ggml `[cols, rows, experts]`),
///   `attn_kv_a_mqa`, `attn_k_b` and `attn_v_b` included (llama-quantize quantises them for
///   deepseek2); `kv_b_proj` split per head as the converter splits it: `attn_k_b` ggml
///   `[nope, kv_lora, heads]` (head h is `W_UK_hᵀ`), `attn_v_b` ggml `[kv_lora, v_head, heads]`
///   (head h is `W_UV_h`);
/// - norms and the router (`ffn_gate_inp`) F32;
/// - the metadata keys and types the converter writes and llama.cpp's `deepseek2` loader reads
///   (`GGUFConfigReader.readDeepseek2` reads them back), and the tokenizer as `tokenizer.ggml.*`.
///
/// `moe-serve pack FILE.gguf STORE` then keeps these blocks bit for bit, so llama.cpp and
/// MoEServe run identical weights.
extension SyntheticCheckpoint {
    /// One GGUF tensor and where its values come from (Hugging Face tensor names).
    struct GGUFPlanEntry {
        enum Source {
            /// One tensor, transposed to ggml order by reading its dimensions backwards.
            case whole(String)
            /// Routed experts' matrices stacked in expert order.
            case stacked([String])
            /// `kv_b_proj`'s key rows per head, transposed (`attn_k_b`).
            case keyUp(String)
            /// `kv_b_proj`'s value rows per head (`attn_v_b`).
            case valueUp(String)
        }
        var tensor: GGUFStreamWriter.Tensor
        var source: Source
    }

    /// `general.file_type` 2: mostly Q4_0.
    static let ggufFileTypeQ4_0: UInt32 = 2

    /// The parsed configuration of this checkpoint.
    func parsedConfig() throws -> ModelConfig {
        try ModelConfig.parse(JSONSerialization.data(withJSONObject: configJSON()), file: "config.json")
    }

    /// The GGUF tensors in file order.
    func ggufPlan() throws -> [GGUFPlanEntry] {
        let config = try parsedConfig()
        guard let latent = config.latentAttention else {
            throw ModelFormatError("--gguf-out writes llama.cpp's deepseek2 layout, for multi-head latent attention shapes only; '\(shape.name)' is not one")
        }
        let heads = config.headCount
        var plan: [GGUFPlanEntry] = []
        var stacks: [String: Int] = [:] // GGUF name → index in plan
        func add(_ name: String, _ dims: [Int], _ type: GGMLType, _ source: GGUFPlanEntry.Source) {
            plan.append(GGUFPlanEntry(tensor: .init(name: name, dims: dims, type: type), source: source))
        }
        for tensor in try tensors() {
            let hf = tensor.name
            let dims = Array(tensor.shape.reversed())
            let matrix: GGMLType = .q4_0
            switch hf {
            case "model.embed_tokens.weight": add("token_embd.weight", dims, matrix, .whole(hf)); continue
            case "lm_head.weight": add("output.weight", dims, matrix, .whole(hf)); continue
            case "model.norm.weight": add("output_norm.weight", dims, .f32, .whole(hf)); continue
            default: break
            }
            let parts = hf.split(separator: ".", maxSplits: 3).map(String.init)
            guard parts.count == 4, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]) else {
                throw ModelFormatError("\(hf): no deepseek2 GGUF name for it")
            }
            let rest = parts[3], blk = "blk.\(layer)"
            let simple: [String: (String, GGMLType)] = [
                "input_layernorm.weight": ("attn_norm", .f32), "post_attention_layernorm.weight": ("ffn_norm", .f32),
                "self_attn.q_proj.weight": ("attn_q", matrix), "self_attn.q_a_proj.weight": ("attn_q_a", matrix),
                "self_attn.q_a_layernorm.weight": ("attn_q_a_norm", .f32), "self_attn.q_b_proj.weight": ("attn_q_b", matrix),
                "self_attn.kv_a_proj_with_mqa.weight": ("attn_kv_a_mqa", matrix), "self_attn.kv_a_layernorm.weight": ("attn_kv_a_norm", .f32),
                "self_attn.o_proj.weight": ("attn_output", matrix),
                "mlp.gate_proj.weight": ("ffn_gate", matrix), "mlp.up_proj.weight": ("ffn_up", matrix), "mlp.down_proj.weight": ("ffn_down", matrix),
                "mlp.gate.weight": ("ffn_gate_inp", .f32),
                "mlp.shared_experts.gate_proj.weight": ("ffn_gate_shexp", matrix),
                "mlp.shared_experts.up_proj.weight": ("ffn_up_shexp", matrix),
                "mlp.shared_experts.down_proj.weight": ("ffn_down_shexp", matrix),
            ]
            if let (name, type) = simple[rest] {
                add("\(blk).\(name).weight", dims, type, .whole(hf))
            } else if rest == "mlp.gate.e_score_correction_bias" {
                add("\(blk).exp_probs_b.bias", dims, .f32, .whole(hf))
            } else if rest == "self_attn.kv_b_proj.weight" {
                add("\(blk).attn_k_b.weight", [latent.noPositionDim, latent.latentRank, heads], matrix, .keyUp(hf))
                add("\(blk).attn_v_b.weight", [latent.latentRank, latent.valueDim, heads], matrix, .valueUp(hf))
            } else if rest.hasPrefix("mlp.experts."), let projection = ["gate", "up", "down"].first(where: { rest.hasSuffix(".\($0)_proj.weight") }) {
                let name = "\(blk).ffn_\(projection)_exps.weight"
                if let index = stacks[name], case .stacked(let names) = plan[index].source {
                    plan[index].source = .stacked(names + [hf])
                    plan[index].tensor.dims[2] += 1
                } else {
                    stacks[name] = plan.count
                    add(name, dims + [1], matrix, .stacked([hf]))
                }
            } else {
                throw ModelFormatError("\(hf): no deepseek2 GGUF name for it")
            }
        }
        return plan
    }

    /// The `deepseek2.*` and `general.*` metadata, as llama.cpp's converter writes them.
    func ggufModelMetadata() throws -> [(key: String, value: GGUFStreamWriter.Value)] {
        let config = try parsedConfig()
        let latent = config.latentAttention!
        let arch = "deepseek2"
        func u32(_ key: String, _ value: Int) -> (key: String, value: GGUFStreamWriter.Value) { ("\(arch).\(key)", .u32(UInt32(value))) }
        func f32(_ key: String, _ value: Double) -> (key: String, value: GGUFStreamWriter.Value) { ("\(arch).\(key)", .f32(Float(value))) }
        var entries: [(key: String, value: GGUFStreamWriter.Value)] = [
            ("general.architecture", .string(arch)),
            ("general.name", .string("synthetic \(shape.name) (seed \(seed))")),
            ("general.file_type", .u32(Self.ggufFileTypeQ4_0)),
            ("general.quantization_version", .u32(2)),
            u32("block_count", config.layerCount),
            u32("context_length", config.maxPositionEmbeddings),
            u32("embedding_length", config.hiddenSize),
            u32("feed_forward_length", config.denseIntermediateSize),
            u32("attention.head_count", config.headCount),
            // MLA runs as multi-query attention over the latent (the converter's note).
            u32("attention.head_count_kv", 1),
            f32("rope.freq_base", config.ropeTheta),
            f32("attention.layer_norm_rms_epsilon", Double(config.rmsNormEps)),
            u32("expert_used_count", config.expertsPerToken),
            u32("expert_count", config.expertCount),
            u32("leading_dense_block_count", config.firstDenseLayers),
            u32("vocab_size", config.vocabSize),
        ]
        if let rank = latent.queryRank { entries.append(u32("attention.q_lora_rank", rank)) }
        entries += [
            u32("attention.kv_lora_rank", latent.latentRank),
            u32("attention.key_length", latent.latentRank + latent.ropeDim),
            u32("attention.value_length", latent.latentRank),
            u32("attention.key_length_mla", latent.queryHeadDim),
            u32("attention.value_length_mla", latent.valueDim),
            u32("expert_feed_forward_length", config.expertIntermediateSize),
            u32("expert_shared_count", config.sharedExpertIntermediateSize / config.expertIntermediateSize),
            f32("expert_weights_scale", Double(config.routedScalingFactor)),
        ]
        if config.normTopKProb { entries.append(("\(arch).expert_weights_norm", .bool(true))) }
        // Sigmoid with the correction bias (DeepSeek-V3, whose config says `scoring_func: sigmoid`);
        // without the key llama.cpp uses DeepSeek-V2's softmax, as the converter leaves it.
        if config.architecture == .deepseekV3 { entries.append(u32("expert_gating_func", 2)) }
        entries += [u32("expert_group_count", config.routerGroups?.groupCount ?? 1),
                    u32("expert_group_used_count", config.routerGroups?.selectedGroups ?? 1)]
        entries.append(u32("rope.dimension_count", latent.ropeDim))
        if config.rope.kind == .yarn, let yarn = config.rope.yarn {
            entries += [
                ("\(arch).rope.scaling.type", .string("yarn")),
                f32("rope.scaling.factor", yarn.factor ?? 1),
                u32("rope.scaling.original_context_length", yarn.originalMaxPositionEmbeddings),
                f32("rope.scaling.yarn_beta_fast", yarn.betaFast),
                f32("rope.scaling.yarn_beta_slow", yarn.betaSlow),
            ]
            // The converter's legacy 0.1 factor, which llama.cpp's deepseek2 loader divides out.
            if let all = yarn.mscaleAllDim { entries.append(f32("rope.scaling.yarn_log_multiplier", 0.1 * all)) }
        }
        return entries
    }

    /// Writes the checkpoint as one GGUF file at `url` (must not exist), its tokenizer from
    /// `tokenizerDirectory`'s `tokenizer.json` / `tokenizer_config.json`.
    public func writeGGUF(to url: URL, tokenizerDirectory: URL, progress: ((Progress) -> Void)? = nil) throws {
        guard !FileManager.default.fileExists(atPath: url.path) else { throw ModelFormatError.file(url.path, "already exists") }
        let plan = try ggufPlan()
        var metadata = try ggufModelMetadata()
        let tokenizer = try GGUFTokenizerMetadata.entries(directory: tokenizerDirectory, vocabSize: vocabSize)
        metadata += tokenizer
        if let eosTokenId, !tokenizer.contains(where: { $0.key == "tokenizer.ggml.eos_token_id" }) {
            metadata.append(("tokenizer.ggml.eos_token_id", .u32(UInt32(eosTokenId))))
        }
        let shapes = Dictionary(try tensors().map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let writer = try GGUFStreamWriter(url: url, metadata: metadata, tensors: plan.map(\.tensor))
        do {
            let total = plan.reduce(0) { $0 + $1.tensor.byteCount }
            let start = DispatchTime.now().uptimeNanoseconds
            var done = 0, lastReport = 0.0
            func report(force: Bool = false) {
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                guard force || seconds - lastReport >= 1 else { return }
                lastReport = seconds
                progress?(Progress(bytesDone: done, bytesTotal: total, seconds: seconds))
            }
            func values(_ name: String) -> [UInt16] { bf16Values(of: shapes[name]!) }
            func emit(_ bf16: [UInt16], as type: GGMLType) throws {
                let encoded = Self.encode(bf16, as: type)
                try encoded.withUnsafeBytes { try writer.append($0) }
                done += encoded.count
                report()
            }
            for entry in plan {
                switch entry.source {
                case .whole(let name): try emit(values(name), as: entry.tensor.type)
                case .stacked(let names): for name in names { try emit(values(name), as: entry.tensor.type) }
                case .keyUp(let name), .valueUp(let name):
                    // kv_b_proj [heads·(nope + v), rank]: per head, nope key rows then v value rows.
                    let d = entry.tensor.dims, kvB = values(name)
                    let isKey: Bool = { if case .keyUp = entry.source { return true } else { return false } }()
                    let (nope, rank, heads) = isKey ? (d[0], d[1], d[2]) : (0, d[0], d[2])
                    let v = isKey ? 0 : d[1]
                    let perHead = shapes[name]!.shape[0] / heads
                    var out = [UInt16](repeating: 0, count: d.reduce(1, *))
                    for h in 0..<heads {
                        if isKey {
                            // ggml [nope, rank, heads]: element (n, r, h) = kv_b[h·perHead + n][r].
                            for r in 0..<rank { for n in 0..<nope { out[n + nope * (r + rank * h)] = kvB[(h * perHead + n) * rank + r] } }
                        } else {
                            // ggml [rank, v, heads]: element (r, j, h) = kv_b[h·perHead + (perHead − v) + j][r].
                            for j in 0..<v { for r in 0..<rank { out[r + rank * (j + v * h)] = kvB[(h * perHead + perHead - v + j) * rank + r] } }
                        }
                    }
                    try emit(out, as: entry.tensor.type)
                }
            }
            try writer.finish()
            report(force: true)
        } catch {
            try? FileManager.default.removeItem(at: url)
            throw error
        }
    }

    /// The bf16 values of Hugging Face tensor `tensor`, as `write(to:)` writes them (its 8 MiB
    /// pieces are whole multiples of the generator's four values per step, so one piece gives
    /// the same sequence).
    func bf16Values(of tensor: SafetensorsStreamWriter.Tensor) -> [UInt16] {
        var generator = UniformBF16Generator(seed: seed, tensorName: tensor.name, constant: Self.isConstantOne(tensor) ? 1.0 : nil,
                                             standardDeviation: Self.standardDeviation(of: tensor.name))
        var out = [UInt16](repeating: 0, count: tensor.shape.reduce(1, *))
        out.withUnsafeMutableBytes { generator.fill($0) }
        return out
    }

    /// bf16 values re-encoded as `type` (F32 widened, BF16 as they are, Q4_0 by ggml's
    /// reference encoder).
    static func encode(_ bf16: [UInt16], as type: GGMLType) -> [UInt8] {
        switch type {
        case .bf16: return bf16.withUnsafeBytes { Array($0) }
        case .f32:
            return bf16.map { FloatConversion.float(fromBF16: $0) }.withUnsafeBytes { Array($0) }
        default:
            precondition(type == .q4_0, "synthetic GGUF tensors are F32, BF16 or Q4_0")
            var out = [UInt8](repeating: 0, count: bf16.count / 32 * 18)
            let chunk = 32 * 1024
            var scratch = [Float](repeating: 0, count: chunk)
            out.withUnsafeMutableBytes { out in
                bf16.withUnsafeBufferPointer { source in
                    scratch.withUnsafeMutableBufferPointer { scratch in
                        var i = 0
                        while i < source.count {
                            let n = min(chunk, source.count - i)
                            for j in 0..<n { scratch[j] = FloatConversion.float(fromBF16: source[i + j]) }
                            GGMLReferenceQ4_0.encode(scratch.baseAddress!, count: n, into: out.baseAddress! + i / 32 * 18)
                            i += n
                        }
                    }
                }
            }
            return out
        }
    }
}
