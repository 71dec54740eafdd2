import AEMP

// Validation of HTTP responses and Server-Sent Events against openapi/openapi.yaml (as JSON), with
// a JSON Schema validator for the subset that document uses. Anything outside the subset is
// reported as a violation rather than ignored, so the validator cannot silently accept a schema
// it does not understand.

/// A JSON Schema (2020-12 subset) validator over `AEMP.Value`, resolving `$ref`s that point into
/// the enclosing document (`#/components/...`).
///
/// Assertions: `type` (a name or an array of names, incl. `null`), `enum`, `const`, `properties`,
/// `required`, `additionalProperties` (boolean or schema), `items`, `minItems`, `maxItems`,
/// `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `minLength`, `maxLength`,
/// `pattern`, `allOf`, `anyOf`, `oneOf`, `$ref`. Annotations (`description`, `default`, …) are
/// ignored; any other keyword is a violation.
///
/// Stricter than JSON Schema in one way, on purpose: an object schema with `properties` and no
/// `additionalProperties` refuses members it does not list (`documentedMembersOnly`). The
/// contract leaves response objects open so that clients tolerate members added later; the
/// gateway's own tests still hold every member it sends to be documented.
struct JSONSchemaValidator {
    /// The document `$ref`s resolve in.
    let root: Value
    /// Whether members an object schema's `properties` do not list are violations when the schema
    /// says nothing about `additionalProperties`.
    var documentedMembersOnly = true

    static let annotations: Set<String> = [
        "description", "title", "default", "example", "examples", "format", "deprecated", "readOnly", "writeOnly",
        "$comment",
    ]

    /// Violations of `schema` by `value`, each as `<JSON path>: <what is wrong>`; empty when valid.
    func validate(_ value: Value, against schema: Value, at path: String = "$") -> [String] {
        var out: [String] = []
        check(value, schema, path, &out, depth: 0)
        return out
    }

