import ExpertCache
import ExpertPrediction
import InferenceEngine
import Foundation
import ModelFormats
import MoEModels

/// Everything that decides how a model runs: which model, how much memory the whole process
/// may use, the expert cache, its policy and prefetching, the KV cache and the batch it serves.
/// Built by the command line (`RuntimeOptions`), by `serve` from flags, `MOE_*` and TOML, or
/// directly by a test; `ModelRuntime.open` assembles a runtime from it.
public struct RuntimeSpecification: Sendable {
    /// Where the fitted predictor probes come from.
    public enum ProbeSource: Sendable, Equatable {
        /// The model directory's own `predictor-probes.safetensors`, if it has one.
        case modelDefault
        /// None (`none`): the routers of the next layers drive the cross-layer gate.
        case disabled
        /// This file.
        case file(URL)
    }

    /// A Hugging Face model directory or a packed expert store.
    public var model: URL
    /// Bytes the whole process may use: its own runtime, dense weights, scratch, KV cache and
    /// expert cache (which gets what remains). Nil keeps every expert in RAM (checkpoints) or
    /// caches them all (stores).
    public var memoryBudgetBytes: Int?
    /// `--memory-budget auto`: `memoryBudgetBytes` is only where the budget starts (bounded by
    /// the plan's floor and by every expert cached); the expert cache then follows the
    /// machine's free memory and memory pressure (`AutoMemoryBudget`).
    public var autoMemoryBudget = false
    /// Bytes of experts to keep in RAM, overriding the share the budget leaves them.
    public var expertCacheBytes: Int?
    /// Eviction policy of the expert cache (the measured default: docs/expert-cache.md).
    public var policy: PolicyChoice = .sequence
    /// Predictive prefetch of experts (only when the cache cannot hold every expert): on, off,
    /// or auto, which measures both while decoding and keeps the faster (`PrefetchDuel`).
    public var prefetch: PrefetchMode = .on
    /// A named `PredictorConfiguration`; nil picks `cross_layer_deep` with probes, else `cross_layer`.
    public var predictor: String?
    /// Fitted cross-layer probes.
    public var probes: ProbeSource = .modelDefault
    /// Storage of keys and values in the KV cache.
    public var kvPrecision: KVPrecision = .f16
    /// Concurrent expert reads (the disk queue depth); 0 sizes them by a short probe of the
    /// disk at open (`ReaderSizing`), falling back to `defaultReaderThreads`.
    public var readerThreads = RuntimeSpecification.defaultReaderThreads
    /// Reader threads when nothing else decides.
    public static let defaultReaderThreads = 4
    /// Which engine reads experts from a packed store (`MOE_IO_ENGINE` by default, else auto:
    /// io_uring where the kernel allows it, the thread-pool reader otherwise).
    public var ioEngine: IOEngineChoice = .environmentDefault
    /// Prefetch reads that may run at once (0: no separate bound).
    public var prefetchReads = 0
    /// Missing experts one layer of a step holds reserved at once (nil or 0: all of them);
    /// see `OffloadingExpertCache.Configuration.admissionWindow`.
    public var admissionWindow: Int?
    /// Floor on a predicted expert's probability for it to be prefetched (nil: the predictor's default).
    public var prefetchMinProbability: Float?
    /// While a decode step's misses load, run a shadow of the next MoE layer (its attention and
    /// router on this layer's partial output) and prefetch what it chooses (`ShadowRouting`).
    /// On by default since session 20: it makes the guesses sharper (OLMoE-1B-7B recall 0.17 →
    /// 0.74, the trained demo's demand reads −27%) and, over 20 paired rounds on four models,
    /// decoded a median 1.04x faster (14 of 20 rounds; 0.95-1.33x), never costing more than this
    /// disk's spread (docs/PREDICTOR.md, "Session 20"). It runs only while a read is in flight.
    public var shadowRouting = true
    /// Linear stand-ins for the experts' outputs, which the shadow uses as `surrogateShadow` says
    /// (`ExpertSurrogates`): the model directory's own `expert-surrogates.safetensors` by default.
    public var surrogates: ProbeSource = .modelDefault
    /// How the shadow uses them. `fill` (they stand in for the experts still loading) measured
    /// 1.00-1.03x the shadow without them on the widened demo at an emulated 1.5 GB/s; the
    /// shadows run as a layer routes gained nothing (docs/PREDICTOR.md, session 36).
    public var surrogateShadow: SurrogateShadow = .fill
    /// Prefetched, unused experts each layer may hold (0: no bound; nil: the model's top-k).
    public var prefetchBudgetExperts: Int?
    /// Sequences that run at once (sizes scratch and the KV cache).
    public var maxSequences = 1
    /// When a request may reuse a retained cache holding only part of its prompt
    /// (`prompt_cache_partial`; see `PartialPromptReuse`).
    public var partialPromptReuse: PartialPromptReuse = .whenExact
    /// Tokens of context each sequence may reach (nil: the model's maximum).
    public var contextTokens: Int?
    /// What the caller uses beyond the model (the HTTP server's connections and responses),
    /// added to the process's own reservation.
    public var extraRuntimeBytes = 0
    /// The KV cache's largest share of what the fixed parts leave of the budget.
    public var kvShare = 0.25

    /// A specification with the defaults for `model`.
    public init(model: URL) { self.model = model }

    /// The eviction policy named `name`.
    public static func policy(named name: String) throws -> PolicyChoice {
        guard let policy = PolicyChoice(rawValue: name) else {
            throw RuntimeError("unknown policy '\(name)'; choose one of \(PolicyChoice.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return policy
    }

    /// The KV precision named `name` (f16 or f32).
    public static func kvPrecision(named name: String) throws -> KVPrecision {
        guard let precision = KVPrecision(rawValue: name) else { throw RuntimeError("expected f16 or f32, got '\(name)'") }
        return precision
    }

    /// `on`, `off` (also true/false, yes/no, 1/0) or `auto`.
    public static func prefetch(named name: String) throws -> PrefetchMode {
        switch name.lowercased() {
        case "on", "true", "yes", "1": return .on
        case "off", "false", "no", "0": return .off
        case "auto": return .auto
        default: throw RuntimeError("expected on, off or auto, got '\(name)'")
        }
    }

    /// `none`, or a path to a probes file.
    public static func probes(named name: String) -> ProbeSource {
        name == "none" ? .disabled : .file(URL(fileURLWithPath: name))
    }

    /// A `SurrogateShadow` by name.
    public static func surrogateShadow(named name: String) throws -> SurrogateShadow {
        guard let mode = SurrogateShadow(rawValue: name) else {
            throw RuntimeError("expected one of \(SurrogateShadow.allCases.map(\.rawValue).joined(separator: ", ")), got '\(name)'")
        }
        return mode
    }

    /// The names of the predictor configurations.
    public static var predictorNames: [String] { PredictorConfiguration.named.map(\.0) }
}

/// Whether experts are prefetched before their layer routes.
public enum PrefetchMode: String, Sendable, Equatable, CaseIterable {
    case on, off
    /// Decode-step blocks alternately with and without prefetching, timed; the faster leads
    /// (`PrefetchDuel`, `PrefetchSwitch`).
    case auto
}

/// A specification that cannot run, or a model that cannot open under it: one line.
public struct RuntimeError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
