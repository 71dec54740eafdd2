import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which seeds are this node, decided from the addresses it listens on (aemp-protocol §10.1 step
/// 3, where Perl decides it from the seed's greeting instead; README: Seeds that are this node).
///
/// A seed is this node when one of the addresses its host resolves to is an address a listener is
/// bound to, with the same port; for a listener on a wildcard address (`0.0.0.0`, `*`, `::`),
/// when it is a loopback address or an address of one of this host's interfaces.
enum OwnAddresses {

    /// The seeds (as configured) that are this node, given the listeners' bound addresses.
    /// Resolves host names: blocking, so call it off the node's loop.
    static func seeds(_ seeds: [String], thatAreUs listening: [SocketAddress]) -> Set<String> {
        var exact = Set<Endpoint>()
        var wildcardPorts = Set<Int>()
        for address in listening {
            guard let ip = address.ipAddress, let port = address.port else { continue }
            if ip == "0.0.0.0" || ip == "::" {
                wildcardPorts.insert(port)
            } else {
                exact.insert(Endpoint(ip: ip, port: port))
            }
        }
        guard !exact.isEmpty || !wildcardPorts.isEmpty else { return [] }
        let local = wildcardPorts.isEmpty ? [] : interfaceAddresses()
        var ours = Set<String>()
        for seed in seeds {
            guard let (host, port) = splitHostPort(seed) else { continue }
            for ip in resolve(host, port: port) {
                let isUs =
                    exact.contains(Endpoint(ip: ip, port: port))
                    || (wildcardPorts.contains(port) && (local.contains(ip) || isLoopback(ip)))
                if isUs {
                    ours.insert(seed)
                    break
                }
            }
        }
        return ours
    }

    private struct Endpoint: Hashable {
        var ip: String
        var port: Int
    }

    /// The IP addresses `host` resolves to (numeric text, as `SocketAddress.ipAddress` writes it).
    static func resolve(_ host: String, port: Int) -> [String] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        guard getaddrinfo(bare, String(port), &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(first) }
        var out: [String] = []
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let entry = next {
            if let sa = entry.pointee.ai_addr {
                let address: SocketAddress?
                switch Int32(sa.pointee.sa_family) {
                case AF_INET:
                    address = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee, host: bare) }
                case AF_INET6:
                    address = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee, host: bare) }
                default:
                    address = nil
                }
                if let ip = address?.ipAddress, !out.contains(ip) { out.append(ip) }
            }
            next = entry.pointee.ai_next
        }
        return out
    }

    /// The addresses of this host's network interfaces.
    static func interfaceAddresses() -> Set<String> {
        Set(((try? System.enumerateDevices()) ?? []).compactMap { $0.address?.ipAddress })
    }

    static func isLoopback(_ ip: String) -> Bool {
        ip.hasPrefix("127.") || ip == "::1"
    }
}