    /// Keywords outside the subset anywhere inside `schema` (following subschemas, not `$ref`s),
    /// as `<where>: <keyword>`.
    func unsupportedKeywords(in schema: Value, at path: String = "#") -> [String] {
        guard case .object(let s) = schema else { return [] }
        var out = s.keys.sorted().filter { !Self.assertions.contains($0) && !Self.annotations.contains($0) }.map { "\(path): \($0)" }
        for (name, sub) in (s["properties"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            out += unsupportedKeywords(in: sub, at: "\(path)/properties/\(name)")
        }
        for key in ["items", "additionalProperties"] {
            if let sub = s[key] { out += unsupportedKeywords(in: sub, at: "\(path)/\(key)") }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for (i, sub) in (s[key]?.arrayValue ?? []).enumerated() { out += unsupportedKeywords(in: sub, at: "\(path)/\(key)/\(i)") }
        }
        return out
    }

    /// Resolves a local reference (`#/a/b/c`, with `~0`/`~1` escapes).
    func resolve(_ ref: String) -> Value? {
        guard ref.hasPrefix("#/") else { return nil }
        var node = root
        for raw in ref.dropFirst(2).split(separator: "/", omittingEmptySubsequences: false) {
            let key = String(raw).replacingAll("~1", "/").replacingAll("~0", "~")
            switch node {
            case .object(let o):
                guard let next = o[key] else { return nil }
                node = next
            case .array(let a):
                guard let i = Int(key), a.indices.contains(i) else { return nil }
                node = a[i]
            default:
                return nil
            }
        }
        return node
    }

    private func check(_ value: Value, _ schema: Value, _ path: String, _ out: inout [String], depth: Int) {
        guard depth < 64 else {
            out.append("\(path): schema nesting too deep (a $ref cycle?)")
            return
        }
        switch schema {
        case .bool(true): return
        case .bool(false):
            out.append("\(path): no value is allowed here")
            return
        case .object: break
        default:
            out.append("\(path): the schema is not an object or boolean: \(schema)")
            return
        }
        let s = schema.objectValue!

        for key in s.keys.sorted() where !Self.assertions.contains(key) && !Self.annotations.contains(key) {
            out.append("\(path): unsupported schema keyword \(key.debugDescription)")
        }

        if let ref = s["$ref"] {
            guard let r = ref.stringValue, let target = resolve(r) else {
                out.append("\(path): unresolvable $ref \(ref)")
                return
            }
            check(value, target, path, &out, depth: depth + 1)
        }

        if let t = s["type"] {
            let names: [String]
            switch t {
            case .string(let n): names = [n]
            case .array(let a): names = a.compactMap(\.stringValue)
            default: names = []
            }
            if names.isEmpty {
                out.append("\(path): invalid \"type\" in schema: \(t)")
            } else if !names.contains(where: { Self.hasType(value, $0) }) {
                out.append("\(path): expected \(names.joined(separator: " or ")), got \(Self.typeName(value)) \(Self.shown(value))")
                return  // the remaining keywords would only repeat the mismatch
            }
        }

        if let c = s["const"], !Self.equal(value, c) {
            out.append("\(path): expected \(c), got \(Self.shown(value))")
        }
        if let e = s["enum"] {
            let options = e.arrayValue ?? []
            if !options.contains(where: { Self.equal(value, $0) }) {
                out.append("\(path): \(Self.shown(value)) is not one of \(Value.array(options))")
            }
        }

        if let n = Self.number(value) {
            if let m = s["minimum"].flatMap(Self.number), n < m { out.append("\(path): \(n) is less than the minimum \(m)") }
            if let m = s["maximum"].flatMap(Self.number), n > m { out.append("\(path): \(n) is more than the maximum \(m)") }
            if let m = s["exclusiveMinimum"].flatMap(Self.number), n <= m { out.append("\(path): \(n) is not more than \(m)") }
            if let m = s["exclusiveMaximum"].flatMap(Self.number), n >= m { out.append("\(path): \(n) is not less than \(m)") }
        }

        if case .string(let str) = value {
            let length = str.unicodeScalars.count
            if let m = s["minLength"]?.integerValue, length < m { out.append("\(path): string shorter than \(m)") }
            if let m = s["maxLength"]?.integerValue, length > m { out.append("\(path): string longer than \(m)") }
            if let p = s["pattern"]?.stringValue {
                do {
                    let regex = try Regex(p)
                    if (try? regex.firstMatch(in: str)) == nil {
                        out.append("\(path): \(str.debugDescription) does not match the pattern \(p)")
                    }
                } catch {
                    out.append("\(path): invalid pattern \(p.debugDescription) in schema")
                }
            }
        }

        if case .array(let items) = value {
            if let m = s["minItems"]?.integerValue, items.count < m { out.append("\(path): \(items.count) items, fewer than \(m)") }
            if let m = s["maxItems"]?.integerValue, items.count > m { out.append("\(path): \(items.count) items, more than \(m)") }
            if let itemSchema = s["items"] {
                for (i, item) in items.enumerated() { check(item, itemSchema, "\(path)[\(i)]", &out, depth: depth + 1) }
            }
        }

        if case .object(let members) = value {
            let properties = s["properties"]?.objectValue ?? [:]
            for name in (s["required"]?.arrayValue ?? []).compactMap(\.stringValue) where members[name] == nil {
                out.append("\(path): missing required member \(name.debugDescription)")
            }
            for (name, member) in members.sorted(by: { $0.key < $1.key }) {
                if let p = properties[name] {
                    check(member, p, "\(path).\(name)", &out, depth: depth + 1)
                } else if let extra = s["additionalProperties"] {
                    if case .bool(false) = extra {
                        out.append("\(path): unexpected member \(name.debugDescription)")
                    } else {
                        check(member, extra, "\(path).\(name)", &out, depth: depth + 1)
                    }
                } else if documentedMembersOnly && s["properties"] != nil {
                    out.append("\(path): unexpected member \(name.debugDescription) (not documented)")
                }
            }
        }

        if let all = s["allOf"]?.arrayValue {
            for sub in all { check(value, sub, path, &out, depth: depth + 1) }
        }
        if let any = s["anyOf"]?.arrayValue {
            let results = any.map { sub -> [String] in
                var o: [String] = []
                check(value, sub, path, &o, depth: depth + 1)
                return o
            }
            if !results.contains(where: \.isEmpty) {
                out.append("\(path): matches none of the \(any.count) anyOf alternatives; closest: \(Self.closest(results))")
            }
        }
        if let one = s["oneOf"]?.arrayValue {
            let results = one.map { sub -> [String] in
                var o: [String] = []
                check(value, sub, path, &o, depth: depth + 1)
                return o
            }
            let matching = results.enumerated().filter { $0.element.isEmpty }.map(\.offset)
            if matching.isEmpty {
                out.append("\(path): matches none of the \(one.count) oneOf alternatives; closest: \(Self.closest(results))")
            } else if matching.count > 1 {
                out.append("\(path): matches \(matching.count) oneOf alternatives (\(matching)), exactly one must match")
            }
        }
    }

    static let assertions: Set<String> = [
        "$ref", "type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems",
        "maxItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
        "allOf", "anyOf", "oneOf",
    ]

    private static func closest(_ results: [[String]]) -> String {
        (results.min(by: { $0.count < $1.count }) ?? []).joined(separator: "; ")
    }

    static func hasType(_ value: Value, _ name: String) -> Bool {
        switch (name, value) {
        case ("null", .null), ("boolean", .bool), ("string", .string), ("array", .array), ("object", .object): return true
        case ("number", .int), ("number", .double), ("integer", .int): return true
        case ("integer", .double(let d)): return d.isFinite && d.rounded() == d
        default: return false
        }
    }

    static func typeName(_ value: Value) -> String {
        switch value {
        case .null: return "null"
        case .bool: return "boolean"
        case .int, .bigInteger: return "integer"
        case .double: return "number"
        case .string, .codePoints: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }

    static func number(_ value: Value) -> Double? {
        switch value {
        case .int(let i): return Double(i)
        case .bigInteger(let b): return Double(b)
        case .double(let d): return d
        default: return nil
        }
    }

    /// JSON equality: numbers compare by value (1 == 1.0), objects regardless of member order.
    static func equal(_ a: Value, _ b: Value) -> Bool {
        switch (a, b) {
        case (.int, .double), (.double, .int), (.double, .double), (.int, .int): return number(a) == number(b)
        case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.object(let x), .object(let y)):
            return x.count == y.count && x.allSatisfy { k, v in y[k].map { equal(v, $0) } ?? false }
        default: return a == b
        }
    }

    static func shown(_ value: Value) -> String {
        let text = value.description
        return text.count > 200 ? String(text.prefix(200)) + "…" : text
    }
}

/// An OpenAPI 3.1 document (as JSON) that responses and events are checked against.
struct OpenAPIValidator {
    let document: Value
    let schemas: JSONSchemaValidator

