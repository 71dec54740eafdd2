/* libmicrohttpd as the gateway uses it, for Swift: what the importer cannot take (variadic
   functions, macros with casts, packed structs) wrapped here in small static inline functions and
   named constants, as SwiftNIO's CNIOLinux does.

   Linux only: the package's gateway targets say so (Sources/AEMPGateway/Platform.swift, an #error
   on other systems). The Linux headers below (eventfd, malloc_trim, epoll) are included only under
   __linux__, so that elsewhere this module still builds and that #error is the one message. */
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
/* MHD_set_response_options is variadic too: a response of unknown size without chunked encoding
   (its end is the connection's end). libmicrohttpd 0.9.75 sends a chunked response's last chunk
   even for HEAD; this is how a HEAD of an event stream gets its header block alone. */
static inline enum MHD_Result aemp_mhd_response_unchunked(struct MHD_Response *response) {
    return MHD_set_response_options(response, MHD_RF_HTTP_1_0_COMPATIBLE_STRICT, MHD_RO_END);
}

/* Macros with casts, which Swift does not import: the size of a response read from a callback
   (an event stream), and what that callback returns to end the stream, or to abort it. */
static const uint64_t AEMP_MHD_SIZE_UNKNOWN = MHD_SIZE_UNKNOWN;
static const ssize_t AEMP_MHD_CONTENT_READER_END_OF_STREAM = MHD_CONTENT_READER_END_OF_STREAM;
static const ssize_t AEMP_MHD_CONTENT_READER_END_WITH_ERROR = MHD_CONTENT_READER_END_WITH_ERROR;

/* ---- Starting the daemon (HTTPServer.start) ----
   MHD_start_daemon is variadic: aemp_mhd_start passes every option in one MHD_OPTION_ARRAY built
   here, with libmicrohttpd's names, and Swift hands over typed callbacks (checked by the importer,
   no casts on its side). */

/* MHD_OPTION_URI_LOG_CALLBACK's callback (microhttpd.h names no type for it): the request line has
   arrived; returns the request's context (its req_cls). */
typedef void *(*aemp_mhd_request_line_callback)(void *cls, const char *uri, struct MHD_Connection *connection);
/* MHD_OPTION_UNESCAPE_CALLBACK's callback: unescapes `s` in place, returns its new length. */
typedef size_t (*aemp_mhd_unescape_callback)(void *cls, struct MHD_Connection *connection, char *s);

/* The callbacks of a daemon. */
struct aemp_mhd_callbacks {
    /* The closure of every callback but `unescape` (the server). */
    void *cls;
    /* The access handler: every request. */
    MHD_AccessHandlerCallback access;
    /* MHD_OPTION_EXTERNAL_LOGGER: libmicrohttpd's error messages (MHD_USE_ERROR_LOG). */
    MHD_LogCallback log;
    /* MHD_OPTION_NOTIFY_CONNECTION: a connection opened or closed. */
    MHD_NotifyConnectionCallback connection;
    /* MHD_OPTION_NOTIFY_COMPLETED: a request is over (answered, or its connection closed). */
    MHD_RequestCompletedCallback completed;
    /* MHD_OPTION_URI_LOG_CALLBACK: the request line arrived. */
    aemp_mhd_request_line_callback request_line;
    /* MHD_OPTION_UNESCAPE_CALLBACK, called with a NULL closure. */
    aemp_mhd_unescape_callback unescape;
};

/* The socket and limits of a daemon. */
struct aemp_mhd_settings {
    /* MHD_OPTION_LISTEN_SOCKET: bound and listening already. */
    int listen_fd;
    /* MHD_OPTION_CONNECTION_LIMIT. */
    unsigned int connection_limit;
    /* MHD_OPTION_CONNECTION_TIMEOUT, in seconds. */
    unsigned int connection_timeout;
    /* MHD_OPTION_CONNECTION_MEMORY_LIMIT, in bytes. */
    size_t connection_memory_limit;
    /* NUL-terminated PEM (MHD_OPTION_HTTPS_MEM_CERT, MHD_OPTION_HTTPS_MEM_KEY): with both, the
       daemon speaks HTTPS only (MHD_USE_TLS); GnuTLS parses them while the daemon starts. */
    const char *tls_certificate;
    const char *tls_key;
};

