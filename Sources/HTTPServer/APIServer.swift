import CLibUV
import Foundation
import InferenceEngine

/// Why the server could not start.
public struct ServerStartError: Error, CustomStringConvertible {
    /// One line naming what failed.
    public let description: String
}

/// The HTTP server: a libuv loop on its own thread that accepts connections, feeds their bytes to
/// `ConnectionStateMachine`s and writes what they answer. Routing and tokenization run on a worker
/// queue, generation on the engine; both reach the loop only through `LoopInbox`.
public final class APIServer: @unchecked Sendable {
    /// The configuration the server was started with.
    public let config: ServerConfig
    /// Metrics rendered at `/metrics`; the engine feeds its own figures here.
    public let metrics: ServerMetrics
    private let router: APIRouter
    private let inbox = LoopInbox()
    /// Request memory limits, reserved in the memory plan (see `RequestMemory`).
    private let memory: RequestMemory
    /// Decoding lanes: small bodies on a few workers, large ones one at a time, so the transient
    /// memory of decoding stays within what the plan reserves.
    private let smallLane = OperationQueue()
    private let largeLane = OperationQueue()

    // Shared with worker threads, under `stateLock`.
    private let stateLock = NSLock()
    private var backendValue: ModelBackend?
    private var inFlight = 0
    private var drainingValue = false
    private var drainHandler: (@Sendable () -> Void)?
    /// Body limit in force: lowered to what the model's context can use once a backend is attached.
    private var bodyLimitValue: Int
    /// Request bytes held: partial requests in parsers plus bodies waiting for or being decoded.
    private var heldRequestBytes = 0

