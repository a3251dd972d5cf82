import Foundation
import Testing
import ModelFormats
import MoEModels
@testable import ExpertPrediction

/// Records the order of prefetch and demand calls.
final class RecordingProvider: ExpertProvider, @unchecked Sendable {
    let inner: ExpertProvider
    var events: [String] = []
    init(_ inner: ExpertProvider) { self.inner = inner }

    func withExperts(layer: Int, experts: [Int], _ body: (Int, ExpertWeights) throws -> Void) throws {
        events.append("demand \(layer)")
        try inner.withExperts(layer: layer, experts: experts, body)
    }

    /// Pipeline (prefill-chunk) hints, per layer.
    var pipelineHints: [Int] = []
    /// Every prefetch call, as made.
    var prefetches: [(layer: Int, experts: [Int], pipeline: Bool)] = []
    func prefetch(layer: Int, experts: [Int], pipeline: Bool) {
        events.append("prefetch \(layer)")
        prefetches.append((layer, experts, pipeline))
        if pipeline { pipelineHints.append(layer) }
    }
}

func fixtureModel(_ prefix: String, recording: Bool = false) throws -> (TransformerModel, RecordingProvider?) {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/models")
    let name = try FileManager.default.contentsOfDirectory(atPath: root.path).sorted().first { $0.hasPrefix(prefix) }!
    let checkpoint = try CheckpointDirectory(url: root.appendingPathComponent(name))
    let inMemory = try InMemoryExpertProvider(config: checkpoint.config, weights: checkpoint,
                                              names: ArchitectureDescription.of(checkpoint.config.architecture))
    let recorder = recording ? RecordingProvider(inMemory) : nil
    return (try TransformerModel(config: checkpoint.config, weights: checkpoint, experts: recorder ?? inMemory), recorder)
}

@Suite struct ExpertPredictorTests {
    @Test func crossLayerPrefetchOfTheNextLayerComesBeforeItsDemand() throws {
        let (model, recorder) = try fixtureModel("mixtral-top1-tied", recording: true)
        let predictor = ExpertPredictor(model: model, configuration: PredictorConfiguration(crossLayer: true), provider: recorder)
        model.routingObserver = predictor
        _ = try model.forward([SequenceInput(cache: model.makeCache(), tokens: [1, 2, 3])])
        let events = recorder!.events
        for layer in 1..<model.config.layerCount {
            let prefetch = try #require(events.firstIndex(of: "prefetch \(layer)"))
            let demand = try #require(events.firstIndex(of: "demand \(layer)"))
            #expect(prefetch < demand)
        }
        #expect(!events.contains("prefetch 0")) // the cross-layer gate has nothing before layer 0
    }

    /// The named cross-layer configurations cover layer 0 with router 0 on the embedding:
    /// its prefetch comes before layer 0's demand; `.history` predicts the previous step's.
    @Test func firstLayerIsPredictedFromTheEmbeddingOrTheLastStep() throws {
        let (model, recorder) = try fixtureModel("mixtral-top1-tied", recording: true)
        let named = try #require(PredictorConfiguration.named.first { $0.0 == "cross_layer" }?.1)
        #expect(named.firstLayer == .embedding)
        let predictor = ExpertPredictor(model: model, configuration: named, provider: recorder)
        model.routingObserver = predictor
        _ = try model.forward([SequenceInput(cache: model.makeCache(), tokens: [1, 2, 3])])
        let events = recorder!.events
        let prefetch = try #require(events.firstIndex(of: "prefetch 0"))
        let demand = try #require(events.firstIndex(of: "demand 0"))
        #expect(prefetch < demand)
        #expect(predictor.statistics.perLayer[0].predicted > 0)

        let (historyModel, _) = try fixtureModel("mixtral-top1-tied")
        let history = ExpertPredictor(model: historyModel,
                                      configuration: PredictorConfiguration(crossLayer: true, firstLayer: .history), provider: nil)
        historyModel.routingObserver = history
        let cache = historyModel.makeCache()
        _ = try historyModel.forward([SequenceInput(cache: cache, tokens: [1])])
        #expect(history.statistics.perLayer[0].predicted == 0) // nothing before the first step
        _ = try historyModel.forward([SequenceInput(cache: cache, tokens: [1])])
        #expect(history.statistics.perLayer[0].predicted == historyModel.config.expertsPerToken)
    }

    /// A probability floor drops unconfident guesses in decode steps (a floor above every
    /// probability predicts nothing), but not in prefill chunks, whose union is kept.
    @Test func probabilityFloorAppliesToDecodeStepsOnly() throws {
        func predicted(rows: Int, floor: Float) throws -> Int {
            let (model, _) = try fixtureModel("mixtral-gqa")
            let configuration = PredictorConfiguration(crossLayer: true, extraWidth: 1, minProbability: floor)
            let predictor = ExpertPredictor(model: model, configuration: configuration, provider: nil)
            model.routingObserver = predictor
            _ = try model.forward([SequenceInput(cache: model.makeCache(), tokens: (0..<rows).map { $0 % 7 + 1 })])
            return (1..<model.config.layerCount).reduce(0) { $0 + predictor.statistics.perLayer[$1].predicted }
        }
        #expect(try predicted(rows: 1, floor: 0) > 0)
        #expect(try predicted(rows: 1, floor: 0.999) == 0)
        let limit = ExpertPredictor.confidentRowLimit
        #expect(try predicted(rows: limit + 1, floor: 0.999) == predicted(rows: limit + 1, floor: 0))
    }

