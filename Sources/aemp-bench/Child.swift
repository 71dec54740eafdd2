import AEMP
import ChildProcesses
import Foundation

/// Starts a process of the benchmark: its output lines collected as they come (so the run can
/// wait for a line), its standard error written to `log` if given, else dropped.
func startChild(
    _ name: String, _ path: String, _ arguments: [String], environment: [String: String] = [:], log: String? = nil
) throws -> ChildProcess {
    try ChildProcess(
        executable: path, arguments, name: name, environment: environment, errorOutput: log.map { .file($0) } ?? .discard)
}

extension ChildProcess {
    /// Resident memory in bytes (VmRSS).
    var rss: Int { procStatus(pid, "VmRSS:") * 1024 }

    /// CPU time (user + system) in seconds.
    var cpuSeconds: Double { processCPU(pid) }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the C load client and `aemp sink` report in.
func monotonicNanoseconds() -> Int {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Int(t.tv_sec) * 1_000_000_000 + Int(t.tv_nsec)
}

func monotonicSeconds() -> Double { Double(monotonicNanoseconds()) / 1e9 }

/// `name` as the shell would find it on PATH (a path with a slash is taken as it is).
func executablePath(_ name: String) -> String? {
    if name.contains("/") { return name }
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let candidate = "\(dir)/\(name)"
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

/// A field of /proc/PID/status in kB (0 if unreadable).
func procStatus(_ pid: Int32, _ field: String) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix(field) {
        return Int(line.dropFirst(field.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") ?? 0
    }
    return 0
}

/// utime + stime of a process in seconds.
func processCPU(_ pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = text.lastIndex(of: ")")
    else { return 0 }
    let fields = text[text.index(close, offsetBy: 2)...].split(separator: " ")
    guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Open file descriptors of a process.
func openDescriptors(_ pid: Int32) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0
}

/// CPU time of this process in seconds.
func ownCPU() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// A free TCP port on 127.0.0.1.
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p -> Int32 in
            _ = bind(fd, p, length)
            return getsockname(fd, p, &length)
        }
    }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// One HTTP/1.1 request on a fresh connection to 127.0.0.1 (`Connection: close`); returns the
/// status code. For triggering the baseline's fan-out, where the time of the write matters.
func httpRequest(port: Int, method: String, path: String, body: String) throws -> Int {
    try httpExchange(port: port, method: method, path: path, body: body).status
}

/// As `httpRequest`, with the response's body (up to 1 MiB).
func httpExchange(port: Int, method: String, path: String, body: String = "") throws -> (status: Int, body: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw BenchError("socket: \(errno)") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw BenchError("connect to 127.0.0.1:\(port) failed: errno \(errno)") }
    let request = Array(
        ("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)").utf8)
    guard write(fd, request, request.count) == request.count else { throw BenchError("short write") }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while response.count < 1 << 20 {
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    let head = String(decoding: response.prefix(32), as: UTF8.self)
    guard head.hasPrefix("HTTP/1.1 "), let status = Int(head.dropFirst(9).prefix(3)) else {
        throw BenchError("no HTTP response from 127.0.0.1:\(port)")
    }
    let text = String(decoding: response, as: UTF8.self)
    return (status, text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? "")
}
