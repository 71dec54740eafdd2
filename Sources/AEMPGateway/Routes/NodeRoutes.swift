import AEMP
import NIOCore

/// `/v1/node`, `/v1/nodes`, `/v1/nodes/events`.
extension Gateway {

    /// The gateway's own node: ID, master, seeds, connections (which are TLS, and how each
    /// authenticated), the mesh certificate in use.
    func nodeInfo(_ request: HTTPRequest, _ exchange: Exchange) -> HTTPResponse? {
        let node = self.node
        let configuration = self.configuration
        let master = self.master
        let mailboxCount = mailboxes.count
        Task {
            let up = await node.upNodes()
            let listen = await node.listenAddresses()
            let connections = await node.connections()
            var meshTLS = Value.null
            if let certificate = configuration.node.certificate {
                meshTLS = [
                    "subject": .string(certificate.subject), "fingerprint": .string(certificate.fingerprint),
                    "not_after": .string(MeshCertificate.format(certificate.notValidAfter)),
                ]
            }
            exchange.respond(
                .json(
                    200,
                    [
                        "node": .string(node.id), "master": master.map { .string($0) } ?? .null,
                        "standalone": .bool(configuration.isStandalone),
                        "seeds": .array(configuration.node.seeds.map { .string($0) }),
                        "listen": .array(listen.map { .string($0) }),
                        "up_nodes": .array(up.map { .string($0) }),
                        "mailboxes": .int(Int64(mailboxCount)),
                        "mesh_tls": meshTLS,
                        "connections": .array(
                            connections.map { c in
                                [
                                    "node": .string(c.node), "address": .string(c.address), "dialed": .bool(c.dialed),
                                    "tls": c.tls.map { .string($0) } ?? .null, "auth": .string(c.auth),
                                    "send_framing": .string(c.sendFraming), "receive_framing": .string(c.receiveFraming),
                                ]
                            }),
                    ]))
        }
        return nil
    }

    /// Every node the network knows (family `'l`), with its addresses and whether we are connected.
    func nodeList(_ request: HTTPRequest, _ exchange: Exchange) -> HTTPResponse? {
        guard master != nil else {
            fail(exchange, .meshUnavailable())
            return nil
        }
        let node = self.node
        let timeout = queryTimeAmount
        let task = Task { [self] in
            let known: [String: Value]
            do throws(RequestError) {
                known = try await node.dbFamily("'l", timeout: timeout)
            } catch {
                return answerQueryFailure(error, exchange)
            }
            let up = Set(await node.upNodes())
            var list: [Value] = []
            for id in Set(known.keys).union(up).union([node.id]).sorted() {
                let addresses = known[id]?.arrayValue ?? []
                list.append([
                    "node": .string(id), "addresses": .array(addresses), "public": .bool(!addresses.isEmpty),
                    "connected": .bool(up.contains(id)), "self": .bool(id == node.id),
                ])
            }
            exchange.respond(.json(200, ["nodes": .array(list)]))
        }
        exchange.onHangup { task.cancel() }
        return nil
    }

    /// SSE: the nodes connected now (`snapshot`), then `up` / `down` events.
    func nodeEvents(_ request: HTTPRequest) -> HTTPResponse {
        // HEAD: the stream's header block, nothing registered.
        if isHead(request) { return .eventStream(EventStream(limit: 0)) }
        let stream = EventStream(limit: configuration.streamBacklog, budget: streamBudget)
        let node = self.node
        // Registered before the snapshot is taken: an event may repeat what the snapshot says,
        // none is lost.
        mesh.addStream(stream)
        Task {
            let up = await node.upNodes()
            stream.send(
                ServerSentEvent.retry(1000)
                    + ServerSentEvent.encode(
                        id: nil, event: "snapshot",
                        data: ["node": .string(node.id), "up_nodes": .array(up.map { .string($0) })]),
                orEndWith: FamilyFeed.overflowEvent)
        }
        return .eventStream(stream)
    }
}