    static let methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]

    init(document: Value) {
        self.document = document
        self.schemas = JSONSchemaValidator(root: document)
    }

    /// Parses the JSON form of the document (e.g. the body of `GET /openapi.json`).
    init(json: [UInt8]) throws {
        self.init(document: try JSONCodec.decode(json))
    }

    /// A documented operation: its path template, method (lower case) and Operation Object.
    struct Operation {
        let template: String
        let method: String
        let object: [String: Value]
        var id: String { object["operationId"]?.stringValue ?? "\(method.uppercased()) \(template)" }
        /// The documented statuses (`"200"`, …) of the operation.
        var statuses: [String] { (object["responses"]?.objectValue ?? [:]).keys.sorted() }
    }

    var paths: [String: Value] { document.objectValue?["paths"]?.objectValue ?? [:] }

    /// Every documented operation, sorted by path template and method.
    var operations: [Operation] {
        paths.keys.sorted().flatMap { template -> [Operation] in
            let item = paths[template]?.objectValue ?? [:]
            return Self.methods.compactMap { m in
                item[m]?.objectValue.map { Operation(template: template, method: m, object: $0) }
            }
        }
    }

    /// The path templates whose segments match `path` (query removed), most concrete first.
    func templates(matching path: String) -> [String] {
        let segments = Self.segments(of: path)
        let matching = paths.keys.filter { template in
            let t = Self.segments(of: template)
            return t.count == segments.count
                && zip(t, segments).allSatisfy { $0.hasPrefix("{") && $0.hasSuffix("}") ? !$1.isEmpty : $0 == $1 }
        }
        func parameters(_ t: String) -> Int { Self.segments(of: t).filter { $0.hasPrefix("{") }.count }
        return matching.sorted { (parameters($0), $0) < (parameters($1), $1) }
    }

