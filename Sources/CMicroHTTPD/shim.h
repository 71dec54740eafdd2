#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stdarg.h>
#include <microhttpd.h>

/* MHD_get_daemon_info is variadic, which Swift cannot call: the epoll descriptor of a daemon
   started with MHD_USE_EPOLL (-1 if it has none). */
static inline int aemp_mhd_epoll_fd(struct MHD_Daemon *daemon) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_EPOLL_FD);
    return info ? info->epoll_fd : -1;
}
/* MHD_get_connection_info is variadic too: the socket of a connection (-1 if unknown). */
static inline int aemp_mhd_connection_fd(struct MHD_Connection *connection) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info ? info->connect_fd : -1;
}
#include <sys/eventfd.h>
/* malloc_trim: the gateway hands freed heap back to the system after a burst of connections. */
#include <malloc.h>
/* MHD_set_response_options is variadic too: a response of unknown size without chunked encoding
   (its end is the connection's end). libmicrohttpd 0.9.75 sends a chunked response's last chunk
   even for HEAD; this is how a HEAD of an event stream gets its header block alone. */
static inline enum MHD_Result aemp_mhd_response_unchunked(struct MHD_Response *response) {
    return MHD_set_response_options(response, MHD_RF_HTTP_1_0_COMPATIBLE_STRICT, MHD_RO_END);
}
/* Hang-ups of suspended connections (Hangups.swift): an epoll set watching sockets for the peer's
   FIN. Wrapped here because struct epoll_event is packed on x86-64. */
#include <sys/epoll.h>
#include <errno.h>
static inline int aemp_hangups_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
static inline int aemp_hangups_watch(int epfd, int fd, uint64_t key) {
    struct epoll_event event = { .events = EPOLLRDHUP | EPOLLHUP | EPOLLERR, .data = { .u64 = key } };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event) == 0) return 0;
    return errno == EEXIST ? epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &event) : -1;
}
static inline int aemp_hangups_unwatch(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }
/* The keys of up to `max` watched sockets whose peer hung up (0 if none, without waiting). */
static inline int aemp_hangups_ready(int epfd, uint64_t *keys, int max) {
    struct epoll_event events[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, events, max, 0);
    for (int i = 0; i < n; i++) keys[i] = events[i].data.u64;
    return n;
}
