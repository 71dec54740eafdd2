import Synchronization
import AEMP
import Prometheus

/// The gateway's metrics, in a Prometheus registry of its own: served as text at `GET /metrics`.
///
/// One registry per `Gateway`, never swift-metrics' global `MetricsSystem`: several gateways in
/// one process (the tests run several) each count their own requests, and nothing is bootstrapped
/// twice. Counters are made once (request counters on the first request of a route and status)
/// and then only incremented: atomics, plus one short lock for the status lookup. Gauges of state
/// the gateway already keeps (connections, streams, mailboxes…) are read when scraped, not kept
/// up to date on every change.
final class GatewayMetrics: Sendable {
    /// Where every metric lives; `emitToBuffer()` gives the text exposition format.
    let registry: PrometheusCollectorRegistry

    /// Per route template: the latency histogram and the request counters by status.
    private let routes: [RouteMetrics]

    // Counters.
    let droppedMessages: Counter
    let droppedHandedMessages: Counter
    let droppedForMemory: Counter
    let mailboxBytes: Gauge
    let streamBytes: Gauge
    let masterChanges: Counter
    let hangups: Counter
    let meshHandshakesRefused: Counter
    /// What `hangups` and `meshHandshakesRefused` were last advanced to: others count them (the
    /// servers, the node), and a scrape adds the difference (`advance`).
    let hangupsReported = Atomic<Int>(0)
    let meshHandshakesRefusedReported = Atomic<Int>(0)
    let messagesSent: Counter
    let sendsRefusedBacklog: Counter
    let sendsRefusedUnreachable: Counter
    let refusedTooDeep: Counter
    let refusedTooLarge: Counter
    /// `BrowserSafety`'s refusals: Host, Origin, Content-Type.
    let refusedHost: Counter
    let refusedOrigin: Counter
    let refusedContentType: Counter
    let messagesDelivered: Counter
    let requestBytes: Counter
    let responseBytes: Counter
    let logLinesSuppressed: Counter
    /// What of the log rate limiter's count was exported so far.
    private let logLinesSuppressedExported = Locked(0)

    // Gauges, set when scraped (`Gateway.collectMetrics`).
    let connections: Gauge
    let eventStreams: Gauge
    let parkedLongPolls: Gauge
    let mailboxes: Gauge
    let queuedMessages: Gauge
    let familyFeeds: Gauge
    let dormantFeeds: Gauge
    let meshConnections: Gauge
    let meshTLSConnections: Gauge
    let masterAttached: Gauge
    let callsInFlight: Gauge

    /// The codecs' process-wide `ValueEvents`, by kind, and what was exported of each so far.
    private let valueEvents: [Counter]
    private let valueEventsExported = Locked<[Int]>(Array(repeating: 0, count: ValueEvents.Kind.allCases.count))

