import Foundation
import Testing

/// Issue 16: the README's library example compiles in CI. It is `Sources/aemp-example/main.swift`
/// (built with the tests: AEMPTests depends on it); this holds every Swift block of the README's
/// "Using the library" section to appear there verbatim.
@Suite("README example")
struct ReadmeExampleTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func swiftBlocks(of section: String, in readme: String) -> [String] {
        guard let start = readme.range(of: "## \(section)\n") else { return [] }
        let rest = readme[start.upperBound...]
        let body = rest.range(of: "\n## ").map { rest[..<$0.lowerBound] } ?? rest
        var blocks: [String] = []
        var current: [Substring]?
        for line in body.split(separator: "\n", omittingEmptySubsequences: false) {
            if current == nil, line == "```swift" {
                current = []
            } else if current != nil, line == "```" {
                blocks.append(current!.joined(separator: "\n"))
                current = nil
            } else if current != nil {
                current!.append(line)
            }
        }
        return blocks
    }

    @Test("every Swift block of the README's \"Using the library\" is in Sources/aemp-example/main.swift, verbatim")
    func readmeMatchesExample() throws {
        let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
        let example = try String(contentsOf: Self.root.appendingPathComponent("Sources/aemp-example/main.swift"), encoding: .utf8)
        let blocks = Self.swiftBlocks(of: "Using the library", in: readme)
        #expect(blocks.count >= 2, "the section has its Swift blocks")
        for block in blocks {
            #expect(example.contains(block), "not in the example:\n\(block)")
        }
    }
}
