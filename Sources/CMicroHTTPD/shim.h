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