    // Loop-thread state.
    private let loop: UnsafeMutablePointer<uv_loop_t>
    private let listener: UnsafeMutablePointer<uv_tcp_t>
    private let async: UnsafeMutablePointer<uv_async_t>
    private let timer: UnsafeMutablePointer<uv_timer_t>
    private var signals: [UnsafeMutablePointer<uv_signal_t>] = []
    private var connections: [UInt64: ServerConnection] = [:]
    /// Connections closed on our side whose remaining input is being drained (see `lingerDeadline`).
    private var lingering: [UInt64: ServerConnection] = [:]
    /// Response bytes queued in libuv across connections, not yet on the wire.
    private var unsentBytes = 0
    private var nextConnectionID: UInt64 = 1
    private let readBuffer = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 16)
    private var shutdownDeadline: Double?
    private var listening = false
    private var finished = false
    private var loopThread: Thread?
    private let stopped = DispatchSemaphore(value: 0)
    private var handlesOpen = 0

    /// Bytes queued for a client that is not reading, beyond which it is dropped.
    static let maxUnsentBytes = 16 << 20
    /// Seconds a closed connection's input is drained before the socket is closed anyway.
    static let lingerSeconds = 2.0

    /// The port actually bound (useful with `port = 0`).
    public private(set) var port: Int = 0

    /// A server for `config`; call `start()` to listen.
    public init(config: ServerConfig, metrics: ServerMetrics = ServerMetrics(), backend: ModelBackend? = nil) {
        self.config = config
        self.metrics = metrics
        self.router = APIRouter(config: config, metrics: metrics)
        self.backendValue = backend
        let memory = RequestMemory(config: config)
        self.memory = memory
        bodyLimitValue = backend.map { memory.bodyLimit(contextLength: $0.codec.contextLength, maxBytesPerToken: $0.maxBytesPerToken) }
            ?? memory.bodyLimit
        smallLane.maxConcurrentOperationCount = RequestMemory.smallBodyLanes
        largeLane.maxConcurrentOperationCount = 1
        loop = .allocate(capacity: 1)
        listener = .allocate(capacity: 1)
        async = .allocate(capacity: 1)
        timer = .allocate(capacity: 1)
    }

    deinit {
        readBuffer.deallocate()
    }

    /// Makes the model available: `/health` turns 200 and generation routes work. Thread-safe.
    public func attach(_ backend: ModelBackend) {
        let limit = memory.bodyLimit(contextLength: backend.codec.contextLength, maxBytesPerToken: backend.maxBytesPerToken)
        stateLock.lock(); backendValue = backend; bodyLimitValue = limit; stateLock.unlock()
    }

    /// The largest request body accepted now (413 beyond): `max_body_size`, lowered by the memory
    /// budget and, once the model is loaded, by its context.
    public var bodyLimit: Int {
        stateLock.lock(); defer { stateLock.unlock() }
        return bodyLimitValue
    }

    /// Adds `delta` to the held request bytes; with `admit`, only if the total stays within the
    /// cap (returns false, adding nothing, otherwise).
    private func holdRequestBytes(_ delta: Int, admit: Bool = false) -> Bool {
        stateLock.lock(); defer { stateLock.unlock() }
        if admit, delta > 0, heldRequestBytes + delta > memory.heldBytesCap { return false }
        heldRequestBytes += delta
        metrics.setHeldRequestBytes(heldRequestBytes)
        return true
    }

    /// Request bytes held now (tests and metrics).
    var heldRequestBytesNow: Int {
        stateLock.lock(); defer { stateLock.unlock() }
        return heldRequestBytes
    }

    /// Raises the soft limit on open files to the hard limit: each connection is a descriptor,
    /// and the default soft limit (often 1024) would make accept fail long before
    /// `max_connections`.
    static func raiseOpenFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }

    private var backend: ModelBackend? {
        stateLock.lock(); defer { stateLock.unlock() }
        return backendValue
    }

    /// True once a graceful shutdown has begun: `/health` answers 503 from then on.
    public var isDraining: Bool {
        stateLock.lock(); defer { stateLock.unlock() }
        return drainingValue
    }

    /// Runs `handler` once, on the loop thread, when a graceful shutdown begins (SIGTERM,
    /// SIGINT or `shutdown()`): the CLI tells systemd `STOPPING=1` here. Must return quickly.
    public func onDrain(_ handler: @escaping @Sendable () -> Void) {
        stateLock.lock(); drainHandler = handler; stateLock.unlock()
    }

    /// Monotonic seconds.
    private static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    private static func server(_ p: UnsafeMutableRawPointer?) -> APIServer {
        Unmanaged<APIServer>.fromOpaque(p!).takeUnretainedValue()
    }

    /// Binds, listens and starts the loop thread. Returns once the port is bound.
    /// - Parameter handleSignals: stop gracefully on SIGTERM/SIGINT (the CLI sets this; tests don't).
    public func start(handleSignals: Bool = false) throws {
        // A client that vanishes mid-write must not kill the process.
        signal(SIGPIPE, SIG_IGN)
        Self.raiseOpenFileLimit()
        if handleSignals {
            // A parent may have started us with SIGINT/SIGTERM blocked (test runners and some
            // supervisors do, and threads inherit the mask); libuv can only see them unblocked.
            var stopSignals = sigset_t()
            sigemptyset(&stopSignals)
            sigaddset(&stopSignals, SIGINT)
            sigaddset(&stopSignals, SIGTERM)
            pthread_sigmask(SIG_UNBLOCK, &stopSignals, nil)
        }
        guard uv_loop_init(loop) == 0 else { throw ServerStartError(description: "cannot create the event loop") }
        let me = Unmanaged.passUnretained(self).toOpaque()
        loop.pointee.data = me

        uv_tcp_init(loop, listener)
        listener.pointee.data = me
        handlesOpen += 1
        var storage = sockaddr_storage()
        let bindResult: Int32 = withUnsafeMutablePointer(to: &storage) { ptr in
            if config.host.contains(":") {
                let r = ptr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { uv_ip6_addr(config.host, Int32(config.port), $0) }
                guard r == 0 else { return r }
            } else {
                let r = ptr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { uv_ip4_addr(config.host, Int32(config.port), $0) }
                guard r == 0 else { return r }
            }
            return ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { uv_tcp_bind(listener, $0, 0) }
        }
        func fail(_ what: String, _ code: Int32) -> ServerStartError {
            ServerStartError(description: "\(what) \(config.host):\(config.port): \(String(cString: uv_strerror(code)))")
        }
        guard bindResult == 0 else { closeAllAndRun(); throw fail("cannot bind", bindResult) }
        let listenResult = uv_listen(UnsafeMutableRawPointer(listener).assumingMemoryBound(to: uv_stream_t.self), 511) { server, status in
            guard status == 0, let server else { return }
            APIServer.server(server.pointee.data).accept(server)
        }
        guard listenResult == 0 else { closeAllAndRun(); throw fail("cannot listen on", listenResult) }
        listening = true
        var name = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &name) { ptr in
            ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = uv_tcp_getsockname(listener, $0, &length) }
            if ptr.pointee.ss_family == sa_family_t(AF_INET6) {
                port = ptr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            } else {
                port = ptr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            }
        }

        uv_async_init(loop, async) { handle in
            guard let handle else { return }
            APIServer.server(handle.pointee.data).drainInbox()
        }
        async.pointee.data = me
        handlesOpen += 1
        inbox.attach(async)

        uv_timer_init(loop, timer)
        timer.pointee.data = me
        handlesOpen += 1
        uv_timer_start(timer, { handle in
            guard let handle else { return }
            APIServer.server(handle.pointee.data).tick()
        }, 250, 250)

        if handleSignals {
            for signum in [SIGTERM, SIGINT] {
                let handle = UnsafeMutablePointer<uv_signal_t>.allocate(capacity: 1)
                uv_signal_init(loop, handle)
                handle.pointee.data = me
                handlesOpen += 1
                uv_signal_start(handle, { handle, _ in
                    guard let handle else { return }
                    APIServer.server(handle.pointee.data).beginShutdown()
                }, signum)
                signals.append(handle)
            }
        }

        // The loop thread keeps the server alive until the loop ends.
        let retained = Unmanaged.passRetained(self)
        let thread = Thread {
            uv_run(retained.takeUnretainedValue().loop, UV_RUN_DEFAULT)
            let server = retained.takeRetainedValue()
            uv_loop_close(server.loop)
            server.releaseHandles()
            server.stopped.signal()
        }
        thread.name = "moe-serve-http"
        loopThread = thread
        thread.start()
    }

    /// Frees the handle memory once the loop is closed (every handle's close callback has run).
    private func releaseHandles() {
        loop.deallocate()
        listener.deallocate()
        async.deallocate()
        timer.deallocate()
        for handle in signals { handle.deallocate() }
        signals = []
    }

    /// Cleans up after a failed start (no thread yet: run the loop here until handles close).
    private func closeAllAndRun() {
        uv_close(UnsafeMutableRawPointer(listener).assumingMemoryBound(to: uv_handle_t.self), nil)
        uv_run(loop, UV_RUN_DEFAULT)
        uv_loop_close(loop)
    }

    /// Starts a graceful shutdown from any thread: stop accepting, let requests finish within
    /// the grace period, then cancel what remains and stop the loop.
    public func shutdown() { inbox.push(.shutdown) }

    /// Blocks until the loop has stopped.
    public func waitUntilStopped() { stopped.wait(); stopped.signal() }

    // MARK: - Loop thread

    private func accept(_ server: UnsafeMutablePointer<uv_stream_t>) {
        let tcp = UnsafeMutablePointer<uv_tcp_t>.allocate(capacity: 1)
        uv_tcp_init(loop, tcp)
        var limits = config.limits
        limits.maxBodyBytes = bodyLimit
        let connection = ServerConnection(id: nextConnectionID, tcp: tcp, limits: limits, now: Self.now())
        nextConnectionID += 1
        tcp.pointee.data = Unmanaged.passRetained(connection).toOpaque()
        guard uv_accept(server, connection.stream) == 0 else {
            closeHandle(connection)
            return
        }
        if shutdownDeadline != nil {
            closeHandle(connection)
            return
        }
        connections[connection.id] = connection
        metrics.setOpenConnections(connections.count)
        // Token-by-token streaming wants each small write on the wire at once.
        uv_tcp_nodelay(tcp, 1)
        startReading(connection)
        guard connections.count > config.maxConnections else { return }
        // At the cap: an idle keep-alive connection may be closed at any time (RFC 9112 9.3), so
        // the oldest one makes room; health checks are never locked out by idle clients.
        var oldestIdle: ServerConnection?
        for candidate in connections.values where candidate !== connection && candidate.machine.isIdle && candidate.requests.isEmpty {
            if oldestIdle.map({ candidate.id < $0.id }) ?? true { oldestIdle = candidate }
        }
        if let oldestIdle {
            metrics.recordShedConnection()
            close(oldestIdle)
        } else {
            let error = APIError.overloaded("too many open connections (limit \(config.maxConnections)); retry later",
                                            retryAfterSeconds: config.retryAfterSeconds)
            perform(connection.machine.reject(error), on: connection)
        }
    }

    private func startReading(_ connection: ServerConnection) {
        connection.reading = true
        uv_read_start(connection.stream, { handle, _, buf in
            guard let handle, let buf else { return }
            let conn = Unmanaged<ServerConnection>.fromOpaque(handle.pointee.data).takeUnretainedValue()
            let server = APIServer.server(handle.pointee.loop.pointee.data)
            buf.pointee.base = server.readBuffer.assumingMemoryBound(to: CChar.self)
            buf.pointee.len = 65536
            _ = conn
        }, { stream, nread, buf in
            guard let stream else { return }
            let conn = Unmanaged<ServerConnection>.fromOpaque(stream.pointee.data).takeUnretainedValue()
            let server = APIServer.server(stream.pointee.loop.pointee.data)
            if conn.closing {
                // Lingering after our close: drop the input; EOF or an error ends it.
                if nread < 0 { conn.peerEOF = true; server.endLinger(conn) }
                return
            }
            if nread > 0, let base = buf?.pointee.base {
                let bytes = Array(UnsafeRawBufferPointer(start: base, count: Int(nread)))
                server.perform(conn.machine.receive(bytes, now: APIServer.now()), on: conn)
                server.accountHeldBytes(conn)
            } else if nread == Int(UV_EOF.rawValue) {
                // Half-close: the client may still read the answers to what it sent.
                conn.peerEOF = true
                uv_read_stop(stream)
                conn.reading = false
                server.perform(conn.machine.peerFinishedSending(now: APIServer.now()), on: conn)
                server.accountHeldBytes(conn)
            } else if nread < 0 {
                // Reset or error: the client is gone, whatever it was waiting for.
                server.abort(conn)
            }
        })
    }

    /// Brings the held-bytes total up to date with `connection`'s parser; when the total exceeds
    /// the cap, a connection with a partial request of more than 1 KiB is answered 503 (small
    /// requests such as health checks still pass).
    private func accountHeldBytes(_ connection: ServerConnection) {
        guard !connection.closing else { return }
        let now = connection.machine.bufferedRequestBytes
        _ = holdRequestBytes(now - connection.heldBytes)
        connection.heldBytes = now
        guard now > 1024, heldRequestBytesNow > memory.heldBytesCap else { return }
        let error = APIError.overloaded("the server holds too many request bytes (limit \(memory.heldBytesCap)); retry later",
                                        retryAfterSeconds: config.retryAfterSeconds)
        perform(connection.machine.reject(error), on: connection)
        if !connection.closing {
            _ = holdRequestBytes(-connection.heldBytes)
            connection.heldBytes = 0
        }
    }

    /// Carries out a state machine's actions.
    private func perform(_ actions: [ConnectionAction], on connection: ServerConnection) {
        for action in actions {
            switch action {
            case let .write(bytes): write(bytes, to: connection)
            case let .startRequest(id, request): startRequest(id, request, on: connection)
            case let .cancel(id): cancel(id, on: connection)
            case .pauseReading:
                if connection.reading { uv_read_stop(connection.stream); connection.reading = false }
            case .resumeReading:
                if !connection.reading, !connection.closing { startReading(connection) }
            case .close: close(connection)
            case let .rejected(status): metrics.recordRequest(route: "connection", status: status)
            }
        }
    }

    private func write(_ bytes: [UInt8], to connection: ServerConnection) {
        guard !connection.closing, !bytes.isEmpty else { return }
        // Layout: the uv_write_t, the byte count (to subtract from `unsentBytes` when done), the bytes.
        let header = MemoryLayout<uv_write_t>.stride + 16
        let raw = UnsafeMutableRawPointer.allocate(byteCount: header + bytes.count, alignment: 16)
        let request = raw.assumingMemoryBound(to: uv_write_t.self)
        (raw + MemoryLayout<uv_write_t>.stride).storeBytes(of: bytes.count, as: Int.self)
        let data = raw + header
        bytes.withUnsafeBytes { data.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        var buf = uv_buf_init(data.assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
        let result = uv_write(request, connection.stream, &buf, 1) { request, status in
            guard let request else { return }
            if let stream = request.pointee.handle {
                let server = APIServer.server(stream.pointee.loop.pointee.data)
                server.unsentBytes -= (UnsafeMutableRawPointer(request) + MemoryLayout<uv_write_t>.stride).load(as: Int.self)
                if status < 0, let data = stream.pointee.data {
                    let conn = Unmanaged<ServerConnection>.fromOpaque(data).takeUnretainedValue()
                    if !conn.closing { server.abort(conn) }
                }
            }
            UnsafeMutableRawPointer(request).deallocate()
        }
        if result != 0 {
            raw.deallocate()
            abort(connection)
            return
        }
        unsentBytes += bytes.count
        let queued = uv_stream_get_write_queue_size(connection.stream)
        if queued > APIServer.maxUnsentBytes
            || (unsentBytes > RequestMemory.unsentBytesCap && queued > RequestMemory.unsentBytesPerConnectionFloor) {
            // A client that stops reading would make us buffer its response without bound:
            // treat it as gone, which also cancels its generation.
            abort(connection)
        }
    }

    /// Drops a connection without flushing: the client is gone or not reading, so waiting for
    /// its writes could take forever. Its requests are cancelled.
    private func abort(_ connection: ServerConnection) {
        connection.aborting = true
        perform(connection.machine.peerClosed(), on: connection)
    }

    /// Closes after the queued writes are flushed (uv_close alone would drop them), unless aborting.
    private func close(_ connection: ServerConnection) {
        guard !connection.closing else { return }
        connection.closing = true
        for (_, state) in connection.requests { cancelEngine(state) }
        connection.requests.removeAll()
        connections[connection.id] = nil
        _ = holdRequestBytes(-connection.heldBytes)
        connection.heldBytes = 0
        metrics.setOpenConnections(connections.count)
        if connection.aborting {
            if connection.reading { uv_read_stop(connection.stream); connection.reading = false }
            closeHandle(connection)
            return
        }
        let shutdownRequest = UnsafeMutablePointer<uv_shutdown_t>.allocate(capacity: 1)
        let r = uv_shutdown(shutdownRequest, connection.stream) { request, _ in
            guard let request else { return }
            let stream = request.pointee.handle!
            request.deallocate()
            let conn = Unmanaged<ServerConnection>.fromOpaque(stream.pointee.data).takeUnretainedValue()
            conn.shutdownDone = true
            // Once the client has sent EOF (or lingering ended) nothing more is coming: close.
            if conn.peerEOF || conn.lingerDeadline == nil { APIServer.server(stream.pointee.loop.pointee.data).closeHandle(conn) }
        }
        if r != 0 {
            shutdownRequest.deallocate()
            if connection.reading { uv_read_stop(connection.stream); connection.reading = false }
            closeHandle(connection)
            return
        }
        guard !connection.peerEOF else {
            if connection.reading { uv_read_stop(connection.stream); connection.reading = false }
            return
        }
        // Keep reading (and dropping) what the client still sends until it closes or the linger
        // time ends: closing a socket with unread input makes the kernel send a reset, and a
        // client that gets one may lose the response we just wrote.
        connection.lingerDeadline = Self.now() + Self.lingerSeconds
        lingering[connection.id] = connection
        if !connection.reading { startReading(connection) }
    }

    /// Ends a connection's lingering (EOF from the client, an error, or the deadline).
    private func endLinger(_ connection: ServerConnection) {
        guard lingering.removeValue(forKey: connection.id) != nil else { return }
        connection.lingerDeadline = nil
        if connection.reading { uv_read_stop(connection.stream); connection.reading = false }
        if connection.shutdownDone || connection.peerEOF { closeHandle(connection) }
    }

    private func closeHandle(_ connection: ServerConnection) {
        guard !connection.handleClosing else { return }
        connection.handleClosing = true
        lingering[connection.id] = nil
        uv_close(connection.handle) { handle in
            guard let handle else { return }
            Unmanaged<ServerConnection>.fromOpaque(handle.pointee.data).release()
            UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_tcp_t.self).deallocate()
        }
    }

    private func cancelEngine(_ state: RequestState) {
        state.cancelled = true
        if state.responder?.isFinished != true {
            for engineID in state.engineIDs { backend?.service.cancel(engineID) }
        }
    }

    private func cancel(_ id: UInt64, on connection: ServerConnection) {
        guard let state = connection.requests.removeValue(forKey: id) else { return }
        cancelEngine(state)
    }

    private func startRequest(_ id: UInt64, _ request: HTTPRequest, on connection: ServerConnection) {
        let state = RequestState(route: APIRouter.routeName(request), method: request.method, path: request.path,
                                 started: Self.now(), cors: router.corsHeaders(request))
        connection.requests[id] = state
        // Health checks and metrics are answered here, on the loop thread: they are cheap, and no
        // amount of queued decoding work may delay them.
        if request.body.isEmpty, request.method == "GET" || request.method == "HEAD",
           state.route == "/health" || state.route == "/health/detail" || state.route == "/metrics",
           case let .response(response) = router.route(request, backend: backend, draining: isDraining) {
            deliver(ResponsePart.complete(response), state: state, id: id, on: connection)
            return
        }
        let bodyBytes = request.body.count
        guard holdRequestBytes(bodyBytes, admit: true) else {
            let error = APIError.overloaded("the server holds too many request bytes (limit \(memory.heldBytesCap)); retry later",
                                            retryAfterSeconds: config.retryAfterSeconds)
            deliver(ResponsePart.complete(error.response), state: state, id: id, on: connection)
            return
        }
        let connectionID = connection.id
        let router = self.router
        let inbox = self.inbox
        let lane = bodyBytes > RequestMemory.smallBodyBytes ? largeLane : smallLane
        lane.addOperation { [self] in
            let backend = self.backend
            let outcome = router.route(request, backend: backend, draining: self.isDraining)
            _ = holdRequestBytes(-bodyBytes)
            switch outcome {
            case let .response(response):
                inbox.push(.response(connection: connectionID, request: id, response))
            case let .generate(job):
                guard let backend else { return }
                submit(job, backend: backend, connection: connectionID, request: id)
            }
        }
    }

    /// Admission and submission, on a worker thread.
    private func submit(_ job: CompletionJob, backend: ModelBackend, connection: UInt64, request: UInt64) {
        // Each choice is an engine sequence and counts against the queue limit (`n` of them).
        let choices = max(1, job.choices)
        stateLock.lock()
        let admitted = inFlight + choices <= config.maxQueuedRequests
        if admitted { inFlight += choices }
        let count = inFlight
        stateLock.unlock()
        guard admitted else {
            let error = APIError.overloaded("too many requests queued (limit \(config.maxQueuedRequests)); retry later",
                                            retryAfterSeconds: config.retryAfterSeconds)
            inbox.push(.response(connection: connection, request: request, error.response))
            return
        }
        metrics.setRequestsInFlight(count)
        let inbox = self.inbox
        var engineIDs: [UInt64] = []
        let group = UInt64.random(in: 1...UInt64.max)
        do {
            for choice in 0..<choices {
                var generation = job.request
                // Each choice draws from its own seeded stream, so n > 1 with a seed gives n different,
                // reproducible completions.
                if choice > 0, let seed = generation.sampling.seed { generation.sampling.seed = seed &+ UInt64(choice) }
                // The choices share one prefill: the others fork the first's KV and last-prompt logits.
                if choices > 1 { generation.sharedPrefill = SharedPrefill(group: group, size: choices) }
                engineIDs.append(try backend.service.submit(generation) { event in
                    inbox.push(.event(connection: connection, request: request, choice: choice, event))
                })
            }
            inbox.push(.submitted(connection: connection, request: request, job: job, engineIDs: engineIDs))
        } catch {
            // Choices already admitted are cancelled; their final events release their share.
            for id in engineIDs { backend.service.cancel(id) }
            for _ in engineIDs.count..<choices { releaseInFlight() }
            let apiError: APIError
            if let e = error as? SubmissionError {
                switch e.kind {
                case .invalid: apiError = .invalidRequest(e.description)
                case .promptTooLong: apiError = .invalidRequest(e.description)
                case .queueFull: apiError = .overloaded(e.description, retryAfterSeconds: config.retryAfterSeconds)
                case .shuttingDown:
                    apiError = APIError(status: 503, message: e.description, type: "unavailable_error",
                                        headers: [("Retry-After", String(config.retryAfterSeconds))])
                }
            } else {
                apiError = .server("\(error)")
            }
            inbox.push(.response(connection: connection, request: request, apiError.response))
        }
    }

    private func releaseInFlight() {
        stateLock.lock()
        inFlight -= 1
        let count = inFlight
        stateLock.unlock()
        metrics.setRequestsInFlight(count)
    }

    private func drainInbox() {
        for message in inbox.drain() {
            switch message {
            case .shutdown:
                beginShutdown()
            case let .response(connectionID, requestID, response):
                guard let connection = connections[connectionID], let state = connection.requests[requestID] else { continue }
                deliver(ResponsePart.complete(response), state: state, id: requestID, on: connection)
            case let .submitted(connectionID, requestID, job, engineIDs):
                guard let connection = connections[connectionID], let state = connection.requests[requestID], !state.cancelled else {
                    // The client left while the request was being admitted.
                    for engineID in engineIDs { backend?.service.cancel(engineID) }
                    continue
                }
                let codec = backend?.codec
                let responder = GenerationResponder(job: job, tokenText: { id in codec?.decode([id]) ?? "" })
                state.responder = responder
                state.engineIDs = engineIDs
                var parts = responder.start()
                for (choice, event) in state.pendingEvents { parts += consume(event, choice: choice, state: state, responder: responder) }
                state.pendingEvents = []
                deliver(parts, state: state, id: requestID, on: connection)
            case let .event(connectionID, requestID, choice, event):
                if case .token = event {} else { releaseInFlight() }
                guard let connection = connections[connectionID], let state = connection.requests[requestID] else { continue }
                guard let responder = state.responder else {
                    state.pendingEvents.append((choice, event))
                    continue
                }
                deliver(consume(event, choice: choice, state: state, responder: responder), state: state, id: requestID, on: connection)
            }
        }
    }

    private func consume(_ event: GenerationEvent, choice: Int, state: RequestState, responder: GenerationResponder) -> [ResponsePart] {
        if case let .finished(_, _, usage, timings) = event { metrics.recordCompletion(usage: usage, timings: timings) }
        // One failed choice fails the response: the others stop too.
        if case .failed = event { for engineID in state.engineIDs { backend?.service.cancel(engineID) } }
        return responder.consume(event, choice: choice)
    }

    /// Hands parts to the state machine, adding CORS headers and counting finished responses.
    private func deliver(_ parts: [ResponsePart], state: RequestState, id: UInt64, on connection: ServerConnection) {
        guard !parts.isEmpty else { return }
        var out: [ResponsePart] = []
        for part in parts {
            switch part {
            case let .head(status, headers):
                var headers = headers
                for (name, value) in state.cors { headers.add(name, value) }
                state.status = status
                out.append(.head(status: status, headers: headers))
            case .end:
                out.append(part)
                connection.requests[id] = nil
                metrics.recordRequest(route: state.route, status: state.status)
                if config.logRequests {
                    let ms = Int((Self.now() - state.started) * 1000)
                    FileHandle.standardError.write(Data("\(state.method) \(state.path) \(state.status) \(ms) ms\n".utf8))
                }
            default:
                out.append(part)
            }
        }
        perform(connection.machine.respond(id, out, now: Self.now()), on: connection)
    }

    private func beginShutdown() {
        guard shutdownDeadline == nil else { return }
        shutdownDeadline = Self.now() + config.shutdownGracePeriod
        stateLock.lock()
        drainingValue = true
        let handler = drainHandler
        stateLock.unlock()
        handler?()
        if listening {
            listening = false
            uv_close(UnsafeMutableRawPointer(listener).assumingMemoryBound(to: uv_handle_t.self)) { handle in
                guard let handle else { return }
                APIServer.server(handle.pointee.data).handleClosed()
            }
        }
        for connection in Array(connections.values) { perform(connection.machine.beginDrain(), on: connection) }
        tick()
    }

    private func tick() {
        let now = Self.now()
        for connection in Array(connections.values) { perform(connection.machine.tick(now: now), on: connection) }
        for connection in Array(lingering.values) where (connection.lingerDeadline ?? 0) <= now { endLinger(connection); closeHandle(connection) }
        guard let deadline = shutdownDeadline, !finished else { return }
        if now >= deadline {
            // Grace period over: cancel what still runs and drop the connections.
            for connection in Array(connections.values) { abort(connection) }
        }
        if connections.isEmpty { finishLoop() }
    }

    private func handleClosed() {
        handlesOpen -= 1
    }

    /// Closes the loop's own handles; `uv_run` returns once they are closed.
    private func finishLoop() {
        finished = true
        inbox.detach()
        for connection in Array(lingering.values) { closeHandle(connection) }
        let closeCallback: uv_close_cb = { handle in
            guard let handle else { return }
            APIServer.server(handle.pointee.data).handleClosed()
        }
        uv_timer_stop(timer)
        uv_close(UnsafeMutableRawPointer(timer).assumingMemoryBound(to: uv_handle_t.self), closeCallback)
        uv_close(UnsafeMutableRawPointer(async).assumingMemoryBound(to: uv_handle_t.self), closeCallback)
        for handle in signals {
            uv_signal_stop(handle)
            uv_close(UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self), closeCallback)
        }
    }
}
