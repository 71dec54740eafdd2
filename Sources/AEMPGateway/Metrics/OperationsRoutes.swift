import AEMP

/// `GET /readyz` and `GET /metrics`: what an orchestrator and a Prometheus server ask.
extension Gateway {

    /// `GET /readyz`: 200 while the node is attached to a master (the network is usable), else
    /// 503 `not_ready` with the reason, so a load balancer sends clients to another gateway: the
    /// seeds' latest handshake failures or connect errors in `detail` and in `seeds`.
    func readiness() throws(Problem) -> HTTPResponse {
        if isStopping.load(ordering: .relaxed) { throw .notReady("the gateway is shutting down") }
        guard let master else {
            let seeds = configuration.node.seeds.joined(separator: ", ")
            let problems = node.seedProblems
            var detail = "not attached to a master node; seeds: \(seeds.isEmpty ? "none" : seeds)"
            for p in problems { detail += "; seed \(p.seed): \(p.reason)" }
            var problem = Problem.notReady(detail)
            if !problems.isEmpty {
                problem.extra["seeds"] = .array(problems.map { ["seed": .string($0.seed), "reason": .string($0.reason)] })
            }
            throw problem
        }
        return .json(200, ["status": "ready", "master": .string(master)])
    }

    /// `GET /metrics`: the Prometheus text format. Gauges of state the gateway keeps anyway are
    /// read now; the node's connections are asked on its loop, so the answer comes from a task.
    func metricsResponse(_ exchange: Exchange) -> HTTPResponse? {
        collectGauges()
        let node = self.node
        let metrics = self.metrics
        Task {
            metrics.meshConnections.set(Int64(await node.upNodes().count))
            metrics.meshTLSConnections.set(Int64(await node.connections().count { $0.tls != nil }))
            exchange.respond(
                HTTPResponse(
                    status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                    body: metrics.exposition()))
        }
        return nil
    }

    /// Sets the gauges from the gateway's state: one short lock per mailbox and feed.
    func collectGauges() {
        let servers = allServers
        metrics.connections.set(Int64(servers.reduce(0) { $0 + $1.connectionCount }))
        metrics.advance(metrics.hangups, reported: metrics.hangupsReported, to: servers.reduce(0) { $0 + $1.hangups })
        metrics.advance(metrics.meshHandshakesRefused, reported: metrics.meshHandshakesRefusedReported, to: node.handshakesRefused)
        metrics.eventStreams.set(Int64(servers.reduce(0) { $0 + $1.streams.withLock { $0.count } }))
        let boxes = mailboxes.census
        let feedCount = feeds.census
        metrics.familyFeeds.set(Int64(feedCount.active))
        metrics.dormantFeeds.set(Int64(feedCount.dormant))
        metrics.parkedLongPolls.set(Int64(boxes.parked + feedCount.parked))
        metrics.mailboxes.set(Int64(boxes.mailboxes))
        metrics.queuedMessages.set(Int64(boxes.queued))
        metrics.mailboxBytes.set(Int64(mailboxes.budget.bytes))
        metrics.streamBytes.set(Int64(streamBudget.bytes))
        metrics.masterAttached.set(master == nil ? Int64(0) : 1)
        metrics.callsInFlight.set(Int64(calls.inFlight))
        metrics.collectValueEvents()
        metrics.collectSuppressedLines(configuration.logRateLimiter)
    }
}

extension Problem {
    static func notReady(_ detail: String) -> Problem {
        var p = Problem(503, "not_ready", "Not ready", detail)
        p.headers["Retry-After"] = "1"
        return p
    }
}
