import AEMP
import Foundation
import Testing

/// Edges of HTTP/1.1 where libmicrohttpd 0.9.75 on its own answers late, twice or not at all
/// (issue 15, item 13), against a real gateway process over TCP with raw bytes. The gateway runs
/// with a 30 s `--connection-timeout`: an answer that waits for that deadline fails here (each
/// exchange gives up after 5 s, and a prompt answer comes within 2 s).
@Suite("gateway: libmicrohttpd edges", .serialized, .timeLimit(.minutes(2)))
struct HTTPEdgeTests {
    static let arguments = ["--connection-timeout", "30"]

    @Test("150 query arguments are 414 too_many_arguments (problem+json, one answer, at once); 100 are served")
    func manyQueryArguments() async throws {
        try await HostileInputTests.withGateway(Self.arguments) { gateway, http in
            let box = try await gateway.createMailbox(http)
            let junk = { (n: Int) in (0..<n).map { "a\($0)=\($0)" }.joined(separator: "&") }
            // Also as names without values, and as the bare separators the shortest URL holds most of.
            for query in [junk(150), "wait=0&" + junk(149), String(repeating: "x&", count: 600), String(repeating: "&", count: 1500)] {
                let (answer, took) = try await Self.exchange(gateway, "GET /v1/ports/\(box.name)/messages?\(query) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                let p = expectProblem(try HostileInputTests.response(answer), 414, "too_many_arguments")
                #expect(p["limit"] == 100, "\(p)")
                Self.expectOneAnswer(answer, took)
            }
            // Up to the limit the query is read as before (its arguments count: wait=x is refused).
            let hundred = try await http.request("GET", "/healthz?" + junk(100))
            #expect(hundred.status == 200, "\(hundred)")
            expectProblem(try await http.request("GET", "/v1/ports/\(box.name)/messages?\(junk(99))&wait=x"), 422, "invalid_request")
            let decoded = try await http.request("GET", "/v1/ports/\(box.name)/messages?\(junk(90))&w%61it=0&max=%31")
            #expect(decoded.status == 200 && GatewayNetwork.messages(decoded) == [], "\(decoded)")
        }
    }

    @Test("a chunk of size ffffffffffffffff whose data outgrows --max-body is 413 body_too_large at once, then the connection is closed")
    func absurdChunkSize() async throws {
        try await HostileInputTests.withGateway(Self.arguments + ["--max-body", "1024"]) { gateway, http in
            for size in ["ffffffffffffffff", "FFFFFFFFFFFFFFFF;ext=1", "100000"] {
                // 64 KiB of the chunk arrive, the rest never does.
                let bytes = Array("POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\(size)\r\n".utf8)
                    + [UInt8](repeating: UInt8(ascii: "x"), count: 65_536)
                let (answer, took) = try await Self.exchange(gateway, bytes)
                let p = expectProblem(try HostileInputTests.response(answer), 413, "body_too_large")
                #expect(p["limit"] == 1024, "\(p)")
                Self.expectOneAnswer(answer, took)
            }
            try await gateway.expectAnswers(http, after: "absurd chunk sizes")
        }
    }

    @Test("Transfer-Encoding other than chunked alone: 501 unsupported_transfer_coding (gzip, chunked) or 400 malformed_request (chunked not last), at once, then closed")
    func transferCodings() async throws {
        try await HostileInputTests.withGateway(Self.arguments) { gateway, http in
            let body = "5\r\nhello\r\n0\r\n\r\n"
            for (fields, status, code) in [
                ("Transfer-Encoding: gzip, chunked\r\n", 501, "unsupported_transfer_coding"),
                ("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 501, "unsupported_transfer_coding"),
                ("Transfer-Encoding: chunked, gzip\r\n", 400, "malformed_request"),
                ("Transfer-Encoding: Chunked, identity, chunked\r\n", 400, "malformed_request"),
                ("Transfer-Encoding: gzip\r\n", 400, "malformed_request"),
                ("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", 400, "malformed_request"),
            ] {
                let (answer, took) = try await Self.exchange(
                    gateway, "POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\(fields)\r\n\(body)")
                let r = try HostileInputTests.response(answer)
                expectProblem(r, status, code)
                #expect(r.header("Connection")?.lowercased() == "close", "\(fields): \(r)")
                Self.expectOneAnswer(answer, took)
            }
            // chunked alone, in any case, is read as always.
            let box = try await gateway.createMailbox(http)
            let message = #"{"port": "\#(box.port)", "message": ["chunked"]}"#
            let (sent, _) = try await Self.exchange(
                gateway,
                "POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n"
                    + String(message.utf8.count, radix: 16) + "\r\n\(message)\r\n0\r\n\r\n")
            #expect(try HostileInputTests.response(sent).status == 202, "\(String(decoding: sent, as: UTF8.self))")
        }
    }

    @Test("Content-Length: -1 is one 400 answer (problem+json), then the connection is closed")
    func negativeContentLength() async throws {
        try await HostileInputTests.withGateway(Self.arguments) { gateway, http in
            for length in ["-1", "1x", "99999999999999999999999"] {
                let (answer, took) = try await Self.exchange(
                    gateway, "POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(length)\r\n\r\n{}")
                let r = try HostileInputTests.response(answer)
                #expect(r.status == (length.count > 20 ? 413 : 400), "\(length): \(r)")
                #expect(took < promptly(.seconds(2)), "answered after \(took)")
                // libmicrohttpd 0.9.75 answers these itself, before any callback of the gateway, with
                // its status line and header block twice and an HTML page (see HTTPServer).
                withKnownIssue("libmicrohttpd 0.9.75 answers a malformed Content-Length itself, header block twice, in HTML") {
                    #expect(Self.statusLines(answer) == 1, "\(String(decoding: answer, as: UTF8.self))")
                    #expect(r.header("Content-Type") == "application/problem+json", "\(r)")
                }
            }
            try await gateway.expectAnswers(http, after: "malformed Content-Length")
        }
    }

    @Test("HEAD is answered wherever GET is, with GET's status and headers and no body; long-polls and streams answer their head at once; 405 Allow lists HEAD")
    func head() async throws {
        try await HostileInputTests.withGateway(Self.arguments) { gateway, http in
            let box = try await gateway.createMailbox(http)
            #expect(try await http.request("POST", "/v1/send", json: ["port": .string(box.port), "message": ["kept"]]).status == 202)
            try await eventually("the message is queued") {
                try await http.request("GET", "/v1/ports/\(box.name)").json?.objectValue?["queued"]?.integerValue == 1
            }
            // An empty mailbox: a GET of its messages would wait (long-poll) or stream.
            let empty = try await gateway.createMailbox(http)
            for (path, accept) in [
                ("/healthz", ""), ("/openapi.json", ""), ("/v1/node", ""), ("/v1/ports/\(box.name)", ""),
                ("/v1/ports/\(box.name)/messages?wait=0", ""), ("/v1/db/f/keys", ""),
                ("/v1/ports/\(empty.name)/messages?wait=25", ""), ("/v1/db/f/watch?wait=25", ""),
                ("/v1/ports/\(empty.name)/messages", "text/event-stream"), ("/v1/db/f/watch", "text/event-stream"),
                ("/v1/nodes/events", "text/event-stream"),
                ("/v1/ports/nobox", ""), ("/v1/nope", ""), ("/v1/send", ""), ("/v1/ports/\(box.name)/messages?max=0", ""),
            ] {
                let fields = accept.isEmpty ? "" : "Accept: \(accept)\r\n"
                // HEAD, then GET /healthz on the same connection: what follows HEAD's header block
                // must be the second answer, so HEAD sent no body. (The head of an event stream
                // has no length: the connection ends after it, as it would after the stream.)
                let (answer, took) = try await Self.exchange(
                    gateway, "HEAD \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\(fields)\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                #expect(took < promptly(.seconds(2)), "HEAD \(path) took \(took)")
                let text = String(decoding: answer, as: UTF8.self)
                let end = try #require(text.range(of: "\r\n\r\n"), "HEAD \(path): \(text)")
                if accept.isEmpty {
                    #expect(text[end.upperBound...].hasPrefix("HTTP/1.1 200 OK\r\n"), "HEAD \(path) sent a body: \(text)")
                    #expect(Self.statusLines(answer) == 2, "HEAD \(path): \(text)")
                } else {
                    #expect(text[end.upperBound...].isEmpty, "HEAD \(path) sent a body: \(text)")
                }
                let headOnly = try #require(HTTPTestResponse.parse(Array(text[..<end.upperBound].utf8)))
                if accept.isEmpty && !path.contains("wait=25") {
                    // GET's status and headers (but its own request ID and date).
                    let get = try await http.request("GET", path)
                    #expect(headOnly.status == get.status, "HEAD \(path): \(headOnly) / GET \(get)")
                    let names = { (r: HTTPTestResponse) in Set(r.headers.map { $0.0.lowercased() }).subtracting(["date", "x-request-id", "connection"]) }
                    #expect(names(headOnly) == names(get), "HEAD \(path): \(headOnly) / GET \(get)")
                    for name in ["content-type", "allow", "x-aemp-last"] {
                        #expect(headOnly.header(name) == get.header(name), "HEAD \(path) \(name): \(headOnly) / GET \(get)")
                    }
                    // The length of the body GET sends, where that body does not change between the two.
                    if ["/healthz", "/openapi.json", "/v1/ports/\(box.name)/messages?wait=0"].contains(path) {
                        #expect(headOnly.header("Content-Length") == get.header("Content-Length"), "HEAD \(path): \(headOnly) / GET \(get)")
                    }
                } else {
                    #expect(headOnly.status == 200, "HEAD \(path): \(headOnly)")
                    #expect(headOnly.header("Content-Type") == (accept.isEmpty ? "application/json" : "text/event-stream"), "HEAD \(path): \(headOnly)")
                }
            }
            // HEAD read nothing off the mailbox.
            let polled = try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=0")
            #expect(GatewayNetwork.messages(polled) == [["kept"]], "\(polled)")
            // Where GET is allowed, 405's Allow names HEAD too.
            for (method, path, allow) in [
                ("POST", "/healthz", "GET, HEAD"), ("DELETE", "/v1/node", "GET, HEAD"), ("POST", "/v1/ports/\(box.name)", "GET, HEAD, DELETE"),
                ("POST", "/v1/db/f/keys", "GET, HEAD, PUT, DELETE"), ("GET", "/v1/send", "POST"), ("HEAD", "/v1/ports", "POST"),
            ] {
                let r = try await http.request(method, path, body: method == "POST" ? [] : nil)
                #expect(r.status == 405 && r.header("Allow") == allow, "\(method) \(path): \(r)")
            }
        }
    }

    // MARK: - Helpers

    /// Sends `bytes` on a new connection; everything answered until the gateway closed it, and how
    /// long that took. Fails after 5 s (the gateway's connection timeout is 30 s).
    static func exchange(_ gateway: GatewayProcess, _ bytes: [UInt8]) async throws -> ([UInt8], Duration) {
        let started = ContinuousClock.now
        let answer = try await gateway.raw(bytes, timeout: 5)
        return (answer, ContinuousClock.now - started)
    }

    static func exchange(_ gateway: GatewayProcess, _ text: String) async throws -> ([UInt8], Duration) {
        try await exchange(gateway, Array(text.utf8))
    }

    /// Status lines in `bytes` (a response's lines that start with `HTTP/1.`).
    static func statusLines(_ bytes: [UInt8]) -> Int {
        String(decoding: bytes, as: UTF8.self).components(separatedBy: "\r\n").filter { $0.hasPrefix("HTTP/1.") }.count
    }

    /// The gateway answered once, within 2 s, and closed the connection.
    static func expectOneAnswer(_ answer: [UInt8], _ took: Duration, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(took < promptly(.seconds(2)), "answered after \(took)", sourceLocation: sourceLocation)
        #expect(statusLines(answer) == 1, "\(String(decoding: answer, as: UTF8.self))", sourceLocation: sourceLocation)
    }
}