    /// Latency buckets: from a quick answer to a long-poll's whole wait (capped at 120 s by default).
    static let latencyBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120),
    ]

    init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "aemp_gateway", metricName: metric, unitName: unit, helpText: help)
        }
        let latency = name(
            "http_request_duration", "seconds",
            "Time from a complete request to its queued response, by route template (long-polls include their wait).")
        // One per path template of the route table, and `other` (no route) last.
        routes = (0...Gateway.routes.paths.count).map { label in
            let template = Gateway.routes.template(label)
            return RouteMetrics(
                template: template, registry: registry,
                latency: registry.makeDurationHistogram(
                    descriptor: latency, labels: [("route", template)], buckets: Self.latencyBuckets))
        }
        droppedMessages = registry.makeCounter(
            descriptor: name(
                "mailbox_dropped_messages", "total",
                "Messages a full mailbox gave up before any client was handed them (oldest first)."))
        droppedForMemory = registry.makeCounter(
            descriptor: name(
                "mailbox_dropped_for_memory", "total",
                "Messages mailboxes gave up because all mailboxes together held --max-mailbox-bytes (also in the two dropped counters)."))
        streamBytes = registry.makeGauge(
            descriptor: name("sse_unsent_bytes", "", "Bytes queued in event streams and not yet taken by libmicrohttpd, all together, against --max-stream-bytes."))
        mailboxBytes = registry.makeGauge(
            descriptor: name("mailbox_bytes", "", "Bytes held by all mailboxes together (estimated), against --max-mailbox-bytes."))
        droppedHandedMessages = registry.makeCounter(
            descriptor: name(
                "mailbox_dropped_handed_messages", "total",
                "Messages a full mailbox gave up after handing them to a client that never acknowledged them."))
        meshHandshakesRefused = registry.makeCounter(
            descriptor: name(
                "mesh_handshakes_refused", "total",
                "Mesh connections closed on arrival: --max-mesh-handshakes (or the per-address cap) were in their handshake."))
        hangups = registry.makeCounter(
            descriptor: name(
                "http_hangups", "total",
                "Clients that hung up while their request was parked or their stream idle (answered 499, or the stream ended, at once)."))
        masterChanges = registry.makeCounter(
            descriptor: name("master_changes", "total", "Times the gateway's node changed its master (attach and loss included)."))
        messagesSent = registry.makeCounter(
            descriptor: name("messages_sent", "total", "Messages sent into the network through /v1/send and /v1/call."))
        sendsRefusedUnreachable = registry.makeCounter(
            descriptor: name(
                "sends_refused_unreachable", "total",
                "Sends and calls refused with 502 node_unreachable: a destination node neither connected nor in the directory."))
        sendsRefusedBacklog = registry.makeCounter(
            descriptor: name(
                "sends_refused_backlogged", "total",
                "Sends and calls refused with 503 peer_backlogged: the destination node was not reading fast enough."))
        refusedTooDeep = registry.makeCounter(
            descriptor: name(
                "requests_refused_too_deep", "total",
                "Sends, calls and database writes refused with 422 too_deep: nested deeper than Perl decodes in the packet carrying it."))
        refusedTooLarge = registry.makeCounter(
            descriptor: name(
                "requests_refused_too_large", "total",
                "Sends, calls and database writes refused with 413 message_too_large: the packet would exceed --max-packet."))
        let browser = name(
            "requests_refused_browser", "total",
            "Requests refused by the browser safety checks: 403 host_not_allowed (check=host), 403 origin_not_allowed (check=origin), 415 unsupported_media_type (check=content_type).")
        refusedHost = registry.makeCounter(descriptor: browser, labels: [("check", "host")])
        refusedOrigin = registry.makeCounter(descriptor: browser, labels: [("check", "origin")])
        refusedContentType = registry.makeCounter(descriptor: browser, labels: [("check", "content_type")])
        messagesDelivered = registry.makeCounter(
            descriptor: name("mailbox_delivered_messages", "total", "Messages and monitor events delivered into mailboxes."))
        requestBytes = registry.makeCounter(
            descriptor: name("http_request_body", "bytes_total", "Bytes of HTTP request bodies read."))
        responseBytes = registry.makeCounter(
            descriptor: name("http_response_body", "bytes_total", "Bytes of HTTP response bodies written (event streams included)."))
        logLinesSuppressed = registry.makeCounter(
            descriptor: name(
                "log_lines_suppressed", "total",
                "Log lines left out by rate limiting (--log-burst per --log-interval for each kind of line); each interval's summary line says how many."))
        connections = registry.makeGauge(descriptor: name("http_connections", "", "HTTP connections open."))
        eventStreams = registry.makeGauge(descriptor: name("sse_streams", "", "Server-Sent-Events streams open (mailboxes, feeds, node events)."))
        parkedLongPolls = registry.makeGauge(
            descriptor: name("long_polls_parked", "", "Long-polls waiting for a message or a change (mailboxes and feeds)."))
        mailboxes = registry.makeGauge(descriptor: name("mailboxes", "", "Mailboxes held."))
        familyFeeds = registry.makeGauge(
            descriptor: name("family_feeds", "", "Family feeds with a db_mon subscription (watched by clients, or idle for less than --feed-idle)."))
        dormantFeeds = registry.makeGauge(
            descriptor: name("family_feeds_remembered", "", "Idle families whose feed epoch and index are kept (at most --feed-memory)."))
        queuedMessages = registry.makeGauge(
            descriptor: name("mailbox_queued_messages", "", "Messages held in mailboxes, not yet acknowledged (handed to a client or not; dropped entries not counted)."))
        meshConnections = registry.makeGauge(descriptor: name("mesh_connections", "", "AEMP nodes the gateway's node is connected to."))
        meshTLSConnections = registry.makeGauge(
            descriptor: name("mesh_tls_connections", "", "Established AEMP connections of the gateway's node that are TLS (--mesh-cert)."))
        masterAttached = registry.makeGauge(descriptor: name("master_attached", "", "1 while the gateway's node is attached to a master, else 0."))
        callsInFlight = registry.makeGauge(descriptor: name("calls_in_flight", "", "/v1/call requests waiting for their reply."))
        let valueEvent = name(
            "value_events", "total",
            "Values converted or dropped by the codecs, and packets skipped or not sent for their values, by kind (README: What the mesh can carry).")
        valueEvents = ValueEvents.Kind.allCases.map { registry.makeCounter(descriptor: valueEvent, labels: [("kind", $0.label)]) }
    }

    /// Brings the value-event counters up to the codecs' counts (when scraped).
    func collectValueEvents() {
        valueEventsExported.withLock { exported in
            for kind in ValueEvents.Kind.allCases {
                let now = ValueEvents.count(kind)
                let delta = now - exported[kind.rawValue]
                if delta > 0 { valueEvents[kind.rawValue].increment(by: Int64(delta)) }
                exported[kind.rawValue] = now
            }
        }
    }

    /// Brings the suppressed-lines counter up to the log rate limiter's count (when scraped).
    func collectSuppressedLines(_ limiter: LogRateLimiter?) {
        guard let limiter else { return }
        logLinesSuppressedExported.withLock { exported in
            let now = limiter.suppressedLines
            if now > exported { logLinesSuppressed.increment(by: Int64(now - exported)) }
            exported = now
        }
    }

    /// Records one answered request (on libmicrohttpd's thread, when the response is queued).
    /// Brings `counter` up to `total`, a count kept elsewhere; `reported` is what it was last
    /// brought to (concurrent scrapes each add only their own difference).
    func advance(_ counter: Counter, reported: borrowing Atomic<Int>, to total: Int) {
        let before = reported.exchange(total, ordering: .relaxed)
        if total > before { counter.increment(by: Int64(total - before)) }
    }

    func requestAnswered(_ label: Int, status: Int, elapsed: Duration, bodyBytesIn: Int, bodyBytesOut: Int) {
        let r = routes[min(max(label, 0), routes.count - 1)]
        r.count(status: status)
        r.latency.record(elapsed)
        if bodyBytesIn > 0 { requestBytes.increment(by: Int64(bodyBytesIn)) }
        if bodyBytesOut > 0 { responseBytes.increment(by: Int64(bodyBytesOut)) }
    }

    /// The text exposition format (`text/plain; version=0.0.4`).
    func exposition() -> [UInt8] { registry.emitToBuffer() }
}

/// The metrics of one route template: its latency histogram, and a counter per status made on
/// first use (the registry's lock is taken then only; afterwards one short lookup).
final class RouteMetrics: Sendable {
    /// The path template (`route` label).
    let template: String
    let latency: DurationHistogram
    private let registry: PrometheusCollectorRegistry
    private let byStatus = Locked<[Int: Counter]>([:])

    init(template: String, registry: PrometheusCollectorRegistry, latency: DurationHistogram) {
        self.template = template
        self.registry = registry
        self.latency = latency
    }

    func count(status: Int) {
        if let c = byStatus.withLock({ $0[status] }) { return c.increment() }
        let c = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "aemp_gateway", metricName: "http_requests", unitName: "total",
                helpText: "HTTP requests answered, by route template and status."),
            labels: [("route", template), ("status", String(status))])
        byStatus.withLock { $0[status] = c }
        c.increment()
    }
}