/* The daemon's mode: epoll; suspend and resume (with MHD_USE_ITC, which also wakes the poller for
   resumes from other threads); errors to the logger callback; turbo. No polling thread of
   libmicrohttpd's own: the gateway's thread polls (HTTPServer.poll). */
static const unsigned int AEMP_MHD_DAEMON_FLAGS =
    MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_TURBO;

/* Starts a daemon on the listening socket of `settings` (port 0: libmicrohttpd binds nothing
   itself); NULL if libmicrohttpd refuses (e.g. a certificate and key that do not match). */
static inline struct MHD_Daemon *aemp_mhd_start(
    const struct aemp_mhd_settings *settings, const struct aemp_mhd_callbacks *callbacks)
{
    unsigned int flags = AEMP_MHD_DAEMON_FLAGS;
    struct MHD_OptionItem options[12];
    int n = 0;
    if (settings->tls_certificate != NULL && settings->tls_key != NULL) {
        flags |= MHD_USE_TLS;
        options[n++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_CERT, 0, (void *) settings->tls_certificate };
        options[n++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_KEY, 0, (void *) settings->tls_key };
    }
    /* A callback option takes the function in `value` and its closure in `ptr_value`. */
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_EXTERNAL_LOGGER, (intptr_t) callbacks->log, callbacks->cls };
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_LISTEN_SOCKET, settings->listen_fd, NULL };
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t) callbacks->unescape, NULL };
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_LIMIT, (intptr_t) settings->connection_limit, NULL };
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_NOTIFY_CONNECTION, (intptr_t) callbacks->connection, callbacks->cls };
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t) settings->connection_timeout, NULL };
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t) settings->connection_memory_limit, NULL };
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_NOTIFY_COMPLETED, (intptr_t) callbacks->completed, callbacks->cls };
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_URI_LOG_CALLBACK, (intptr_t) callbacks->request_line, callbacks->cls };
    options[n++] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };
    return MHD_start_daemon(flags, 0, NULL, NULL, callbacks->access, callbacks->cls,
                            MHD_OPTION_ARRAY, options, MHD_OPTION_END);
}

#ifdef __linux__
/* Event streams wake the polling thread through an eventfd (EventStream.swift, Resumer). */
#include <sys/eventfd.h>
/* malloc_trim: the gateway hands freed heap back to the system after a burst of connections. */
#include <malloc.h>
/* Hang-ups of suspended connections (Hangups.swift): an epoll set watching sockets for the peer's
   FIN. Wrapped here because struct epoll_event is packed on x86-64. */
#include <sys/epoll.h>
#include <errno.h>
/* The most hang-ups aemp_hangups_ready reports at once. */
enum { AEMP_HANGUPS_BATCH = 256 };
static inline int aemp_hangups_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
static inline int aemp_hangups_watch(int epfd, int fd, uint64_t key) {
    struct epoll_event event = { .events = EPOLLRDHUP | EPOLLHUP | EPOLLERR, .data = { .u64 = key } };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event) == 0) return 0;
    return errno == EEXIST ? epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &event) : -1;
}
static inline int aemp_hangups_unwatch(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }
/* The keys of up to `max` watched sockets whose peer hung up (0 if none, without waiting). */
static inline int aemp_hangups_ready(int epfd, uint64_t *keys, int max) {
    struct epoll_event events[AEMP_HANGUPS_BATCH];
    if (max > AEMP_HANGUPS_BATCH) max = AEMP_HANGUPS_BATCH;
    int n = epoll_wait(epfd, events, max, 0);
    for (int i = 0; i < n; i++) keys[i] = events[i].data.u64;
    return n;
}
#endif