    @Test func prefillChunksArePipelineHintsAndDecodeStepsAreNot() throws {
        let (model, recorder) = try fixtureModel("mixtral-gqa", recording: true)
        let predictor = ExpertPredictor(model: model, configuration: PredictorConfiguration(crossLayer: true), provider: recorder)
        model.routingObserver = predictor
        let cache = model.makeCache()
        let limit = ExpertPredictor.confidentRowLimit
        _ = try model.forward([SequenceInput(cache: cache, tokens: (0...limit).map { $0 % 7 + 1 })])
        #expect(!recorder!.pipelineHints.isEmpty)
        #expect(recorder!.pipelineHints.count == recorder!.events.filter { $0.hasPrefix("prefetch") }.count)
        recorder!.pipelineHints = []
        recorder!.events = []
        _ = try model.forward([SequenceInput(cache: cache, tokens: [3])])
        #expect(recorder!.events.contains { $0.hasPrefix("prefetch") })
        #expect(recorder!.pipelineHints.isEmpty)
    }

    /// Throughput mode: a decode step of so many sequences that rows × k ≥ 2 × experts makes
    /// no guesses (its demand reads cover most of every layer); fewer sequences, or a prompt
    /// chunk of as many rows, still do.
    @Test func saturatedDecodeStepsGuessOnlyTheNextLayerByVotes() throws {
        func prefetches(sequences: Int, tokensEach: Int) throws -> [(layer: Int, experts: [Int], pipeline: Bool)] {
            let (model, recorder) = try fixtureModel("mixtral-gqa", recording: true)
            let predictor = ExpertPredictor(model: model, configuration: PredictorConfiguration(crossLayer: true, minProbability: 0),
                                            provider: recorder)
            model.routingObserver = predictor
            let inputs = (0..<sequences).map { s in SequenceInput(cache: model.makeCache(), tokens: (0..<tokensEach).map { (s + $0) % 7 + 1 }) }
            _ = try model.forward(inputs)
            return recorder!.prefetches
        }
        let config = try fixtureModel("mixtral-gqa").0.config
        let saturating = (ExpertPredictor.saturatedDecodeFactor * config.expertCount + config.expertsPerToken - 1) / config.expertsPerToken
        // A saturated decode step: at most one guess per later layer (none for the next step's
        // first layer, which the per-row guesses would wrap to), decode hints under the cache's
        // speculative bound, each expert once.
        let saturated = try prefetches(sequences: saturating, tokensEach: 1)
        #expect(!saturated.isEmpty)
        #expect(saturated.allSatisfy { !$0.pipeline && $0.layer > 0 && Set($0.experts).count == $0.experts.count })
        #expect(Set(saturated.map(\.layer)).count == saturated.count)
        if saturating > 1 { #expect(try !prefetches(sequences: saturating - 1, tokensEach: 1).isEmpty) }
        #expect(try !prefetches(sequences: 1, tokensEach: saturating).isEmpty)   // a prompt chunk of as many rows
    }

    @Test func votesRankTheExpertsThatAtLeastTwoRowsChose() {
        // Expert 3 has four votes, 1 and 5 two each (1 first on the tie), 0 and 2 one each.
        func votes(_ choices: [[Int]], experts: Int) -> [Int] {
            choices.joined().reduce(into: [Int](repeating: 0, count: experts)) { $0[$1] += 1 }
        }
        #expect(ExpertPredictor.byVotes(votes([[3, 1], [3, 5], [1, 0], [3, 5], [2, 3]], experts: 8)) == [3, 1, 5])
        #expect(ExpertPredictor.byVotes(votes([[0, 1], [2, 3]], experts: 4)).isEmpty)
    }

    @Test func predictingEveryExpertGivesFullRecallAndExactPrecisionAccounting() throws {
        let (model, _) = try fixtureModel("mixtral-gqa")
        let everything = PredictorConfiguration(crossLayer: true, extraWidth: model.config.expertCount, preAttention: true)
        let predictor = ExpertPredictor(model: model, configuration: everything, provider: nil)
        model.routingObserver = predictor
        _ = try model.forward([SequenceInput(cache: model.makeCache(), tokens: [5])])
        for layer in 0..<model.config.layerCount {
            let stats = predictor.statistics.perLayer[layer]
            #expect(stats.recall == 1)
            #expect(stats.predicted == model.config.expertCount)
            #expect(stats.used == model.config.expertsPerToken)
            #expect(abs(stats.precision - Double(model.config.expertsPerToken) / Double(model.config.expertCount)) < 1e-12)
        }
    }

    @Test func predictionNeverChangesTheOutput() throws {
        let (model, _) = try fixtureModel("qwen2moe-shared-top4")
        let plain = try model.forward([SequenceInput(cache: model.makeCache(), tokens: [3, 1, 4, 1, 5], allLogits: true)])[0]
        model.routingObserver = ExpertPredictor(model: model, configuration: .default, provider: model.experts)
        let predicted = try model.forward([SequenceInput(cache: model.makeCache(), tokens: [3, 1, 4, 1, 5], allLogits: true)])[0]
        #expect(plain == predicted)
    }

    @Test func historyPredictsTheLastStepsExperts() throws {
        let (model, _) = try fixtureModel("olmoe-noclip")
        let predictor = ExpertPredictor(model: model, configuration: PredictorConfiguration(crossLayer: false, historyTokens: 1), provider: nil)
        model.routingObserver = predictor
        let cache = model.makeCache()
        _ = try model.forward([SequenceInput(cache: cache, tokens: [7])])
        #expect(predictor.statistics.total.predicted == 0) // nothing to remember yet
        _ = try model.forward([SequenceInput(cache: cache, tokens: [7])])
        let total = predictor.statistics.total
        #expect(total.predicted == model.config.layerCount * model.config.expertsPerToken)
        #expect(predictor.statistics.steps == 2)
    }
}
