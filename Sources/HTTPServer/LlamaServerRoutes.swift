/// llama-server's informational routes: `GET /props` (the model, context, chat template and
/// build) and `GET /slots` (each sequence's state), in llama-server's field names.
enum LlamaServerRoutes {
    static func props(_ backend: ModelBackend) -> JSON {
        let codec = backend.codec
        let info = backend.info
        let params = JSON.object([("n_predict", .int(-1)), ("temperature", .double(0.8)), ("top_k", .int(40)), ("top_p", .double(0.95)),
                                  ("min_p", .double(0.05)), ("seed", .int(-1)), ("stream", .bool(false))])
        return .object([
            ("default_generation_settings", .object([("n_ctx", .int(codec.contextLength)), ("params", params)])),
            ("total_slots", .int(info.slots)),
            ("model_path", .string(info.path)),
            ("model_alias", .string(codec.modelName)),
            ("architecture", .string(info.architecture)),
            ("quantization", .string(info.quantization)),
            ("n_ctx", .int(codec.contextLength)),
            ("n_ctx_train", .int(info.trainedContextLength > 0 ? info.trainedContextLength : codec.contextLength)),
            ("n_vocab", .int(codec.vocabularySize)),
            ("chat_template", .string(codec.templateSource ?? "")),
            ("build_info", .string(info.build)),
            ("modalities", .object([("vision", .bool(false)), ("audio", .bool(false))])),
        ])
    }

    static func slots(_ backend: ModelBackend) -> JSON {
        let states = (backend.stats as? SlotProvider)?.slots() ?? []
        return .array(states.enumerated().map { index, s in
            .object([("id", .int(index)), ("id_task", .int(Int(truncatingIfNeeded: s.id))), ("n_ctx", .int(backend.codec.contextLength)),
                     ("is_processing", .bool(!s.waiting)), ("state", .string(s.waiting ? "waiting" : (s.prefilledTokens < s.promptTokens ? "prefill" : "decode"))),
                     ("n_prompt_tokens", .int(s.promptTokens)), ("n_prompt_tokens_processed", .int(s.prefilledTokens)),
                     ("n_decoded", .int(s.generatedTokens)), ("n_predict", .int(s.maxTokens))])
        })
    }
}
