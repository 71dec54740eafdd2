import AEMP
import ArgumentParser
import Foundation

/// `aemp-bench`: the benchmarks of issue 6, everything on 127.0.0.1, every gateway figure next to
/// a baseline measured in the same run (scripts/bench builds and starts it all).
@main
struct AEMPBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aemp-bench",
        abstract: "Benchmark aemp-gateway against a C libmicrohttpd + jansson server on this machine.",
        discussion: """
            Starts the C baseline, the gateway (standalone: it is the seed), an `aemp sink` node and \
            a node of its own, drives the load (wrk, the C fan-out client), checks that nothing was \
            lost, and prints one table: measured figure, baseline figure, ratio, target, result. \
            Exit status 1 if a target is missed or a scenario failed. Run it through scripts/bench.
            """)

    @Option(help: "Directory holding aemp-gateway and aemp (default: this program's directory).")
    var binDir: String?
    @Option(help: "The C baseline server (bench/baseline/baseline.c, compiled).")
    var baseline: String
    @Option(help: "The C fan-out load client (bench/load/fanout.c, compiled).")
    var fanout: String
    @Option(help: "wrk.")
    var wrk: String = "wrk"
    @Option(help: "Scenarios to run (comma-separated, 1-7).")
    var scenarios: String = "1,2,3,4,5,6,7"
    @Option(help: "Seconds of load per wrk run (scenarios 1, 2).")
    var duration: Int = 10
    @Option(help: "Baseline/gateway pairs of wrk runs in scenario 1 (the median counts).")
    var repeats: Int = 3
        @Option(help: "wrk connections (scenarios 1, 2).")
    var connections: Int = 64
    @Option(help: "Messages per request in scenario 2.")
    var batch: Int = 100
    @Option(help: "SSE subscribers (scenario 3) and mailboxes (scenario 4).")
    var subscribers: Int = 10_000
    @Option(help: "Fan-out rounds (scenario 3); the median counts.")
    var rounds: Int = 5
    @Option(help: "Messages per framing (scenario 5).")
    var meshMessages: Int = 1_000_000
    @Option(help: "Seconds of idle at the end (scenario 6).")
    var idle: Int = 30

    func run() async throws {
        let selected = Set(scenarios.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) })
        let bin = binDir ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let bench = try await Bench(
            bin: bin, baselinePath: baseline, fanoutPath: fanout, wrk: wrk, settings: self)
        defer { bench.stopAll() }
        var failed = false
        for n in 1...7 where selected.contains(n) {
            do {
                try await bench.scenario(n)
            } catch {
                failed = true
                bench.report.add(Row(scenario: "\(n): FAILED", measured: "\(error)", target: "", pass: false))
                FileHandle.standardError.write(Data("aemp-bench: scenario \(n) failed: \(error)\n".utf8))
            }
        }
        bench.stopAll()
        print(bench.report.render(header: bench.header))
        if failed || bench.report.rows.contains(where: { $0.pass == false }) { throw ExitCode(1) }
    }
}

/// One line of the result table.
struct Row {
    var scenario: String
    var measured: String
    var baseline: String = ""
    var ratio: String = ""
    var target: String
    var pass: Bool?
}

final class Report: @unchecked Sendable {
    // Used from the one task that runs the scenarios only.
    var rows: [Row] = []

    func add(_ row: Row) {
        rows.append(row)
        let result = row.pass.map { $0 ? "pass" : "MISS" } ?? ""
        FileHandle.standardError.write(Data("  \(row.scenario): \(row.measured) \(row.baseline.isEmpty ? "" : "(baseline \(row.baseline))") \(result)\n".utf8))
    }

    func render(header: String) -> String {
        let titles = Row(scenario: "scenario", measured: "gateway", baseline: "baseline (C)", ratio: "ratio", target: "target", pass: nil)
        let all = [titles] + rows
        let w0 = all.map(\.scenario.count).max()!, w1 = all.map(\.measured.count).max()!
        let w2 = all.map(\.baseline.count).max()!, w3 = all.map(\.ratio.count).max()!, w4 = all.map(\.target.count).max()!
        func pad(_ s: String, _ w: Int, left: Bool = false) -> String {
            let fill = String(repeating: " ", count: max(0, w - s.count))
            return left ? s + fill : fill + s
        }
        var out = header + "\n\n"
        for (i, r) in all.enumerated() {
            let result = i == 0 ? "result" : r.pass.map { $0 ? "pass" : "MISS" } ?? ""
            out += "| \(pad(r.scenario, w0, left: true)) | \(pad(r.measured, w1)) | \(pad(r.baseline, w2)) | \(pad(r.ratio, w3)) | \(pad(r.target, w4, left: true)) | \(result) |\n"
            if i == 0 {
                out += "|\(String(repeating: "-", count: w0 + 2))|\(String(repeating: "-", count: w1 + 1)):|\(String(repeating: "-", count: w2 + 1)):|\(String(repeating: "-", count: w3 + 1)):|\(String(repeating: "-", count: w4 + 2))|--------|\n"
            }
        }
        return out
    }
}

func format(_ value: Double, _ digits: Int = 0) -> String {
    let s = String(format: "%.\(digits)f", value)
    guard digits == 0, value >= 10_000 else { return s }
    // Thousands separators for big integers.
    var out = ""
    for (i, c) in s.reversed().enumerated() {
        if i > 0 && i % 3 == 0 { out.append(",") }
        out.append(c)
    }
    return String(out.reversed())
}

func ratio(_ a: Double, _ b: Double) -> String { b > 0 ? String(format: "%.2f×", a / b) : "-" }
