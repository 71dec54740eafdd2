/// The route a request matched, as its openapi/openapi.yaml path template: the `route` label of
/// the request metrics (never the raw path, so the label has a fixed, small set of values).
enum RouteTemplate: Int, CaseIterable, Sendable {
    case healthz, readyz, metrics, openAPI
    case send, call
    case ports, port, portMessages, portMonitor
    case dbFamily, dbKeys, dbValues, dbWatch, dbReg, dbKey
    case node, nodes, nodeEvents
    /// No route matched (404), or the path could not be decoded.
    case other

    /// The path template, as in the OpenAPI document.
    var template: String {
        switch self {
        case .healthz: return "/healthz"
        case .readyz: return "/readyz"
        case .metrics: return "/metrics"
        case .openAPI: return "/openapi.json"
        case .send: return "/v1/send"
        case .call: return "/v1/call"
        case .ports: return "/v1/ports"
        case .port: return "/v1/ports/{name}"
        case .portMessages: return "/v1/ports/{name}/messages"
        case .portMonitor: return "/v1/ports/{name}/monitor"
        case .dbFamily: return "/v1/db/{family}"
        case .dbKeys: return "/v1/db/{family}/keys"
        case .dbValues: return "/v1/db/{family}/values"
        case .dbWatch: return "/v1/db/{family}/watch"
        case .dbReg: return "/v1/db/{family}/reg"
        case .dbKey: return "/v1/db/{family}/{subkey}"
        case .node: return "/v1/node"
        case .nodes: return "/v1/nodes"
        case .nodeEvents: return "/v1/nodes/events"
        case .other: return "other"
        }
    }

    /// The route of decoded path segments, matched as `Gateway.route` dispatches them (a subkey
    /// named `keys`, `values`, `watch` or `reg` is that route only for its own method).
    init(method: String, segments: [String]) {
        switch segments.count {
        case 1:
            switch segments[0] {
            case "healthz": self = .healthz
            case "readyz": self = .readyz
            case "metrics": self = .metrics
            case "openapi.json": self = .openAPI
            default: self = .other
            }
            return
        case 0:
            self = .other
            return
        default:
            break
        }
        guard segments[0] == "v1" else {
            self = .other
            return
        }
        let s = segments.dropFirst()
        switch (s.count, s.first) {
        case (1, "send"): self = .send
        case (1, "call"): self = .call
        case (1, "ports"): self = .ports
        case (1, "node"): self = .node
        case (1, "nodes"): self = .nodes
        case (2, "nodes") where segments[2] == "events": self = .nodeEvents
        case (2, "ports"): self = .port
        case (3, "ports") where segments[3] == "messages": self = .portMessages
        case (3, "ports") where segments[3] == "monitor": self = .portMonitor
        case (2, "db"): self = .dbFamily
        case (3, "db"):
            switch (segments[3], method) {
            case ("keys", "GET"): self = .dbKeys
            case ("values", "GET"): self = .dbValues
            case ("watch", "GET"): self = .dbWatch
            case ("reg", "POST"): self = .dbReg
            default: self = .dbKey
            }
        default: self = .other
        }
    }
}
