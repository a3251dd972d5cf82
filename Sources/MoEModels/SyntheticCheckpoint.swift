import Foundation
import ModelFormats
import TensorMath

/// A random-weight checkpoint of a realistic shape, written as a Hugging Face directory
/// (sharded bf16 safetensors, `config.json`, and a tokenizer copied from elsewhere). Random
/// weights route almost uniformly: such a model measures I/O and compute, never hit rates of
/// learned routing. Weights are uniform with standard deviation 0.02 (the `initializer_range`
/// of the published configurations; embeddings 1.0, see `standardDeviation(of:)`), norms are one; every tensor's values come from its own
/// generator seeded by (seed, tensor name), so a checkpoint is reproducible byte for byte.
public struct SyntheticCheckpoint: Sendable {
    /// A named shape.
    public struct Shape: Sendable {
        public var name: String
        public var summary: String
        /// The `config.json` body, before `vocab_size` and token ids are filled in.
        public var config: [String: Any] { configBuilder() }
        fileprivate let configBuilder: @Sendable () -> [String: Any]
    }

    /// Shapes `moe-serve synth --shape` knows.
    public static let shapes: [Shape] = [
        Shape(name: "olmoe-1b-7b", summary: "OLMoE-1B-7B: 16 layers, 64 experts top-8, hidden 2048, expert width 1024 (12.9 GB of bf16 experts)") {
            olmoe(layers: 16, hidden: 2048, width: 1024, heads: 16, experts: 64, topK: 8)
        },
        Shape(name: "mixtral-scaled", summary: "Mixtral-8x7B halved: 16 layers, 8 experts top-2, hidden 2048, expert width 7168, GQA 16/4 (11.3 GB of bf16 experts)") {
            [
                "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "hidden_size": 2048, "intermediate_size": 7168, "num_hidden_layers": 16,
                "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128,
                "num_local_experts": 8, "num_experts_per_tok": 2,
                "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
                "hidden_act": "silu", "tie_word_embeddings": false, "sliding_window": NSNull(),
                "torch_dtype": "bfloat16", "initializer_range": 0.02,
            ]
        },
        Shape(name: "deepseek-v2-lite", summary: "DeepSeek-V2-Lite: 27 layers (first dense), 64 experts top-6 + 2 shared, MLA (kv_lora_rank 512), hidden 2048, expert width 1408 (15.7B parameters, 28.8 GB of bf16 routed experts)") {
            [
                "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
                "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
                "num_attention_heads": 16, "num_key_value_heads": 16, "n_routed_experts": 64, "n_shared_experts": 2,
                "num_experts_per_tok": 6, "first_k_dense_replace": 1, "moe_layer_freq": 1, "kv_lora_rank": 512,
                "q_lora_rank": NSNull(), "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
                "routed_scaling_factor": 1.0, "topk_method": "greedy", "n_group": 1, "topk_group": 1, "norm_topk_prob": false,
                "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                "rope_scaling": ["type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                                 "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096],
                "hidden_act": "silu", "tie_word_embeddings": false, "attention_bias": false,
                "torch_dtype": "bfloat16", "initializer_range": 0.02,
            ]
        },
        Shape(name: "deepseek-v2-lite-tiny", summary: "DeepSeek-V2-Lite's structure at test size: 27 layers (first dense), 8 experts top-2 + 2 shared, MLA (kv_lora_rank 64, no q_lora), hidden 128, expert width 64 (9.5M parameters; 27 layers because llama.cpp reads a null q_lora_rank only for 26/27-layer deepseek2 models)") {
            [
                "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
                "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 64, "num_hidden_layers": 27,
                "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 8, "n_shared_experts": 2,
                "num_experts_per_tok": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1, "kv_lora_rank": 64,
                "q_lora_rank": NSNull(), "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
                "routed_scaling_factor": 1.0, "topk_method": "greedy", "n_group": 1, "topk_group": 1, "norm_topk_prob": false,
                "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                "rope_scaling": ["type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                                 "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096],
                "hidden_act": "silu", "tie_word_embeddings": false, "attention_bias": false,
                "torch_dtype": "bfloat16", "initializer_range": 0.02,
            ]
        },
        Shape(name: "gpt-oss-20b", summary: "gpt-oss-20b: 24 layers alternating sliding (128) / full attention with sinks, 64 heads / 8 KV of 64, 32 experts top-4, hidden 2880, expert width 2880, experts in MXFP4 as published (10.15 GB of experts)") {
            // The published openai/gpt-oss-20b config.json (vocabulary from --tokenizer-from).
            [
                "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
                "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
                "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
                "num_local_experts": 32, "num_experts_per_tok": 4, "experts_per_token": 4,
                "layer_types": (0..<24).map { $0 % 2 == 0 ? "sliding_attention" : "full_attention" },
                "sliding_window": 128, "attention_bias": true, "attention_dropout": 0.0,
                "max_position_embeddings": 131072, "initial_context_length": 4096, "rms_norm_eps": 1e-5,
                "rope_theta": 150000.0,
                "rope_scaling": ["rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                 "original_max_position_embeddings": 4096, "truncate": false],
                "swiglu_limit": 7.0, "hidden_act": "silu", "tie_word_embeddings": false,
                "router_aux_loss_coef": 0.9, "output_router_logits": false,
                "quantization_config": ["quant_method": "mxfp4", "modules_to_not_convert": [
                    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]],
                "torch_dtype": "bfloat16", "initializer_range": 0.02,
            ]
        },
        Shape(name: "olmoe-small", summary: "OLMoE-shaped, small enough for tests: 8 layers, 32 experts top-4, hidden 256, expert width 256 (100 MB of bf16 experts)") {
            olmoe(layers: 8, hidden: 256, width: 256, heads: 4, experts: 32, topK: 4)
        },
    ]

    private static func olmoe(layers: Int, hidden: Int, width: Int, heads: Int, experts: Int, topK: Int) -> [String: Any] {
        [
            "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
            "hidden_size": hidden, "intermediate_size": width, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": heads,
            "num_experts": experts, "num_experts_per_tok": topK, "norm_topk_prob": false,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "hidden_act": "silu", "tie_word_embeddings": false, "clip_qkv": NSNull(),
            "attention_bias": false, "torch_dtype": "bfloat16", "initializer_range": 0.02,
        ]
    }

    /// Progress of a write.
    public struct Progress: Sendable {
        public var bytesDone: Int
        public var bytesTotal: Int
        public var seconds: Double
    }

    public var shape: Shape
    public var seed: UInt64
    public var vocabSize: Int
    /// Shards are cut at tensor boundaries once they reach this size.
    public var shardBytes = 2 << 30
    public var eosTokenId: Int?

    public init(shape: Shape, seed: UInt64, vocabSize: Int, eosTokenId: Int?) {
        self.shape = shape
        self.seed = seed
        self.vocabSize = vocabSize
        self.eosTokenId = eosTokenId
    }

    /// The complete `config.json`.
    public func configJSON() -> [String: Any] {
        var config = shape.config
        config["vocab_size"] = vocabSize
        config["bos_token_id"] = NSNull()
        config["eos_token_id"] = eosTokenId.map { $0 as Any } ?? NSNull()
        config["synthetic"] = ["shape": shape.name, "seed": seed, "weights": "uniform, std 0.02 (embeddings 1.0); norms 1"]
        return config
    }

    /// Every tensor, in file order (dense weights of each layer, then its experts), with the
    /// value of a norm (ones) or nil for a random matrix.
    public func tensors() throws -> [SafetensorsStreamWriter.Tensor] {
        let data = try JSONSerialization.data(withJSONObject: configJSON())
        let config = try ModelConfig.parse(data, file: "config.json")
        let names = ArchitectureDescription.of(config.architecture)
        let hidden = config.hiddenSize
        let qWidth = config.headCount * config.headDim
        let kvWidth = config.kvHeadCount * config.headDim
        func t(_ name: String, _ shape: [Int]) -> SafetensorsStreamWriter.Tensor { .init(name: name, dtype: .bf16, shape: shape) }
        var list = [t("model.embed_tokens.weight", [config.vocabSize, hidden])]
        for layer in 0..<config.layerCount {
            let attention = names.attentionPrefix(layer)
            if let latent = config.latentAttention {
                list += latentLayerTensors(layer: layer, config: config, latent: latent, names: names, t)
                continue
            }
            if let fused = names.fusedExperts?(layer) {
                list += fusedLayerTensors(layer: layer, config: config, fused: fused, names: names, t)
                continue
            }
            list += [
                t("model.layers.\(layer).input_layernorm.weight", [hidden]),
                t("\(attention).q_proj.weight", [qWidth, hidden]),
                t("\(attention).k_proj.weight", [kvWidth, hidden]),
                t("\(attention).v_proj.weight", [kvWidth, hidden]),
                t("\(attention).o_proj.weight", [hidden, qWidth]),
                t("model.layers.\(layer).post_attention_layernorm.weight", [hidden]),
                t(names.routerName(layer), [config.expertCount, hidden]),
            ]
            switch names.attention(config).qkNormalization {
            case .none: break
            case .perHead: list += [t("\(attention).q_norm.weight", [config.headDim]), t("\(attention).k_norm.weight", [config.headDim])]
            case .wholeProjection: list += [t("\(attention).q_norm.weight", [qWidth]), t("\(attention).k_norm.weight", [kvWidth])]
            }
            for expert in 0..<config.expertCount {
                let n = names.expertTensorNames(layer, expert)
                let width = config.expertIntermediateSize
                list += [t(n.gate, [width, hidden]), t(n.up, [width, hidden]), t(n.down, [hidden, width])]
            }
        }
        list += [t("model.norm.weight", [hidden]), t("lm_head.weight", [config.vocabSize, hidden])]
        return list
    }

    /// One layer of a multi-head latent attention model (DeepSeek): MLA projections, then a dense
    /// MLP or the router, shared experts and routed experts.
    private func latentLayerTensors(layer: Int, config: ModelConfig, latent: LatentAttentionConfig,
                                    names: ArchitectureDescription,
                                    _ t: (String, [Int]) -> SafetensorsStreamWriter.Tensor) -> [SafetensorsStreamWriter.Tensor] {
        let hidden = config.hiddenSize, heads = config.headCount
        let attention = names.attentionPrefix(layer)
        var list = [t("model.layers.\(layer).input_layernorm.weight", [hidden])]
        if let rank = latent.queryRank {
            list += [t("\(attention).q_a_proj.weight", [rank, hidden]), t("\(attention).q_a_layernorm.weight", [rank]),
                     t("\(attention).q_b_proj.weight", [heads * latent.queryHeadDim, rank])]
        } else {
            list.append(t("\(attention).q_proj.weight", [heads * latent.queryHeadDim, hidden]))
        }
        list += [
            t("\(attention).kv_a_proj_with_mqa.weight", [latent.cachedValuesPerToken, hidden]),
            t("\(attention).kv_a_layernorm.weight", [latent.latentRank]),
            t("\(attention).kv_b_proj.weight", [heads * (latent.noPositionDim + latent.valueDim), latent.latentRank]),
            t("\(attention).o_proj.weight", [hidden, heads * latent.valueDim]),
            t("model.layers.\(layer).post_attention_layernorm.weight", [hidden]),
        ]
        func mlp(_ prefix: String, _ width: Int) -> [SafetensorsStreamWriter.Tensor] {
            [t("\(prefix).gate_proj.weight", [width, hidden]), t("\(prefix).up_proj.weight", [width, hidden]),
             t("\(prefix).down_proj.weight", [hidden, width])]
        }
        guard config.isMoELayer(layer) else {
            return list + mlp(names.feedForwardPrefix(layer), config.denseIntermediateSize)
        }
        list.append(t(names.routerName(layer), [config.expertCount, hidden]))
        if let bias = names.correctionBiasName(layer) { list.append(t(bias, [config.expertCount])) } // ones: no preference
        if let shared = names.sharedExpert(config, layer) { list += mlp(shared.prefix, shared.width) }
        for expert in 0..<config.expertCount {
            let n = names.expertTensorNames(layer, expert)
            let width = config.expertIntermediateSize
            list += [t(n.gate, [width, hidden]), t(n.up, [width, hidden]), t(n.down, [hidden, width])]
        }
        return list
    }

    /// One layer of a model whose experts are stored fused (gpt-oss), as the published checkpoint
    /// stores them: attention with q/k/v/o biases and a sink logit per head, the router with its
    /// bias, and each layer's experts in MXFP4 (`gate_up_proj_blocks` `[E, 2·width, hidden/32, 16]`
    /// and `_scales` `[E, 2·width, hidden/32]`, rows interleaving gate and up; `down_proj_blocks`
    /// `[E, hidden, width/32, 16]` and `_scales`) beside bf16 biases. Blocks before their scales:
    /// llama.cpp's converter pairs them in file order.
    private func fusedLayerTensors(layer: Int, config: ModelConfig, fused: FusedExpertNames,
                                   names: ArchitectureDescription,
                                   _ t: (String, [Int]) -> SafetensorsStreamWriter.Tensor) -> [SafetensorsStreamWriter.Tensor] {
        let hidden = config.hiddenSize, width = config.expertIntermediateSize, experts = config.expertCount
        let qWidth = config.headCount * config.headDim, kvWidth = config.kvHeadCount * config.headDim
        let attention = names.attentionPrefix(layer)
        func u8(_ name: String, _ shape: [Int]) -> SafetensorsStreamWriter.Tensor { .init(name: name, dtype: .u8, shape: shape) }
        var list = [
            t("model.layers.\(layer).input_layernorm.weight", [hidden]),
            t("\(attention).q_proj.weight", [qWidth, hidden]), t("\(attention).q_proj.bias", [qWidth]),
            t("\(attention).k_proj.weight", [kvWidth, hidden]), t("\(attention).k_proj.bias", [kvWidth]),
            t("\(attention).v_proj.weight", [kvWidth, hidden]), t("\(attention).v_proj.bias", [kvWidth]),
            t("\(attention).o_proj.weight", [hidden, qWidth]), t("\(attention).o_proj.bias", [hidden]),
            t("\(attention).sinks", [config.headCount]),
            t("model.layers.\(layer).post_attention_layernorm.weight", [hidden]),
            t(names.routerName(layer), [experts, hidden]),
        ]
        if let bias = names.routerBiasName?(layer) { list.append(t(bias, [experts])) }
        list += [
            u8(fused.gateUp + "_blocks", [experts, 2 * width, hidden / 32, 16]),
            u8(fused.gateUp + "_scales", [experts, 2 * width, hidden / 32]),
            t(fused.gateUpBias, [experts, 2 * width]),
            u8(fused.down + "_blocks", [experts, hidden, width / 32, 16]),
            u8(fused.down + "_scales", [experts, hidden, width / 32]),
            t(fused.downBias, [experts, hidden]),
        ]
        return list
    }

    /// Norm weights (and DeepSeek's correction bias) are ones; projection biases and gpt-oss's
    /// sinks are random like the weights: a bias of one on every `o_proj` would add the same
    /// vector to the residual stream in every layer, and every token would route alike.
    static func isConstantOne(_ tensor: SafetensorsStreamWriter.Tensor) -> Bool {
        tensor.shape.count == 1 && !tensor.name.hasSuffix(".bias") && !tensor.name.hasSuffix(".sinks")
    }

    /// MXFP4 scales are one e8m0 exponent for every block: 2^-7 (byte 120). Uniform random e2m1
    /// codes have a standard deviation of 2.93, so the weights' is 0.023, near the 0.02 of the
    /// bf16 weights.
    static let mxfp4Scale: UInt8 = 127 - 7

    /// Weights have the published `initializer_range` (0.02), except the token embeddings, which
    /// have unit scale: with 0.02 the residual stream soon holds little but the attention's
    /// average over the context, every token routes to the same ~10 experts from layer 3 on
    /// (measured on `olmoe-small`), and an offloading benchmark would measure only cache hits.
    /// Trained models keep the token's identity in the stream and spread over their experts.
    static func standardDeviation(of name: String) -> Float {
        name == "model.embed_tokens.weight" ? 1.0 : 0.02
    }

    /// Writes the checkpoint into `directory` (created; must not exist), copying
    /// `tokenizer.json` and `tokenizer_config.json` from `tokenizerDirectory`.
    public func write(to directory: URL, tokenizerDirectory: URL, progress: ((Progress) -> Void)? = nil) throws {
        let fm = FileManager.default
        guard !fm.fileExists(atPath: directory.path) else { throw ModelFormatError.file(directory.path, "already exists") }
        try fm.createDirectory(at: directory, withIntermediateDirectories: true)
        let tensors = try tensors()

        // Shards at tensor boundaries.
        var shards: [[SafetensorsStreamWriter.Tensor]] = [[]]
        var shardSize = 0
        for tensor in tensors {
            if shardSize > 0 && shardSize + tensor.byteCount > shardBytes { shards.append([]); shardSize = 0 }
            shards[shards.count - 1].append(tensor)
            shardSize += tensor.byteCount
        }
        let total = tensors.reduce(0) { $0 + $1.byteCount }
        let start = DispatchTime.now().uptimeNanoseconds
        var done = 0
        var lastReport = 0.0
        var weightMap: [String: String] = [:]
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 << 20, alignment: 64)
        defer { chunk.deallocate() }
        for (index, shard) in shards.enumerated() {
            let fileName = shards.count == 1 ? "model.safetensors"
                : String(format: "model-%05d-of-%05d.safetensors", index + 1, shards.count)
            let writer = try SafetensorsStreamWriter(url: directory.appendingPathComponent(fileName), tensors: shard)
            for tensor in shard {
                weightMap[tensor.name] = fileName
                if tensor.dtype == .u8 {
                    // MXFP4 blocks (random e2m1 codes) or scales (one exponent).
                    var bytes = UniformBF16Generator(seed: seed, tensorName: tensor.name, constant: 0, standardDeviation: 0)
                    var remaining = tensor.byteCount
                    while remaining > 0 {
                        let piece = min(remaining, chunk.count)
                        let slice = UnsafeMutableRawBufferPointer(rebasing: chunk[0..<piece])
                        if tensor.name.hasSuffix("_scales") { slice.initializeMemory(as: UInt8.self, repeating: Self.mxfp4Scale) }
                        else { bytes.fillRandomBytes(slice) }
                        try writer.append(UnsafeRawBufferPointer(slice))
                        remaining -= piece
                        done += piece
                    }
                    continue
                }
                var values = UniformBF16Generator(seed: seed, tensorName: tensor.name,
                                                  constant: Self.isConstantOne(tensor) ? 1.0 : nil,
                                                  standardDeviation: Self.standardDeviation(of: tensor.name))
                var remaining = tensor.byteCount
                while remaining > 0 {
                    let piece = min(remaining, chunk.count)
                    values.fill(UnsafeMutableRawBufferPointer(rebasing: chunk[0..<piece]))
                    try writer.append(UnsafeRawBufferPointer(rebasing: chunk[0..<piece]))
                    remaining -= piece
                    done += piece
                    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                    if seconds - lastReport >= 1 {
                        lastReport = seconds
                        progress?(Progress(bytesDone: done, bytesTotal: total, seconds: seconds))
                    }
                }
            }
            try writer.finish()
        }
        if shards.count > 1 {
            let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
            try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])
                .write(to: directory.appendingPathComponent("model.safetensors.index.json"))
        }
        try JSONSerialization.data(withJSONObject: configJSON(), options: [.prettyPrinted, .sortedKeys])
            .write(to: directory.appendingPathComponent("config.json"))
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            let source = tokenizerDirectory.appendingPathComponent(name)
            if fm.fileExists(atPath: source.path) { try fm.copyItem(at: source, to: directory.appendingPathComponent(name)) }
        }
        progress?(Progress(bytesDone: done, bytesTotal: total, seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9))
    }
}