    /// The operation serving `method` on `path`: the most concrete matching template that documents
    /// the method (OpenAPI matches concrete paths first; a templated path serves the methods the
    /// concrete one does not document).
    func operation(_ method: String, _ path: String) -> Operation? {
        let m = method.lowercased()
        for template in templates(matching: path) {
            if let o = paths[template]?.objectValue?[m]?.objectValue { return Operation(template: template, method: m, object: o) }
        }
        return nil
    }

    /// The methods documented for `path` over every matching template, upper case, without OPTIONS.
    func documentedMethods(_ path: String) -> Set<String> {
        var out: Set<String> = []
        for template in templates(matching: path) {
            for m in Self.methods where m != "options" && paths[template]?.objectValue?[m] != nil { out.insert(m.uppercased()) }
        }
        return out
    }

    /// Violations of a complete response to `method path`: the operation, status, headers, content
    /// type and (for JSON media types) the body. `body == nil` skips the body (an event stream).
    func validateResponse(
        _ method: String, _ path: String, status: Int, headers: [(String, String)], body: [UInt8]?
    ) -> [String] {
        guard let operation = operation(method, path) else {
            let candidates = templates(matching: path)
            return candidates.isEmpty
                ? ["\(method) \(path): no documented path matches"]
                : ["\(method) \(path): \(method) is not documented for \(candidates.joined(separator: ", "))"]
        }
        let where_ = "\(method) \(path) → \(status) (\(operation.id))"
        guard let response = response(of: operation, status: status) else {
            return ["\(where_): status \(status) is not documented (documented: \(operation.statuses.joined(separator: ", ")))"]
        }
        return validate(response: response, status: status, headers: headers, body: body, where: where_)
    }

    /// Violations of a response against a Response Object by reference, e.g.
    /// `#/components/responses/MethodNotAllowed`.
    func validateResponse(
        component ref: String, status: Int, headers: [(String, String)], body: [UInt8]?
    ) -> [String] {
        guard let response = schemas.resolve(ref) else { return ["unresolvable response \(ref)"] }
        return validate(response: response, status: status, headers: headers, body: body, where: "\(ref) (\(status))")
    }

    /// The Response Object documented for `status` (exact, then `4XX`-style, then `default`).
    func response(of operation: Operation, status: Int) -> Value? {
        let responses = operation.object["responses"]?.objectValue ?? [:]
        guard let r = responses[String(status)] ?? responses["\(status / 100)XX"] ?? responses["default"] else { return nil }
        return dereference(r)
    }

    /// Violations of one Server-Sent Event of the stream `method path` answers with `status`,
    /// against the media type's `x-sse-event` schema (the event as `{id, event, data}`, `data`
    /// decoded as JSON).
    func validateEvent(
        _ method: String, _ path: String, status: Int = 200, id: String?, event: String, data: String
    ) -> [String] {
        guard let operation = operation(method, path), let response = response(of: operation, status: status) else {
            return ["\(method) \(path): no documented \(status) response"]
        }
        let where_ = "\(method) \(path) event \(event.debugDescription) id \(id ?? "-")"
        guard let eventSchema = response.objectValue?["content"]?.objectValue?["text/event-stream"]?.objectValue?["x-sse-event"]
        else { return ["\(where_): the response documents no text/event-stream with x-sse-event"] }
        let decoded: Value
        do { decoded = try JSONCodec.decode(data) } catch { return ["\(where_): data is not JSON: \(data.debugDescription)"] }
        let value: Value = ["id": id.map { .string($0) } ?? .null, "event": .string(event), "data": decoded]
        return schemas.validate(value, against: eventSchema, at: "event").map { "\(where_): \($0)" }
    }

    // MARK: - Internals

