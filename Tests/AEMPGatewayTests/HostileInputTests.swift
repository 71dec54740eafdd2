import AEMP
import BigInt
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Hostile HTTP input against a real standalone gateway process over TCP (issue 7, "Bad input"):
/// invalid UTF-8, deep nesting, huge numbers, 10 MB bodies, header floods, slow requests and
/// 20,000 connection attempts. Every case checks the answer (status, and the problem `code` when
/// the gateway answers itself; libmicrohttpd's own answers are HTML pages and say so), and that the
/// gateway still serves a normal request afterwards.
@Suite("gateway: hostile input", .serialized, .timeLimit(.minutes(5)))
struct HostileInputTests {

    // MARK: - Invalid UTF-8

    /// Byte sequences that are not UTF-8: a stray continuation byte, an overlong '/', an encoded
    /// surrogate, a code point above U+10FFFF, a 5-byte form, a truncated sequence.
    static let notUTF8: [[UInt8]] = [[0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xE2, 0x82]]

    @Test("invalid UTF-8 in a JSON body (a string, a key) is 400 malformed_json on every route that reads one")
    func invalidUTF8Bodies() async throws {
        try await Self.withGateway { gateway, http in
            let box = try await gateway.createMailbox(http)
            let routes = [("POST", "/v1/send"), ("POST", "/v1/call"), ("POST", "/v1/ports"), ("PUT", "/v1/db/f/k"), ("POST", "/v1/db/f/reg"), ("POST", "/v1/ports/\(box.name)/monitor")]
            for bad in Self.notUTF8 {
                let inString = Array(#"{"port": ""#.utf8) + Array(box.port.utf8) + Array(#"", "message": ["x"#.utf8) + bad + Array(#""]}"#.utf8)
                let inKey = Array(#"{"port": ""#.utf8) + Array(box.port.utf8) + Array(#"", "message": [{"k"#.utf8) + bad + Array(#"": 1}]}"#.utf8)
                for (method, path) in routes {
                    for body in [inString, inKey] {
                        let r = try await http.request(method, path, headers: [("Content-Type", "application/json")], body: body)
                        let p = expectProblem(r, 400, "malformed_json")
                        // jansson names the byte: "unable to decode byte 0xff near …".
                        let named = "byte 0x" + String(bad[0], radix: 16)
                        #expect(p["detail"]?.stringValue?.contains(named) == true, "\(method) \(path) \(bad): \(r)")
                    }
                }
            }
            // Nothing of it reached the mailbox.
            #expect(GatewayNetwork.messages(try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=0")) == [])
        }
    }

    @Test("invalid UTF-8 in a path is 400 invalid_path (never replaced by U+FFFD); raw UTF-8 is kept as it is")
    func invalidUTF8Paths() async throws {
        try await Self.withGateway { gateway, http in
            for bad in Self.notUTF8 {
                for (method, path, body) in [
                    ("PUT", Array("/v1/db/".utf8) + bad + Array("/k".utf8), "1"), ("PUT", Array("/v1/db/f/".utf8) + bad, "1"),
                    ("GET", Array("/v1/db/".utf8) + bad + Array("/keys".utf8), ""), ("DELETE", Array("/v1/db/f/".utf8) + bad, ""),
                    ("GET", Array("/v1/ports/".utf8) + bad + Array("/messages".utf8), ""), ("POST", Array("/v1/db/".utf8) + bad + Array("/reg".utf8), "{}"),
                ] {
                    let r = try await Self.raw(gateway, method, path, body: Array(body.utf8))
                    let p = expectProblem(r, 400, "invalid_path")
                    #expect(p["detail"]?.stringValue?.contains("%") == true, "the detail shows the bytes percent-encoded: \(r)")
                }
                // Percent-encoded, the same.
                let encoded = bad.map { String(format: "%%%02X", $0) }.joined()
                expectProblem(try await http.request("PUT", "/v1/db/\(encoded)/k", json: 1), 400, "invalid_path")
            }
            // No family named after the replacement character was written.
            let replaced = try await http.request("GET", "/v1/db/%EF%BF%BD/keys")
            #expect(replaced.status == 200 && replaced.json?.objectValue?["keys"] == [], "\(replaced)")
            // Raw (unencoded) UTF-8 is not percent-encoding, but it is text: kept, not mangled.
            let cafe = try await Self.raw(gateway, "PUT", Array("/v1/db/caf\u{E9}/cr\u{E8}me".utf8), body: Array("1".utf8))
            #expect(cafe.status == 200 && cafe.json?.objectValue?["family"] == "caf\u{E9}" && cafe.json?.objectValue?["subkey"] == "cr\u{E8}me", "\(cafe)")
            try await eventually("the master has caf\u{E9}/cr\u{E8}me") {
                try await http.request("GET", "/v1/db/caf%C3%A9").json?.objectValue?["values"] == ["cr\u{E8}me": 1]
            }
        }
    }

    @Test("invalid UTF-8 in query arguments and header values: 422 invalid_request where they are read, ignored elsewhere")
    func invalidUTF8QueryAndHeaders() async throws {
        let tokenFile = NSTemporaryDirectory() + "hostile-tokens-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: tokenFile) }
        let token = "hostile-input-token-0123456789"
        try "\(token) rw\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        try await Self.withGateway(["--token-file", tokenFile], auth: [("Authorization", "Bearer \(token)")]) { gateway, http in
            let auth = Array("Authorization: Bearer \(token)\r\n".utf8)
            let box = try await gateway.createMailbox(http, auth: [("Authorization", "Bearer \(token)")])
            for bad in Self.notUTF8 {
                let messages = Array("/v1/ports/\(box.name)/messages?".utf8)
                for query in [Array("wait=0&after=".utf8) + bad, Array("wait=0&max=".utf8) + bad, Array("wait=".utf8) + bad] {
                    expectProblem(try await Self.raw(gateway, "GET", messages + query, headers: auth), 422, "invalid_request")
                }
                // The header a long-poll reads: refused like a bad `after`.
                expectProblem(
                    try await Self.raw(gateway, "GET", Array("/v1/ports/\(box.name)/messages?wait=0".utf8), headers: auth + Array("Last-Event-ID: ".utf8) + bad + [13, 10]),
                    422, "invalid_request")
                // A feed's index that cannot be served: a fresh snapshot marked reset (documented), not an error.
                let feed = try await Self.raw(gateway, "GET", Array("/v1/db/f/watch?wait=0&index=".utf8) + bad, headers: auth)
                #expect(feed.status == 200 && feed.json?.objectValue?["reset"] == true, "\(feed)")
                // A token with a broken byte is no token.
                let forged = Array("Authorization: Bearer \(token)".utf8) + bad + [13, 10]
                expectProblem(try await Self.raw(gateway, "GET", Array("/v1/node".utf8), headers: forged), 401, "unauthorized")
                // Header fields nobody reads, and a field name that is not UTF-8: served as usual.
                let ignored = Array("X-Junk: a".utf8) + bad + Array("b\r\nX-".utf8) + bad + Array(": v\r\n".utf8)
                let health = try await Self.raw(gateway, "GET", Array("/healthz".utf8), headers: ignored)
                #expect(health.status == 200, "\(health)")
                let node = try await Self.raw(gateway, "GET", Array("/v1/node".utf8), headers: auth + ignored)
                #expect(node.status == 200 && node.json?.objectValue?["node"] == .string(gateway.nodeID), "\(node)")
            }
        }
    }

    // MARK: - Deep nesting and huge numbers

    @Test("deeply nested JSON: 100,000 levels are 422 too_deep where the body goes on the mesh, else 400 malformed_json (the parser stops at 2048); 2,000 levels are 422 too_deep (the mesh carries 512)")
    func deepNesting() async throws {
        try await Self.withGateway { gateway, http in
            let box = try await gateway.createMailbox(http)
            let arrays = [UInt8](repeating: UInt8(ascii: "["), count: 100_000)
            let objects = Array(String(repeating: #"{"a":"#, count: 100_000).utf8)
            let inEnvelope = Array(#"{"port": "\#(box.port)", "message": "#.utf8) + arrays
            for (method, path, body) in [
                ("POST", "/v1/send", arrays), ("POST", "/v1/send", objects), ("POST", "/v1/send", inEnvelope),
                ("POST", "/v1/call", inEnvelope), ("PUT", "/v1/db/f/deep", arrays), ("PUT", "/v1/db/f/deep", objects),
            ] {
                let r = try await http.request(method, path, headers: [("Content-Type", "application/json")], body: body)
                let p = expectProblem(r, 422, "too_deep")
                #expect(p["limit"] == (method == "PUT" ? 509 : 512), "\(method) \(path): \(r)")
            }
            let r = try await http.request("POST", "/v1/ports", headers: [("Content-Type", "application/json")], body: objects)
            let p = expectProblem(r, 400, "malformed_json")
            #expect(p["detail"]?.stringValue?.contains("depth") == true, "POST /v1/ports: \(r)")
            // Deep, within the parser's limit, beyond what Perl decodes: refused, nothing sent.
            var deep: Value = "bottom"
            for _ in 0..<2_000 { deep = .array([deep]) }
            let sent = try await http.request("POST", "/v1/send", json: ["port": .string(box.port), "message": [deep]])
            expectProblem(sent, 422, "too_deep")
            let polled = try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=0", timeout: 15)
            #expect(GatewayNetwork.messages(polled).isEmpty, "a refused message arrived: \(polled)")
            let stored = try await http.request("PUT", "/v1/db/f/deep", json: deep)
            expectProblem(stored, 422, "too_deep")
        }
    }

    @Test("numbers beyond double range are 400 malformed_json, integers of any size pass through exactly (aemp-protocol §14), never clamped; in query arguments 422")
    func hugeNumbers() async throws {
        try await Self.withGateway { gateway, http in
            let box = try await gateway.createMailbox(http)
            for number in ["1e400", "-1e400", "1" + String(repeating: "0", count: 400) + ".5"] {
                for (method, path, body) in [
                    ("POST", "/v1/send", #"{"port": "\#(box.port)", "message": [\#(number)]}"#),
                    ("POST", "/v1/call", #"{"port": "\#(box.port)", "message": [], "timeout": \#(number)}"#),
                    ("POST", "/v1/ports", #"{"ttl": \#(number)}"#),
                    ("PUT", "/v1/db/numbers/k", number),
                ] {
                    let r = try await http.request(method, path, headers: [("Content-Type", "application/json")], body: Array(body.utf8))
                    let p = expectProblem(r, 400, "malformed_json")
                    let detail = p["detail"]?.stringValue ?? ""
                    #expect(detail.contains("overflow"), "\(method) \(path) \(number.prefix(30)): \(r)")
                }
            }
            // Integers beyond 64 bits are Perl UVs and Math::BigInts: carried exactly, as digits.
            let big = [
                "18446744073709551617", "9223372036854775808", "-9223372036854775809", "18446744073709551615",
                String(repeating: "9", count: 500), "-" + String(repeating: "9", count: 500),
            ]
            let bigSent = try await http.request(
                "POST", "/v1/send", headers: [("Content-Type", "application/json")],
                body: Array(#"{"port": "\#(box.port)", "message": [\#(big.joined(separator: ","))]}"#.utf8))
            #expect(bigSent.status == 202, "\(bigSent)")
            let bigPolled = try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=5", timeout: 15)
            #expect(GatewayNetwork.messages(bigPolled) == [.array(big.map { .integer(BigInt($0)!) })], "\(bigPolled)")
            #expect(bigPolled.text.contains("[" + big.joined(separator: ",") + "]"), "digits changed: \(bigPolled)")
            let bigPut = try await http.request(
                "PUT", "/v1/db/numbers/big", headers: [("Content-Type", "application/json")], body: Array(big[0].utf8))
            #expect(bigPut.status == 200 && bigPut.json?.objectValue?["value"] == .integer(BigInt(big[0])!), "\(bigPut)")
            _ = try await http.request("DELETE", "/v1/db/numbers/big")
            // ... but not where a field wants a count of seconds or messages.
            for number in big {
                for (method, path, body) in [
                    ("POST", "/v1/call", #"{"port": "\#(box.port)", "message": [], "timeout": \#(number)}"#),
                    ("POST", "/v1/ports", #"{"ttl": \#(number)}"#),
                ] {
                    let r = try await http.request(method, path, headers: [("Content-Type", "application/json")], body: Array(body.utf8))
                    expectProblem(r, 422, "invalid_request")
                }
            }
            // Numbers the body parser takes but a field cannot: 422 invalid_request, not clamped.
            for body: Value in [["ttl": 1e300], ["ttl": .int(Int64.max)], ["max_queue": .int(Int64.min)], ["ttl": 1.5]] {
                expectProblem(try await http.request("POST", "/v1/ports", json: body), 422, "invalid_request")
            }
            expectProblem(try await http.request("POST", "/v1/call", json: ["port": .string(box.port), "message": [], "timeout": 1e308]), 422, "invalid_request")
            for query in ["wait=99999999999999999999", "max=1e400", "after=18446744073709551616", "after=-1", "wait=1e3", "max=0x10"] {
                expectProblem(try await http.request("GET", "/v1/ports/\(box.name)/messages?\(query)"), 422, "invalid_request")
            }
            // The largest after is a valid sequence number (nothing after it).
            let last = try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=0&after=18446744073709551615")
            #expect(last.status == 200 && GatewayNetwork.messages(last) == [], "\(last)")
            // A feed index from the far future, or beyond 64 bits: a reset snapshot, as documented.
            let feedID = try #require(try await http.request("GET", "/v1/db/numbers/watch?wait=0").json?.objectValue?["id"]?.stringValue)
            let epoch = feedID.split(separator: "-")[0]
            for index in ["18446744073709551615", "18446744073709551616", String(repeating: "9", count: 500)] {
                let r = try await http.request("GET", "/v1/db/numbers/watch?wait=0&index=\(epoch)-\(index)")
                #expect(r.status == 200 && r.json?.objectValue?["reset"] == true, "\(r)")
            }

            // Within range, nothing changes on the way: int64 exactly (also beyond 2^53, where a
            // double would round), doubles to the last bit.
            let exact: [Value] = [
                .int(Int64.max), .int(Int64.min), .int(9_007_199_254_740_993), .int(-9_007_199_254_740_993),
                .double(1.7976931348623157e308), .double(-1.7976931348623157e308), .double(.leastNonzeroMagnitude), .double(0.1),
                .double(2.2250738585072014e-308),
            ]
            // Sent as text, so the gateway's parser reads exactly these literals.
            let literals = "9223372036854775807, -9223372036854775808, 9007199254740993, -9007199254740993, 1.7976931348623157e308, -1.7976931348623157e308, 5e-324, 0.1, 2.2250738585072014e-308"
            let sent = try await http.request(
                "POST", "/v1/send", headers: [("Content-Type", "application/json")],
                body: Array(#"{"port": "\#(box.port)", "message": [\#(literals)]}"#.utf8))
            #expect(sent.status == 202, "\(sent)")
            let polled = try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=5", timeout: 15)
            #expect(GatewayNetwork.messages(polled) == [.array(exact)], "\(polled)")
            #expect(polled.text.contains("[9223372036854775807,-9223372036854775808,9007199254740993,-9007199254740993,"), "\(polled)")
            // And through the database (the master's copy), the same.
            let put = try await http.request("PUT", "/v1/db/numbers/k", headers: [("Content-Type", "application/json")], body: Array("[\(literals)]".utf8))
            #expect(put.status == 200 && put.json?.objectValue?["value"] == .array(exact), "\(put)")
            try await eventually("the master has the numbers unchanged") {
                try await http.request("GET", "/v1/db/numbers").json?.objectValue?["values"] == ["k": .array(exact)]
            }
        }
    }

    // MARK: - Large bodies

    @Test("a 10 MB body is 413 body_too_large: with Content-Length, a lying Content-Length, and chunked; memory stays flat")
    func tenMegabyteBodies() async throws {
        // The 1 MiB limit this test was measured with (the default is 1 MiB + 64 KiB).
        try await Self.withGateway(["--max-body", "1048576"]) { gateway, http in
            let tenMB = 10 * 1024 * 1024
            let before = try gateway.residentMegabytes()
            let x = [UInt8](repeating: UInt8(ascii: "x"), count: tenMB)
            func head(_ fields: String) -> [UInt8] { Array("POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\(fields)\r\n".utf8) }

            // Content-Length says 10 MB: refused before the body is read, the connection closed.
            let declared = try await gateway.raw(head("Content-Length: \(tenMB)\r\n") + x, timeout: 20)
            let p = expectProblem(try Self.response(declared), 413, "body_too_large")
            #expect(p["limit"] == 1_048_576)
            // ... also when the body never comes (no waiting for it).
            let started = ContinuousClock.now
            let early = try await gateway.raw(head("Content-Length: \(tenMB)\r\n") + Array("{\"port\":".utf8), timeout: 10) { HTTPTestResponse.isComplete($0) }
            expectProblem(try Self.response(early), 413, "body_too_large")
            #expect(ContinuousClock.now - started < promptly(.seconds(3)), "the 413 must not wait for the body")

            // Content-Length lies low: its 100 bytes are the body (not JSON: 400), and the rest of the
            // 10 MB is no request: libmicrohttpd answers it itself and closes the connection.
            let low = try await gateway.raw(head("Content-Length: 100\r\n") + x, timeout: 20)
            expectProblem(try Self.response(low), 400, "malformed_json")

            // Chunked, 10 MB in 64 KiB chunks: answered 413 once the body outgrew the limit, the rest
            // read (for the client to see the answer rather than a reset) but not kept, then closed.
            var chunked = head("Transfer-Encoding: chunked\r\n")
            for offset in stride(from: 0, to: tenMB, by: 65_536) {
                chunked += Array("10000\r\n".utf8) + x[offset..<(offset + 65_536)] + [13, 10]
            }
            chunked += Array("0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
            // Three at once, the gateway's RSS sampled meanwhile: a body kept whole would show as
            // 10 MB each; what is kept is at most the 1 MiB limit.
            enum Upload: Sendable { case answer([UInt8]), highestRSS(Int) }
            let chunkedBody = chunked
            let sampledBefore = try gateway.residentMegabytes()
            var uploading: [[UInt8]] = []
            var highest = sampledBefore
            try await withThrowingTaskGroup(of: Upload.self) { group in
                for _ in 0..<3 { group.addTask { .answer(try await gateway.raw(chunkedBody, timeout: 30)) } }
                group.addTask {
                    var highest = 0
                    // Until the uploads are done (then cancelled), at most 10 s.
                    for _ in 0..<2_000 where !Task.isCancelled {
                        highest = max(highest, try gateway.residentMegabytes())
                        try? await Task.sleep(for: .milliseconds(5))
                    }
                    return .highestRSS(highest)
                }
                for try await result in group {
                    switch result {
                    case .answer(let bytes):
                        uploading.append(bytes)
                        if uploading.count == 3 { group.cancelAll() }
                    case .highestRSS(let mb): highest = max(highest, mb)
                    }
                }
            }
            #expect(underSanitizer || highest < sampledBefore + 8, "RSS went from \(sampledBefore) MB to \(highest) MB during three 10 MB uploads")
            for answer in uploading {
                expectProblem(try Self.response(answer), 413, "body_too_large")
                let text = String(decoding: answer, as: UTF8.self)
                #expect(!text.contains("HTTP/1.1 200 OK"), "the request after the chunked body was read: \(text.suffix(300))")
            }

            // Framing libmicrohttpd refuses itself (HTML answers; libmicrohttpd 0.9.75 repeats its
            // status line and headers in these two): an absurd chunk size, an absurd Content-Length.
            let hugeChunk = try await gateway.raw(head("Transfer-Encoding: chunked\r\n") + Array("FFFFFFFFFFFFFFFFFFFF\r\nabc".utf8))
            #expect(try Self.response(hugeChunk).status == 413, "\(String(decoding: hugeChunk, as: UTF8.self))")
            let hugeLength = try await gateway.raw(head("Content-Length: 99999999999999999999999\r\n") + Array("{}".utf8))
            #expect(try Self.response(hugeLength).status == 413, "\(String(decoding: hugeLength, as: UTF8.self))")

            // About 60 MB went by; the gateway kept at most its 1 MiB limit of any of it.
            let after = try gateway.residentMegabytes()
            #expect(underSanitizer || after < before + 20, "RSS grew from \(before) MB to \(after) MB")
            try await gateway.expectAnswers(http, after: "the 10 MB bodies")
        }
    }

    @Test("an ambiguous body boundary (Content-Length twice, or with Transfer-Encoding) is 400 malformed_request, and the connection closed")
    func ambiguousFraming() async throws {
        try await Self.withGateway { gateway, http in
            let box = try await gateway.createMailbox(http)
            let body = #"{"port": "\#(box.port)", "message": ["smuggled"]}"#
            let next = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            for fields in [
                "Content-Length: \(body.utf8.count)\r\nContent-Length: 5\r\n",
                "Content-Length: 5\r\nContent-Length: \(body.utf8.count)\r\n",
                "Content-Length: \(body.utf8.count)\r\ncontent-length: 0\r\n",
                "Content-Length: \(body.utf8.count)\r\nTransfer-Encoding: chunked\r\n",
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            ] {
                // What a front proxy believing the other field would take for a second request follows.
                let bytes = Array("POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\(fields)\r\n\(body)\(next)".utf8)
                let answer = try await gateway.raw(bytes)
                let r = try Self.response(answer)
                expectProblem(r, 400, "malformed_request")
                #expect(r.header("Connection")?.lowercased() == "close", "\(r)")
                // Nothing after the refusal was read as a request.
                #expect(String(decoding: answer, as: UTF8.self).components(separatedBy: "HTTP/1.1 ").count == 2, "\(String(decoding: answer, as: UTF8.self))")
            }
            // Nothing was sent; the same field twice with the same value is one field (RFC 9112 6.3).
            let same = Array("POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8)
            #expect(try Self.response(try await gateway.raw(same)).status == 202)
            let polled = try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=5", timeout: 15)
            #expect(GatewayNetwork.messages(polled) == [["smuggled"]], "exactly the one unambiguous request was delivered: \(polled)")
        }
    }

    // MARK: - Header floods

    @Test("header floods: thousands of fields or a 100 KB field are 431, a 100 KB URL 414 (libmicrohttpd's own answers); ordinary header blocks are fine")
    func headerFloods() async throws {
        try await Self.withGateway { gateway, http in
            let manyFields = (0..<5_000).map { "X-Flood-\($0): v\r\n" }.joined()
            let cases: [(String, [UInt8], Int)] = [
                ("5,000 fields", Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\(manyFields)\r\n".utf8), 431),
                ("a 100 KB field", Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: \(String(repeating: "a", count: 100_000))\r\n\r\n".utf8), 431),
                ("a 100 KB URL", Array("GET /v1/db/\(String(repeating: "a", count: 100_000)) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8), 414),
                ("a 1 MB header block without an end", Array("GET /healthz HTTP/1.1\r\n\(String(repeating: "X-A: b\r\n", count: 131_072))".utf8), 431),
            ]
            for (what, bytes, status) in cases {
                let answer = try await gateway.raw(bytes, timeout: 10)
                let r = try Self.response(answer)
                // libmicrohttpd answers these itself, with an HTML page, and closes the connection.
                #expect(r.status == status, "\(what): \(r)")
                #expect(r.header("Connection")?.lowercased() == "close", "\(what): \(r)")
                try await gateway.expectAnswers(http, after: what)
            }
            // Several floods at once do not hold up anyone else.
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<50 { group.addTask { try Self.response(try await gateway.raw(cases[0].1, timeout: 20)).status } }
                let started = ContinuousClock.now
                let health = try await http.request("GET", "/healthz")
                #expect(health.status == 200 && ContinuousClock.now - started < promptly(.seconds(2)), "\(health)")
                for try await status in group { #expect(status == 431) }
            }
            // Ordinary header blocks are ordinary requests. (With the default --connection-memory of
            // 8 KiB, libmicrohttpd takes a header block of about 3.8 KB: 90 short fields, or one
            // field of 3.8 KB; measured with 0.9.75.)
            let fifty = (0..<50).map { ("X-Field-\($0)", "value \($0)") }
            let fiftyAnswer = try await http.request("GET", "/healthz", headers: fifty)
            #expect(fiftyAnswer.status == 200, "\(fiftyAnswer)")
            let threeKB = try await http.request("GET", "/healthz", headers: [("Cookie", String(repeating: "c", count: 3_000))])
            #expect(threeKB.status == 200, "\(threeKB)")
        }
    }

    // MARK: - Slow requests

    @Test("slowloris: requests trickling a byte a second are cut off after --connection-timeout; other clients are answered at once")
    func slowRequests() async throws {
        try await Self.withGateway(["--connection-timeout", "2"]) { gateway, http in
            var slow: [RawConnection] = []
            var openedAt: [ContinuousClock.Instant] = []
            for i in 0..<60 {
                openedAt.append(.now)
                let c = try await RawConnection(port: gateway.port)
                // Header fields that never end; bodies that never complete (the second kind).
                await c.send(Array((i % 3 == 2
                    ? "POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"port\":"
                    : "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").utf8))
                slow.append(c)
            }
            // A keep-alive connection: one request answered, then the next one trickles (its time
            // counts from the answer).
            let keepAlive = try await RawConnection(port: gateway.port)
            await keepAlive.send(Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8))
            let first = try await keepAlive.wait(within: 5) { HTTPTestResponse.isComplete($0) }
            #expect(first.flatMap(HTTPTestResponse.parse)?.status == 200)
            openedAt.append(.now)
            await keepAlive.send(Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".utf8))
            slow.append(keepAlive)
            // A connection that sends nothing at all.
            openedAt.append(.now)
            let silent = try await RawConnection(port: gateway.port)
            slow.append(silent)
            defer { for c in slow { c.close() } }

            var cutAfter: [Int: Duration] = [:]
            var slowest = Duration.zero
            // Every second: each slow client sends one more byte; an honest client asks for its node.
            for _ in 0..<8 {
                for (i, c) in slow.enumerated() where cutAfter[i] == nil {
                    if c.isClosed { cutAfter[i] = ContinuousClock.now - openedAt[i] } else if c !== silent { await c.send([UInt8(ascii: "a")]) }
                }
                if cutAfter.count == slow.count { break }
                let asked = ContinuousClock.now
                let r = try await http.request("GET", "/v1/node", timeout: 5)
                slowest = max(slowest, ContinuousClock.now - asked)
                #expect(r.status == 200, "\(r)")
                try await Task.sleep(for: .seconds(1))
            }
            #expect(slowest < promptly(.seconds(1)), "an honest request took \(slowest) while slow clients were connected")
            #expect(cutAfter.count == slow.count, "\(slow.count - cutAfter.count) slow connections were still open after 8 s (connection timeout 2 s)")
            for (i, after) in cutAfter {
                // Cut after the timeout (2 s), within the once-a-second sweep (+1 s) and our own
                // once-a-second look (+1 s), with a second to spare for a loaded machine.
                #expect(after >= .milliseconds(1_900) && after < promptly(.seconds(6)), "connection \(i) cut after \(after)")
                // Nothing was answered on them (beyond the keep-alive connection's first request).
                let received = slow[i].received
                if slow[i] !== keepAlive { #expect(received.isEmpty, "connection \(i) got \(String(decoding: received, as: UTF8.self))") }
            }
            // A request that arrives in pieces, but in time, is served.
            let pieces = try await RawConnection(port: gateway.port)
            defer { pieces.close() }
            for piece in ["GET /heal", "thz HTTP/1.1\r\nHo", "st: 127.0.0.1\r\n\r\n"] {
                await pieces.send(Array(piece.utf8))
                try await Task.sleep(for: .milliseconds(400))
            }
            let served = try await pieces.wait(within: 5) { HTTPTestResponse.isComplete($0) }
            #expect(served.flatMap(HTTPTestResponse.parse)?.status == 200, "\(served.map { String(decoding: $0, as: UTF8.self) } ?? "nothing")")
        }
    }

    // MARK: - Connection flood

    @Test("20,000 connection attempts: --max-connections are served, the rest get 503 over_capacity or are refused; memory comes back down")
    func connectionFlood() async throws {
        // Takes turns with the tests that load the machine or check promptness (MachineLoad).
        try await takingTurns {
            // Both ends need a descriptor per connection: raise this process's soft limit to the hard
            // one (the gateway inherits it).
            var limit = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            if limit.rlim_cur < limit.rlim_max {
                limit.rlim_cur = limit.rlim_max
                setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            }
            // Under a sanitizer a small flood in small batches: the gateway accepts several times slower
            // there, and a large flood starves the suites running beside it (CI runs failed with 5,000
            // attempts in batches of 500: here, in ToolTests and in SecurityTests at the same time).
            // The sanitizer stage is for races and memory errors on this path, which 1,200 reach; the
            // unsanitized stage carries the scale.
            let attempts = underSanitizer ? 1_200 : 20_000
            // Held open at once (also the gateway's --max-connections); room is left for the other
            // suites running in this process.
            let held = min(underSanitizer ? 800 : 12_000, Int(min(limit.rlim_cur, 1 << 20)) - 4_000)
            try #require(held >= 800, "RLIMIT_NOFILE \(limit.rlim_cur)/\(limit.rlim_max) is too low for this test")
            let fillBatch = underSanitizer ? 100 : 500, beyondBatch = underSanitizer ? 100 : 250

            // One connection more for `http`, the suite's own client, which stays open throughout.
            try await Self.withGateway(["--max-connections", "\(held + 1)", "--connection-timeout", "600"]) { gateway, http in
                // Warm up, then measure.
                for _ in 0..<200 { _ = try await http.request("GET", "/healthz") }
                // Connections of the start-up checks may still be closing: the flood starts from one.
                try await eventually("only the suite's own client connected") {
                    let metrics = try await http.request("GET", "/metrics").text.split(separator: "\n")
                    return metrics.first { $0.hasPrefix("aemp_gateway_http_connections ") }?.split(separator: " ").last == "1.0"
                }
                try await Task.sleep(for: .milliseconds(500))
                let before = try gateway.residentMegabytes()
                let request = Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)

                // The gateway's limit, filled: every connection gets an answer (keep-alive, open).
                var open: [RawConnection] = []
                defer { for c in open { c.close() } }
                let fillStart = ContinuousClock.now
                while open.count < held {
                    let batch = try await withThrowingTaskGroup(of: (RawConnection, Int?).self) { group in
                        for _ in 0..<min(fillBatch, held - open.count) {
                            group.addTask {
                                let c = try await RawConnection(port: gateway.port)
                                await c.send(request)
                                let answer = try await c.wait(within: 20) { HTTPTestResponse.isComplete($0) }
                                return (c, answer.flatMap(HTTPTestResponse.parse)?.status)
                            }
                        }
                        return try await group.reduce(into: []) { $0.append($1) }
                    }
                    open += batch.map(\.0)
                    let failed = batch.filter { $0.1 != 200 }
                    try #require(failed.isEmpty, "\(failed.count) of the first \(held) connections were not served: \(failed.prefix(3).map(\.1))")
                }
                let filled = ContinuousClock.now - fillStart
                let peak = try gateway.residentMegabytes()

                // Every further attempt, in batches: 503 over_capacity (the first 64 beyond the limit),
                // or refused (accepted and closed at once, or not accepted); never served.
                var overCapacity = 0, refused = 0
                var unexpected: [String] = []
                var attempted = held
                while attempted < attempts {
                    let results = try await withThrowingTaskGroup(of: String.self) { group in
                        for _ in 0..<min(beyondBatch, attempts - attempted) {
                            group.addTask {
                                let answer: [UInt8]
                                do {
                                    answer = try await HTTPTestClient.rawExchange(port: gateway.port, request, timeout: 20) { HTTPTestResponse.isComplete($0) }
                                } catch let error as HTTPTestError {
                                    return "timeout \(error)"
                                } catch {
                                    return "refused"  // connect failed or was reset
                                }
                                guard let r = HTTPTestResponse.parse(answer) else { return "refused" }
                                if r.status == 503, r.json?.objectValue?["code"] == "over_capacity", r.header("Retry-After") != nil,
                                    r.header("Content-Type") == "application/problem+json"
                                {
                                    return "over_capacity"
                                }
                                return "unexpected \(r)"
                            }
                        }
                        return try await group.reduce(into: []) { $0.append($1) }
                    }
                    attempted += results.count
                    for r in results {
                        switch r {
                        case "over_capacity": overCapacity += 1
                        case "refused": refused += 1
                        default: unexpected.append(r)
                        }
                    }
                }
                #expect(unexpected.isEmpty, "\(unexpected.count) attempts beyond the limit were answered otherwise: \(unexpected.prefix(3))")
                #expect(overCapacity + refused == attempts - held)
                #expect(overCapacity >= 64, "expected 503 over_capacity answers beyond the limit; got \(overCapacity) (refused \(refused))")
                #expect(gateway.child.isRunning, "the gateway died under the load; log: \(gateway.log.suffix(2000))")

                // Everyone leaves: the gateway serves normally and gives the memory back (freed
                // libmicrohttpd pools at once, the heap by malloc_trim 5 s after the load fell).
                for c in open { c.close() }
                open = []
                try await gateway.expectAnswers(http, after: "the flood")
                var settled = peak
                let deadline = ContinuousClock.now + .seconds(20)
                while ContinuousClock.now < deadline {
                    settled = try gateway.residentMegabytes()
                    if underSanitizer || settled < before + 20 { break }
                    try await Task.sleep(for: .milliseconds(250))
                }
                // About 8 KB each (libmicrohttpd's pool): the load must show, or the bound below means nothing.
                #expect(peak - before > held * 4 / 1024, "\(held) connections should have cost memory (RSS \(before) -> \(peak) MB): is the test measuring the right process?")
                #expect(underSanitizer || settled < before + 20, "RSS \(before) MB before, \(peak) MB with \(held) connections, still \(settled) MB 20 s after")
                // What was measured, for whoever reads the test log (the bounds above are the test).
                print(
                    "connection flood: RSS \(before) MB -> \(peak) MB with \(held) connections (filled in \(filled)) -> \(settled) MB after; beyond the limit: \(overCapacity) over_capacity, \(refused) refused"
                )
            }
        }
    }

    // MARK: - Helpers

    /// Runs `body` against a fresh standalone gateway (its own seed and master) started with
    /// `arguments`; afterwards checks that it still runs and serves a full mailbox round trip.
    static func withGateway(
        _ arguments: [String] = [], auth: [(String, String)] = [],
        _ body: (GatewayProcess, HTTPTestClient) async throws -> Void
    ) async throws {
        try await Cleanup.scope { cleanup in
            let gateway = try await GatewayProcess.start(
                seeds: nil, arguments: ["--standalone-bind", "127.0.0.1:\(try freePort())"] + arguments)
            cleanup.add { gateway.child.stop() }
            let http = try await gateway.client()
            cleanup.add { await http.close() }
            try await gateway.waitForNodeInfo("its own master", headers: auth) { $0["master"]?.stringValue == gateway.nodeID }
            do {
                try await body(gateway, http)
                #expect(gateway.child.isRunning, "the gateway is gone: \(gateway.log.suffix(2000))")
                // A normal request after all that: a mailbox, a message to it, the message read back.
                let box = try await gateway.createMailbox(http, auth: auth)
                let sent = try await http.request("POST", "/v1/send", json: ["port": .string(box.port), "message": ["still here"]], headers: auth)
                #expect(sent.status == 202, "\(sent)")
                let polled = try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=5", headers: auth, timeout: 15)
                #expect(GatewayNetwork.messages(polled) == [["still here"]], "\(polled)")
            } catch {
                let log = gateway.log
                if !log.isEmpty { Issue.record("gateway log:\n\(log.suffix(4000))") }
                throw error
            }
        }
    }

    /// One request with raw bytes in its path and header block, on a connection of its own.
    static func raw(
        _ gateway: GatewayProcess, _ method: String, _ path: [UInt8], headers: [UInt8] = [], body: [UInt8] = []
    ) async throws -> HTTPTestResponse {
        var bytes = Array("\(method) ".utf8) + path + Array(" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".utf8) + headers
        if !body.isEmpty || method == "POST" || method == "PUT" {
            bytes += Array("Content-Type: application/json\r\nContent-Length: \(body.count)\r\n".utf8)
        }
        bytes += [13, 10] + body
        return try response(try await gateway.raw(bytes))
    }

    /// The first response in `bytes`, or a test failure.
    static func response(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws -> HTTPTestResponse {
        try #require(HTTPTestResponse.parse(bytes), "no HTTP response in \(String(decoding: bytes.prefix(500), as: UTF8.self).debugDescription)", sourceLocation: sourceLocation)
    }
}

extension GatewayProcess {
    /// Sends `bytes` on a new connection; everything answered until the gateway closed it (or
    /// `complete` says it is enough).
    func raw(_ bytes: [UInt8], timeout: Double = 10, until complete: (@Sendable ([UInt8]) -> Bool)? = nil) async throws -> [UInt8] {
        try await HTTPTestClient.rawExchange(port: port, bytes, timeout: timeout, until: complete)
    }

    /// Creates a mailbox with `http`.
    func createMailbox(_ http: HTTPTestClient, auth: [(String, String)] = [], sourceLocation: SourceLocation = #_sourceLocation) async throws -> (name: String, port: String) {
        let r = try await http.request("POST", "/v1/ports", headers: auth)
        try #require(r.status == 201, "create mailbox: \(r)", sourceLocation: sourceLocation)
        let name = try #require(r.json?.objectValue?["name"]?.stringValue, sourceLocation: sourceLocation)
        let port = try #require(r.json?.objectValue?["port"]?.stringValue, sourceLocation: sourceLocation)
        return (name, port)
    }

    /// Checks that the gateway runs and answers `GET /healthz`, on `http` and on a new connection.
    func expectAnswers(_ http: HTTPTestClient, after what: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        #expect(child.isRunning, "the gateway died after \(what): \(log.suffix(2000))", sourceLocation: sourceLocation)
        let kept = try await http.request("GET", "/healthz")
        let fresh = try HostileInputTests.response(
            try await raw(Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)), sourceLocation: sourceLocation)
        #expect(kept.status == 200 && fresh.status == 200, "after \(what): \(kept) / \(fresh)", sourceLocation: sourceLocation)
    }

    /// The gateway's resident set size (VmRSS of /proc/<pid>/status), in MiB.
    func residentMegabytes() throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(child.pid)/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }, "no VmRSS in /proc/\(child.pid)/status")
        let kilobytes = try #require(line.split(separator: " ").dropFirst().first.flatMap { Int($0) }, "\(line)")
        return kilobytes / 1024
    }
}

/// Whether the tests run under scripts/sanitize: RSS bounds do not apply then (the sanitizer's shadow
/// memory and quarantine count in the gateway's RSS); everything else is checked as usual.
let underSanitizer = ProcessInfo.processInfo.environment["AEMP_SANITIZER"] != nil
