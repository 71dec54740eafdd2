import AEMP
@testable import AEMPGateway
import Testing

/// Issue 16: `Destination.parse`, the one place a port ID from HTTP becomes a `PortID`, without a
/// server. (The served behaviour, every spelling of a node port through `/v1/send` and
/// `/v1/call`, is in SecurityTests.)
@Suite("gateway: destination parsing")
struct DestinationTests {
    func parsed(_ raw: Value, message: [Value]? = nil, allowed: Set<String> = []) -> String {
        do {
            let id = try Destination.parse(raw, message: message, allowedTags: allowed)
            return "\(id.node)|\(id.name)"
        } catch {
            return "\(error.status) \(error.code)"
        }
    }

    @Test("plain, blank-padded and percent-encoded port IDs parse to the same node and name")
    func spellings() {
        #expect(parsed("node#port") == "node|port")
        #expect(parsed("perl/1a2b#inbox") == "perl/1a2b|inbox")
        #expect(parsed("  node # port ") == "node|port")
        #expect(parsed("node%23port") == "node|port")
        #expect(parsed("node%2523port") == "node|port", "a '#' encoded twice")
        #expect(parsed("nöde#pört") == "nöde|pört")
        #expect(parsed("a#b%20c") == "a|b c")
    }

    @Test("what is no port ID is 422 invalid_port; a node port is 403 node_port_forbidden")
    func refusals() {
        #expect(parsed(.int(5)) == "422 invalid_port")
        #expect(parsed(.null) == "422 invalid_port")
        #expect(parsed("") == "422 invalid_port")
        #expect(parsed("   ") == "422 invalid_port")
        #expect(parsed("#name") == "422 invalid_port")
        #expect(parsed("a#b#c") == "422 invalid_port")
        #expect(parsed("a#b\u{7}") == "422 invalid_port")
        #expect(parsed("a#b%0Ac") == "422 invalid_port", "a control character inside, however encoded")
        #expect(parsed("a#b%0A") == "a|b", "blanks around, however encoded, are trimmed")
        #expect(parsed("a%FF#b") == "a%FF|b", "percent-encoding that is not UTF-8 is left as it is")
        for nodePort in ["node", "node#", "node# ", " node ", "node%23", "node%2523", "node%20%23%20"] {
            #expect(parsed(.string(nodePort)) == "403 node_port_forbidden", "\(nodePort)")
        }
    }

    @Test("a bare node ID is called a node port, with a hint that #name is probably missing")
    func bareNodeHint() throws {
        do {
            _ = try Destination.parse("justname")
            Issue.record("a bare node ID parsed")
        } catch {
            #expect(error.detail.contains("has no '#'") && error.detail.contains("justname#<port name>"), "\(error.detail)")
        }
        do {
            _ = try Destination.parse("justname#")
            Issue.record("an empty port name parsed")
        } catch {
            #expect(error.detail.contains("empty port name") && !error.detail.contains("did you mean"), "\(error.detail)")
        }
    }

    @Test("a node port is reached only with a harmless tag the operator allowed, and never answering into a node port")
    func allowedNodePortTags() {
        let all: Set<String> = ["time", "can", "devnull"]
        #expect(parsed("node", message: ["time", "me#reply"], allowed: all) == "node|")
        #expect(parsed("node#", message: ["devnull"], allowed: all) == "node|")
        #expect(parsed("node", message: ["can", "eval", "me#reply"], allowed: all) == "node|")
        // Allowed by nobody, or not harmless even if listed.
        #expect(parsed("node", message: ["time", "me#reply"], allowed: []) == "403 node_port_forbidden")
        #expect(parsed("node", message: ["eval", "1"], allowed: all.union(["eval"])) == "403 node_port_forbidden")
        // The reply would go to a node port (which runs eval): refused in every spelling.
        for reply in ["me", "me#", "me%23", " me # "] {
            #expect(parsed("node", message: ["time", .string(reply), "eval", "code"], allowed: all) == "403 node_port_forbidden", "\(reply)")
            #expect(parsed("node", message: ["can", "eval", .string(reply)], allowed: all) == "403 node_port_forbidden", "\(reply)")
        }
        // A message whose tag is allowed but whose reply port is no port at all.
        #expect(parsed("node", message: ["time", 5], allowed: all) == "422 invalid_port")
    }

    @Test("percent-decoding: valid UTF-8 sequences decode, malformed ones are nil")
    func percentDecoding() {
        #expect(Destination.percentDecoded("a%2Fb") == "a/b")
        #expect(Destination.percentDecoded("%C3%A9") == "é")
        #expect(Destination.percentDecoded("100%") == nil)
        #expect(Destination.percentDecoded("%G1") == nil)
        #expect(Destination.percentDecoded("%FF") == nil)
        #expect(Destination.trimmed("  a b \t") == "a b")
    }
}