    private func dereference(_ v: Value) -> Value? {
        var current = v
        for _ in 0..<8 {
            guard let ref = current.objectValue?["$ref"]?.stringValue else { return current }
            guard let next = schemas.resolve(ref) else { return nil }
            current = next
        }
        return nil
    }

    private func validate(
        response: Value, status: Int, headers: [(String, String)], body: [UInt8]?, where where_: String
    ) -> [String] {
        var out: [String] = []
        let r = response.objectValue ?? [:]
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }

        for (name, spec) in (r["headers"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            guard let h = dereference(spec)?.objectValue else {
                out.append("\(where_): header \(name): unresolvable")
                continue
            }
            guard let raw = header(name) else {
                if h["required"] == .bool(true) { out.append("\(where_): required header \(name) is missing") }
                continue
            }
            if let schema = h["schema"] {
                let value = Self.headerValue(raw, schema: schema, schemas)
                out += schemas.validate(value, against: schema, at: "header \(name)").map { "\(where_): \($0)" }
            }
        }

        let content = r["content"]?.objectValue ?? [:]
        let contentType = header("Content-Type").map(Self.mediaType)
        if content.isEmpty {
            if let body, !body.isEmpty { out.append("\(where_): no content is documented, got \(body.count) bytes") }
            return out
        }
        guard let contentType else {
            out.append("\(where_): no Content-Type (documented: \(content.keys.sorted().joined(separator: ", ")))")
            return out
        }
        guard let media = content[contentType]?.objectValue else {
            out.append("\(where_): Content-Type \(contentType) is not documented (documented: \(content.keys.sorted().joined(separator: ", ")))")
            return out
        }
        guard let body, contentType.hasSuffix("json") else { return out }
        let decoded: Value
        do {
            decoded = try JSONCodec.decode(body)
        } catch {
            out.append("\(where_): the body is not JSON: \(String(decoding: body.prefix(200), as: UTF8.self).debugDescription)")
            return out
        }
        if let schema = media["schema"] {
            out += schemas.validate(decoded, against: schema, at: "body").map { "\(where_): \($0)" }
        }
        // A problem's `code` must be one the response lists (`x-problem-codes`).
        if let codes = media["x-problem-codes"] {
            let listed = (codes.arrayValue ?? []).compactMap(\.stringValue)
            if listed.isEmpty { out.append("\(where_): x-problem-codes is not a list of codes") }
            if let code = decoded.objectValue?["code"], !listed.contains(where: { code == .string($0) }) {
                out.append("\(where_): code \(JSONSchemaValidator.shown(code)) is not one of the documented codes \(listed)")
            }
        }
        return out
    }

    /// A header value as the JSON value its schema describes (integers and booleans parsed).
    private static func headerValue(_ raw: String, schema: Value, _ schemas: JSONSchemaValidator) -> Value {
        var s = schema
        if let ref = s.objectValue?["$ref"]?.stringValue, let target = schemas.resolve(ref) { s = target }
        let trimmed = raw.trimmingBlanks()
        switch s.objectValue?["type"]?.stringValue {
        case "integer": return Int64(trimmed).map { .int($0) } ?? .string(raw)
        case "number": return Double(trimmed).map { .double($0) } ?? .string(raw)
        case "boolean": return trimmed == "true" ? .bool(true) : trimmed == "false" ? .bool(false) : .string(raw)
        default: return .string(raw)
        }
    }

    static func mediaType(_ contentType: String) -> String {
        String(contentType.split(separator: ";").first ?? "").trimmingBlanks().lowercased()
    }

    /// Path segments without the query string (not percent-decoded: templates match any segment).
    static func segments(of path: String) -> [String] {
        let p = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return p.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    }
}

extension String {
    fileprivate func replacingAll(_ target: String, _ replacement: String) -> String {
        guard !target.isEmpty, contains(target) else { return self }
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: target) {
            out += rest[..<r.lowerBound]
            out += replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }

    fileprivate func trimmingBlanks() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\t" { s.removeLast() }
        return String(s)
    }
}

extension Substring {
    fileprivate func trimmingBlanks() -> String { String(self).trimmingBlanks() }
}
