import Testing
@testable import HTTPServer
import InferenceEngine

/// Fixed engine figures, as the engine's sampler would report them.
struct FixedStats: StatsProvider {
    let stats: EngineStats
    func currentStats() -> EngineStats { stats }
}

/// `/health` as orchestrators use it: 503 while loading or draining, 200 when ready, and the
/// detailed form with the budget, cache fill and queue depth.
@Suite struct HealthTests {
    func router(apiKeys: [String] = []) -> APIRouter {
        var config = ServerConfig()
        config.memoryBudget = 96 << 20
        config.apiKeys = apiKeys
        return APIRouter(config: config, metrics: ServerMetrics())
    }

    var backend: ModelBackend {
        var stats = EngineStats()
        stats.cacheBytesBudget = 40 << 20
        stats.cacheBytesUsed = 30 << 20
        stats.queuedRequests = 3
        stats.runningSequences = 2
        return ModelBackend(service: ScriptedService(), codec: ByteCodec(), stats: FixedStats(stats: stats))
    }

    func get(_ router: APIRouter, _ path: String, backend: ModelBackend?, draining: Bool = false) -> HTTPResponse? {
        guard case let .response(r) = router.route(HTTPRequest(method: "GET", target: path), backend: backend, draining: draining)
        else { Issue.record("expected a response"); return nil }
        return r
    }

    @Test func healthIs503WhileDrainingEvenWithTheModelLoaded() throws {
        let r = router()
        #expect(get(r, "/health", backend: backend)?.status == 200)
        let draining = try #require(get(r, "/health", backend: backend, draining: true))
        #expect(draining.status == 503)
        #expect(draining.headers["Retry-After"] == "1")
        let body = try JSON.parse(draining.body)
        #expect(body["error"]?["message"]?.stringValue?.contains("Draining") == true)
    }

    @Test func detailCarriesBudgetCacheFillAndQueueDepth() throws {
        let r = router()
        let ready = try #require(get(r, "/health/detail", backend: backend))
        #expect(ready.status == 200)
        let body = try JSON.parse(ready.body)
        #expect(body["status"] == .string("ok"))
        #expect(body["memory_budget_bytes"] == .int(96 << 20))
        #expect(body["cache_bytes_budget"] == .int(40 << 20))
        #expect(body["cache_bytes_used"] == .int(30 << 20))
        #expect(body["cache_fill"]?.doubleValue == 0.75)
        #expect(body["queue_depth"] == .int(3))
        #expect(body["running_sequences"] == .int(2))
    }

    @Test func detailFollowsReadinessAndNeedsNoKey() throws {
        let r = router(apiKeys: ["secret"])
        let loading = try #require(get(r, "/health/detail", backend: nil))
        #expect(loading.status == 503)
        #expect(try JSON.parse(loading.body)["status"] == .string("loading"))
        let draining = try #require(get(r, "/health/detail", backend: backend, draining: true))
        #expect(draining.status == 503)
        #expect(try JSON.parse(draining.body)["status"] == .string("draining"))
    }
}
