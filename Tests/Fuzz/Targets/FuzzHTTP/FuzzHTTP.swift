// libFuzzer target: the HTTP request path without sockets. Arbitrary bytes go through the
// connection state machine (http_parser glue, pipelining, limits) in client-sized reads; every
// request it starts is routed (authentication, method checks, each route's JSON body decoding)
// against an in-process backend, and the route's response is fed back so the response
// serialisation runs too. Built only with MOE_FUZZ=1 (see scripts/fuzz.sh).
import Foundation
import FuzzSupport
@testable import HTTPServer
import InferenceEngine

/// Every UTF-8 byte is one token (ids 0-255), 256 is end-of-sequence: enough to run the routes'
/// validation (context length, token ids, stop tokens) without a model.
struct ByteCodec: PromptCodec {
    var contextLength: Int { 64 }
    var vocabularySize: Int { 257 }
    var modelName: String { "fuzz-model" }
    var stopTokenIds: Set<Int> { [256] }
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] { Array(text.utf8).map { Int($0) } }
    func decode(_ ids: [Int]) -> String { String(decoding: ids.filter { (0..<256).contains($0) }.map { UInt8($0) }, as: UTF8.self) }
    func renderChat(_ messages: [ChatTurn]) throws -> String {
        messages.map { "<\($0.role)>\($0.content)" }.joined() + "<assistant>"
    }
}

/// Accepts every request and never produces events (the fuzzer exercises parsing, not generation).
final class SilentService: GenerationService, @unchecked Sendable {
    func submit(_ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void) throws -> UInt64 { 1 }
    func cancel(_ id: UInt64) {}
}

nonisolated(unsafe) let metrics = ServerMetrics()
nonisolated(unsafe) let backend = ModelBackend(service: SilentService(), codec: ByteCodec())
let openRouter = APIRouter(config: ServerConfig(), metrics: metrics)
let keyedRouter: APIRouter = {
    var config = ServerConfig()
    config.apiKeys = ["fuzz-key"]
    config.corsAllowOrigins = ["http://a.example"]
    return APIRouter(config: config, metrics: metrics)
}()

/// Input: byte 0 chooses the read size (0: everything at once) and the router (bit 7: API keys
/// and CORS on); the rest is what a client sends.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP(_ input: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data = input else { return 0 }
    guard size > 0 else { return 0 }
    let control = data[0]
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let chunk = Int(control & 0x3F) == 0 ? max(bytes.count, 1) : Int(control & 0x3F)
    let router = control & 0x80 != 0 ? keyedRouter : openRouter
    var limits = ConnectionLimits()
    limits.maxHeaderBytes = 4096
    limits.maxBodyBytes = 16 * 1024
    limits.maxPipelined = 4
    var machine = ConnectionStateMachine(limits: limits, now: 0)
    var now = 0.0
    var pending: [ConnectionAction] = []
    var offset = 0
    repeat {
        let end = min(offset + chunk, bytes.count)
        now += 0.01
        pending += machine.receive(Array(bytes[offset..<end]), now: now)
        offset = end
        // Answer what was started, in order; answers may start more (pipelining resumes).
        while !pending.isEmpty {
            let action = pending.removeFirst()
            guard case let .startRequest(id, request) = action else { continue }
            _ = APIRouter.routeName(request)
            _ = router.corsHeaders(request)
            switch router.route(request, backend: control & 0x40 != 0 ? nil : backend) {
            case let .response(response):
                pending += machine.respond(id, ResponsePart.complete(response), now: now)
            case let .generate(job):
                // A streaming answer: head without Content-Length (chunked), a body, the end.
                _ = job
                pending += machine.respond(id, [.head(status: 200, headers: HTTPHeaders()), .body(Array("data: x\n\n".utf8)), .end(close: false)], now: now)
            }
        }
    } while offset < bytes.count && !machine.isClosed
    _ = machine.tick(now: now + 100)
    _ = machine.beginDrain()
    _ = machine.peerClosed()
    return 0
}

/// The process entry point (see FuzzSupport/FuzzDriver.swift).
@_cdecl("FuzzHTTP_main")
public func fuzzHTTPMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc: argc, argv: argv) { fuzzHTTP($0, $1) }
}
