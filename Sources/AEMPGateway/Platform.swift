// The gateway is Linux-only, and says so here rather than with a wall of missing symbols:
// libmicrohttpd runs in epoll mode beside an epoll set of its own that watches waiting clients
// for hang-ups (EPOLLRDHUP, Hangups.swift), event streams wake libmicrohttpd through an eventfd
// (EventStream.swift), and idle memory goes back to the system with malloc_trim (Gateway.swift).
// The AEMP library has no such calls: it builds wherever SwiftNIO and jansson do.
// The C shim (Sources/CMicroHTTPD/shim.h) declares its Linux-only helpers under __linux__ alone,
// so that on another system the C module still compiles and this #error says why the gateway does not.
#if !os(Linux)
#error("aemp-gateway builds on Linux only (epoll, eventfd, malloc_trim); the AEMP library builds wherever SwiftNIO does")
#endif