/// bf16 values, uniform on [-a, a] with the given standard deviation (a = σ√3), or a constant.
/// Sixteen random bits index a 65,536-entry table of bf16 values, so filling gigabytes costs
/// one xoshiro256** step per four values.
struct UniformBF16Generator {
    private var state: (UInt64, UInt64, UInt64, UInt64)
    private let table: [UInt16]

    init(seed: UInt64, tensorName: String, constant: Float?, standardDeviation: Float) {
        // FNV-1a of the name, mixed with the seed through SplitMix64.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in tensorName.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        var mix = SplitMix64(seed: seed ^ hash)
        state = (mix.next(), mix.next(), mix.next(), mix.next())
        if let constant {
            table = [UInt16](repeating: FloatConversion.bf16(from: constant), count: 65536)
        } else {
            let a = standardDeviation * Float(3).squareRoot()
            table = (0..<65536).map { FloatConversion.bf16(from: (Float($0) + 0.5) / 65536 * 2 * a - a) }
        }
    }

    private mutating func next() -> UInt64 {
        let result = ((state.1 &* 5) << 7 | (state.1 &* 5) >> 57) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = (state.3 << 45) | (state.3 >> 19)
        return result
    }

    /// Fills `buffer` with uniformly random bytes (the generator's raw output).
    mutating func fillRandomBytes(_ buffer: UnsafeMutableRawBufferPointer) {
        var i = 0
        while i + 8 <= buffer.count {
            buffer.storeBytes(of: next(), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < buffer.count { buffer[i] = UInt8(truncatingIfNeeded: next()); i += 1 }
    }

    /// Fills `buffer` (an even number of bytes) with bf16 values.
    mutating func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        let values = buffer.bindMemory(to: UInt16.self)
        table.withUnsafeBufferPointer { table in
            var i = 0
            while i + 4 <= values.count {
                let r = next()
                values[i] = table[Int(r & 0xffff)]
                values[i + 1] = table[Int((r >> 16) & 0xffff)]
                values[i + 2] = table[Int((r >> 32) & 0xffff)]
                values[i + 3] = table[Int(r >> 48)]
                i += 4
            }
            while i < values.count { values[i] = table[Int(next() & 0xffff)]; i += 1 }
        }
    }
}
