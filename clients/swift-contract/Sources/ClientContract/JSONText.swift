import Foundation
import OpenAPIRuntime

/// JSON as text, to compare what the generated client decoded with what was sent: members sorted,
/// so equal values give equal text.
enum JSONText {
    /// `value` encoded compactly with sorted members (`"<not encodable: …>"` if it cannot be).
    static func of(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return String(decoding: try encoder.encode(value), as: UTF8.self)
        } catch {
            return "<not encodable: \(error)>"
        }
    }

    /// The elements of a JSON array written as text, as the generated models carry them.
    static func values(_ text: String) throws -> [OpenAPIValueContainer] {
        try JSONDecoder().decode([OpenAPIValueContainer].self, from: Data(text.utf8))
    }

    /// One JSON value written as text.
    static func value(_ text: String) throws -> OpenAPIValueContainer {
        try JSONDecoder().decode(OpenAPIValueContainer.self, from: Data(text.utf8))
    }
}
