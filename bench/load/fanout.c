/*
 * Load client for the fan-out benchmarks: thousands of concurrent HTTP/1.1 connections driven by
 * one thread (epoll, non-blocking sockets), timing when SSE events or responses arrive.
 *
 *   fanout sse HOST PORT PATH N ROUNDS TIMEOUT_S
 *       N event-stream subscriptions of PATH. "ready N <ms>" once every stream has had its first
 *       event with a data field (the snapshot); then, for k = 1..ROUNDS,
 *       "round <k> <first_ns> <last_ns> <N>" once every stream has carried the marker
 *       "bench-round-<k>" (the caller puts it into a change after reading the previous line; the
 *       times are the earliest and the latest receipt, CLOCK_MONOTONIC ns). A round not complete
 *       TIMEOUT_S after the previous line: "round <k> timeout <received> <N>", exit 1 (likewise
 *       "ready timeout <ready> <N>").
 *   fanout poll HOST PORT PATHFILE TIMEOUT_S
 *       one GET per line of PATHFILE, each on a connection of its own. "parked N <ms>" once every
 *       request is written, then "done N <first_ns> <last_ns> <non200>" once every response is
 *       complete (the first 200 bytes of the first non-200 body go to stderr); connections stay open
 *       until the end. Not all complete TIMEOUT_S after the start: "done timeout <completed> <N>", exit 1.
 *   fanout post HOST PORT PATH N CONNS BODY
 *       N POSTs of the JSON BODY over CONNS keep-alive connections, one request in flight on each;
 *       prints every response body (single-line JSON) on a line of its own, in arrival order.
 *       Exit 1 on the first non-2xx (status and body on stderr) or after 120 s.
 *
 * Lines go to stdout as they happen; errors ("error <what>") to stderr, exit 1. A connection that
 * closes or fails before the end is an error. Memory is O(connections): streams are scanned as
 * they arrive, never kept. At most CONNECT_WINDOW connections are opened and not yet known to be
 * accepted, so that the server's listen backlog is not overrun. Bodies may be chunked.
 *
 * build: gcc -O2 -Wall -Wextra -o fanout bench/load/fanout.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_WINDOW 500
#define HEAD_LIMIT 16384        /* a response's status line and headers */
#define BODY_LIMIT 65536        /* a post response's body */
#define CAPTURE_LIMIT 200       /* what is shown of a non-200 poll body */
#define TAIL 31                 /* stream bytes kept to find a marker split across reads */
#define POST_TIMEOUT_S 120

enum mode { SSE, POLL, POST };
enum phase { CONNECTING, SENDING, HEADERS, BODY, CLOSED };
enum framing { BY_LENGTH, CHUNKED, UNTIL_CLOSE };
enum chunk_state { CHUNK_SIZE, CHUNK_EXTENSION, CHUNK_DATA, CHUNK_DATA_END, CHUNK_TRAILER };

struct conn {
    int fd;
    uint32_t generation;        /* bumped per socket: tells stale epoll events apart */
    uint32_t events;            /* current epoll interest */
    unsigned char phase, framing, chunk_state, settled, close_after;
    const char *request;        /* owned by main(): one shared, or one per poll path */
    size_t request_length, written;
    char *head;                 /* the response head while it is incomplete */
    size_t head_length;
    int status;
    uint64_t remaining;         /* body or chunk bytes to come, or the chunk size being read */
    unsigned line_length;       /* chunk-size digits, or trailer line length, so far */
    char *body;                 /* post: the body; poll: the start of a non-200 body */
    size_t body_length;
    /* sse: until the first event, a line scanner (is the line "data:..."? has the event data?);
     * then the last round seen and the stream's tail */
    int round;                  /* -1 until the first event */
    unsigned char sse_column, not_data_line, event_has_data, tail_length;
    char tail[TAIL];
};

static enum mode mode;
static struct conn *conns;
static size_t nconns, opened, in_flight;
static int epfd;
static struct addrinfo *server;
static long long started_ns, deadline_ns, timeout_ns;
static long long first_ns, last_ns;     /* sse: of the current round; poll: of all responses */

static int rounds, round_k;             /* sse; round_k is 0 until "ready" */
static size_t ready_count, round_count;
static size_t written_count, completed_count, non200;   /* poll */
static size_t post_total, post_sent, post_done;

static void fail(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("error ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    exit(1);
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static size_t index_of(const struct conn *c) { return (size_t)(c - conns); }

static uint64_t epoll_key(const struct conn *c) { return ((uint64_t)c->generation << 32) | index_of(c); }

static void set_interest(struct conn *c, uint32_t events) {
    if (c->events == events) return;
    struct epoll_event e = { .events = events, .data.u64 = epoll_key(c) };
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e) != 0) fail("epoll_ctl: %s", strerror(errno));
    c->events = events;
}

static void close_conn(struct conn *c) {
    close(c->fd);
    c->fd = -1;
    c->phase = CLOSED;
}

static void open_conn(struct conn *c) {
    c->fd = socket(server->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) fail("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->generation++;
    c->phase = CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event e = { .events = EPOLLOUT, .data.u64 = epoll_key(c) };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &e) != 0) fail("epoll_ctl: %s", strerror(errno));
    if (connect(c->fd, server->ai_addr, server->ai_addrlen) != 0 && errno != EINPROGRESS)
        fail("connect: %s", strerror(errno));
}

static void open_more(void) {
    while (opened < nconns && in_flight < CONNECT_WINDOW) {
        in_flight++;
        open_conn(&conns[opened++]);
    }
}

/* The server has taken the connection (sse: it answered; poll, post: the request is written,
 * the nearest sign there is of a long-poll's acceptance): the next one may be opened. */
static void settle(struct conn *c) {
    if (c->settled) return;
    c->settled = 1;
    in_flight--;
}

static void send_request(struct conn *c) {
    while (c->written < c->request_length) {
        ssize_t n = send(c->fd, c->request + c->written, c->request_length - c->written, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) { set_interest(c, EPOLLOUT); return; }
            fail("connection %zu: send: %s", index_of(c), strerror(errno));
        }
        c->written += (size_t)n;
    }
    c->phase = HEADERS;
    set_interest(c, EPOLLIN);
    if (mode == SSE) return;
    settle(c);
    if (mode == POLL && ++written_count == nconns)
        printf("parked %zu %.1f\n", nconns, (now_ns() - started_ns) / 1e6);
}

static void start_request(struct conn *c) {
    if (mode == POST) post_sent++;
    c->written = 0;
    c->phase = SENDING;
    send_request(c);
}

static void connected(struct conn *c) {
    int error = 0;
    socklen_t length = sizeof error;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &length);
    if (error != 0) fail("connection %zu: connect: %s", index_of(c), strerror(error));
    start_request(c);
}

/* ---- sse ---- */

static void seen_round(struct conn *c) {
    long long t = now_ns();
    if (round_count == 0) first_ns = t;
    last_ns = t;
    c->round = round_k;
    c->tail_length = 0;
    if (++round_count < nconns) return;
    printf("round %d %lld %lld %zu\n", round_k, first_ns, last_ns, round_count);
    if (round_k == rounds) exit(0);   /* exiting closes every stream */
    round_k++;
    round_count = 0;
    deadline_ns = now_ns() + timeout_ns;
}

/* Looks for "bench-round-<round_k>" across the tail and the new bytes, then keeps the last TAIL
 * bytes of both as the tail. */
static void scan_marker(struct conn *c, const char *p, size_t n) {
    char marker[32], seam[2 * TAIL];
    size_t m = (size_t)snprintf(marker, sizeof marker, "bench-round-%d", round_k);
    size_t s = c->tail_length + (n < TAIL ? n : TAIL);
    memcpy(seam, c->tail, c->tail_length);
    memcpy(seam + c->tail_length, p, s - c->tail_length);
    if (memmem(seam, s, marker, m) || memmem(p, n, marker, m)) {
        seen_round(c);
        return;
    }
    if (n >= TAIL) {
        memcpy(c->tail, p + n - TAIL, TAIL);
        c->tail_length = TAIL;
    } else {
        size_t keep = c->tail_length + n > TAIL ? TAIL - n : c->tail_length;
        memmove(c->tail, c->tail + c->tail_length - keep, keep);
        memcpy(c->tail + keep, p, n);
        c->tail_length = (unsigned char)(keep + n);
    }
}

/* Stream bytes, chunk framing removed. Lines are read until the first event that has a data
 * field (the snapshot: a "retry:" alone is not one); the bytes after it, once every stream is
 * there, are scanned for the round's marker. */
static void sse_bytes(struct conn *c, const char *p, size_t n) {
    size_t i = 0;
    while (c->round < 0 && i < n) {
        char b = p[i++];
        if (b == '\r') continue;
        if (b != '\n') {
            if (c->sse_column < 5) {
                if (b != "data:"[c->sse_column]) c->not_data_line = 1;
                c->sse_column++;
            }
            continue;
        }
        if (c->sse_column == 0 && c->event_has_data) {          /* the blank line ending it */
            c->round = 0;
            if (++ready_count == nconns) {
                printf("ready %zu %.1f\n", nconns, (now_ns() - started_ns) / 1e6);
                round_k = 1;
                deadline_ns = now_ns() + timeout_ns;
            }
        } else if (c->sse_column == 5 && !c->not_data_line) {
            c->event_has_data = 1;
        }
        c->sse_column = 0;
        c->not_data_line = 0;
    }
    if (c->round >= 0 && c->round < round_k && i < n) scan_marker(c, p + i, n - i);
}

/* ---- responses ---- */

static void body_bytes(struct conn *c, const char *p, size_t n) {
    switch (mode) {
    case SSE:
        sse_bytes(c, p, n);
        break;
    case POLL:
        if (c->status != 200 && c->body_length < CAPTURE_LIMIT) {
            size_t k = n < CAPTURE_LIMIT - c->body_length ? n : CAPTURE_LIMIT - c->body_length;
            if (c->body == NULL) c->body = malloc(CAPTURE_LIMIT);
            memcpy(c->body + c->body_length, p, k);
            c->body_length += k;
        }
        break;
    case POST:
        if (c->body_length + n > BODY_LIMIT) fail("connection %zu: response body over %d bytes", index_of(c), BODY_LIMIT);
        if (c->body == NULL) c->body = malloc(BODY_LIMIT);
        memcpy(c->body + c->body_length, p, n);
        c->body_length += n;
        break;
    }
}

static void response_complete(struct conn *c) {
    long long t = now_ns();
    const char *body = c->body ? c->body : "";
    switch (mode) {
    case SSE:
        fail("connection %zu: stream ended", index_of(c));
        break;
    case POLL:
        if (completed_count == 0) first_ns = t;
        last_ns = t;
        if (c->status != 200 && non200++ == 0)
            fprintf(stderr, "first non-200: status %d, body: %.*s\n", c->status, (int)c->body_length, body);
        free(c->body);
        c->body = NULL;
        /* Keep the connection (a keep-alive client would poll again on it): closing here would
           make the server close its end while it is still answering the others. Nothing more is
           expected on it, so it leaves the epoll set; exiting closes it. */
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->phase = CLOSED;
        if (++completed_count == nconns) {
            printf("done %zu %lld %lld %zu\n", nconns, first_ns, last_ns, non200);
            exit(0);
        }
        break;
    case POST:
        if (c->status < 200 || c->status > 299)
            fail("connection %zu: status %d, body: %.*s", index_of(c), c->status, (int)c->body_length, body);
        while (c->body_length > 0 && (body[c->body_length - 1] == '\n' || body[c->body_length - 1] == '\r'))
            c->body_length--;
        printf("%.*s\n", (int)c->body_length, body);
        c->body_length = 0;
        if (++post_done == post_total) exit(0);
        if (post_sent == post_total) {
            close_conn(c);
        } else if (c->close_after) {    /* the server ends this connection: go on on a new one */
            close_conn(c);
            open_conn(c);
        } else {
            start_request(c);
        }
        break;
    }
}

/* The head is complete (head_length bytes, NUL-terminated after its blank line): status, framing. */
static void parse_head(struct conn *c) {
    if (sscanf(c->head, "HTTP/1.%*d %d", &c->status) != 1) fail("connection %zu: bad status line", index_of(c));
    c->framing = UNTIL_CLOSE;
    c->close_after = 0;
    char *line = strstr(c->head, "\r\n") + 2;
    for (char *end; (end = strstr(line, "\r\n")) != NULL && end > line; line = end + 2) {
        *end = '\0';
        char *colon = strchr(line, ':');
        if (colon == NULL) continue;
        const char *value = colon + 1 + strspn(colon + 1, " \t");
        size_t length = (size_t)(colon - line);
        if (length == 14 && strncasecmp(line, "content-length", 14) == 0) {
            c->framing = BY_LENGTH;
            c->remaining = strtoull(value, NULL, 10);
        } else if (length == 17 && strncasecmp(line, "transfer-encoding", 17) == 0 && strcasestr(value, "chunked")) {
            c->framing = CHUNKED;
            c->chunk_state = CHUNK_SIZE;
            c->remaining = 0;
            c->line_length = 0;
        } else if (length == 10 && strncasecmp(line, "connection", 10) == 0 && strcasestr(value, "close")) {
            c->close_after = 1;
        }
    }
    if (c->status == 204 || c->status == 304) {
        c->framing = BY_LENGTH;
        c->remaining = 0;
    }
    if (mode == SSE) {
        if (c->status != 200) fail("connection %zu: status %d", index_of(c), c->status);
        settle(c);
    }
}

/* Collects head bytes; once its blank line is there, parses it and returns the bytes of p it
 * took (the rest is body); returns 0 while the head is incomplete (then it took all of p). */
static size_t take_head(struct conn *c, const char *p, size_t n) {
    size_t old = c->head_length;
    if (old + n > HEAD_LIMIT) fail("connection %zu: response head over %d bytes", index_of(c), HEAD_LIMIT);
    if (c->head == NULL) c->head = malloc(HEAD_LIMIT + 1);
    memcpy(c->head + old, p, n);
    c->head_length += n;
    size_t from = old >= 3 ? old - 3 : 0;
    char *blank = memmem(c->head + from, c->head_length - from, "\r\n\r\n", 4);
    if (blank == NULL) return 0;
    size_t used = (size_t)(blank + 4 - c->head) - old;
    blank[2] = '\0';
    parse_head(c);
    free(c->head);
    c->head = NULL;
    c->head_length = 0;
    return used;
}

/* The end of a chunk-size line: data follows, or (size 0) the trailers. */
static void chunk_size_read(struct conn *c) {
    c->chunk_state = c->remaining == 0 ? CHUNK_TRAILER : CHUNK_DATA;
    c->line_length = 0;
}

/* Takes body bytes through the framing; returns how many it used, setting *done when the
 * response ended with the last of them. */
static size_t body_step(struct conn *c, const char *p, size_t n, int *done) {
    if (c->framing == UNTIL_CLOSE) {
        body_bytes(c, p, n);
        return n;
    }
    if (c->framing == BY_LENGTH || c->chunk_state == CHUNK_DATA) {
        size_t k = c->remaining < n ? (size_t)c->remaining : n;
        body_bytes(c, p, k);
        c->remaining -= k;
        if (c->remaining == 0) {
            if (c->framing == BY_LENGTH) *done = 1;
            else c->chunk_state = CHUNK_DATA_END;
        }
        return k;
    }
    for (size_t i = 0; i < n; i++) {          /* chunk-size line, CRLF after data, trailers */
        char b = p[i], lower = (char)(b | 0x20);
        switch (c->chunk_state) {
        case CHUNK_SIZE:
            if ((b >= '0' && b <= '9') || (lower >= 'a' && lower <= 'f')) {
                if (++c->line_length > 15) fail("connection %zu: chunk size too large", index_of(c));
                c->remaining = c->remaining * 16 + (uint64_t)(b <= '9' ? b - '0' : lower - 'a' + 10);
            } else if (c->line_length > 0 && (b == ';' || b == ' ' || b == '\t')) {
                c->chunk_state = CHUNK_EXTENSION;
            } else if (c->line_length > 0 && b == '\n') {
                chunk_size_read(c);
                if (c->chunk_state == CHUNK_DATA) return i + 1;
            } else if (b != '\r') {
                fail("connection %zu: bad chunk size", index_of(c));
            }
            break;
        case CHUNK_EXTENSION:
            if (b == '\n') {
                chunk_size_read(c);
                if (c->chunk_state == CHUNK_DATA) return i + 1;
            }
            break;
        case CHUNK_DATA_END:
            if (b == '\n') {
                c->chunk_state = CHUNK_SIZE;
                c->remaining = 0;
            } else if (b != '\r') {
                fail("connection %zu: chunk data not followed by CRLF", index_of(c));
            }
            break;
        case CHUNK_TRAILER:                     /* lines up to a blank one */
            if (b == '\n') {
                if (c->line_length == 0) {
                    *done = 1;
                    return i + 1;
                }
                c->line_length = 0;
            } else if (b != '\r') {
                c->line_length++;
            }
            break;
        case CHUNK_DATA:                        /* taken above */
            break;
        }
    }
    return n;
}

/* Response bytes: the head, then the body; one request is in flight per connection, so nothing
 * may follow the end of a response. */
static void consume(struct conn *c, const char *p, size_t n) {
    if (c->phase == HEADERS) {
        size_t used = take_head(c, p, n);
        if (used == 0) return;
        p += used;
        n -= used;
        c->phase = BODY;
    }
    int done = c->framing == BY_LENGTH && c->remaining == 0;
    while (!done && n > 0) {
        size_t used = body_step(c, p, n, &done);
        p += used;
        n -= used;
    }
    if (!done) return;
    if (n > 0) fail("connection %zu: %zu unexpected bytes after a response", index_of(c), n);
    response_complete(c);
}

static void receive(struct conn *c) {
    static char buffer[65536];
    ssize_t n = recv(c->fd, buffer, sizeof buffer, 0);
    if (n > 0) consume(c, buffer, (size_t)n);
    else if (n < 0 && errno != EAGAIN) fail("connection %zu: recv: %s", index_of(c), strerror(errno));
    else if (n == 0 && c->phase == BODY && c->framing == UNTIL_CLOSE) response_complete(c);
    else if (n == 0) fail("connection %zu: closed by the server", index_of(c));
}

static void on_timeout(void) {
    switch (mode) {
    case SSE:
        if (round_k == 0) printf("ready timeout %zu %zu\n", ready_count, nconns);
        else printf("round %d timeout %zu %zu\n", round_k, round_count, nconns);
        break;
    case POLL:
        printf("done timeout %zu %zu\n", completed_count, nconns);
        break;
    case POST:
        fprintf(stderr, "error timeout: %zu of %zu responses\n", post_done, post_total);
        break;
    }
    exit(1);
}

/* Runs until a mode ends the process: done (exit 0), an error or the deadline (exit 1). */
static void run(void) {
    struct epoll_event events[1024];
    for (;;) {
        long long left = deadline_ns - now_ns();
        if (left <= 0) on_timeout();
        int ready = epoll_wait(epfd, events, 1024, (int)(left / 1000000 + 1));
        if (ready < 0 && errno != EINTR) fail("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < ready; i++) {
            struct conn *c = &conns[(uint32_t)events[i].data.u64];
            uint32_t e = events[i].events;
            if (c->phase == CLOSED || events[i].data.u64 != epoll_key(c)) continue;
            if (c->phase == CONNECTING) connected(c);
            else if (c->phase == SENDING) send_request(c);
            else if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) receive(c);
        }
        open_more();
    }
}

static char *format(const char *f, ...) {
    va_list args;
    va_start(args, f);
    char *text;
    if (vasprintf(&text, f, args) < 0) fail("out of memory");
    va_end(args);
    return text;
}

static void usage(void) {
    fprintf(stderr, "usage: fanout sse HOST PORT PATH N ROUNDS TIMEOUT_S\n"
                    "       fanout poll HOST PORT PATHFILE TIMEOUT_S\n"
                    "       fanout post HOST PORT PATH N CONNS BODY\n");
    exit(2);
}

static long number(const char *text) {
    char *end;
    long v = strtol(text, &end, 10);
    if (*end != '\0' || end == text || v < 1) usage();
    return v;
}

/* Poll: one request per non-empty line of the file. */
static char **read_paths(const char *file_name, const char *host, const char *port) {
    FILE *file = fopen(file_name, "r");
    if (file == NULL) fail("%s: %s", file_name, strerror(errno));
    char **requests = NULL, *line = NULL;
    size_t capacity = 0, allocated = 0;
    ssize_t length;
    while ((length = getline(&line, &capacity, file)) > 0) {
        while (length > 0 && (line[length - 1] == '\n' || line[length - 1] == '\r')) line[--length] = '\0';
        if (length == 0) continue;
        if (nconns == allocated) {
            allocated = allocated ? 2 * allocated : 1024;
            requests = realloc(requests, allocated * sizeof *requests);
        }
        requests[nconns++] = format("GET %s HTTP/1.1\r\nHost: %s:%s\r\n\r\n", line, host, port);
    }
    free(line);
    fclose(file);
    if (nconns == 0) fail("%s: no paths", file_name);
    return requests;
}

int main(int argc, char **argv) {
    started_ns = now_ns();
    if (argc < 6) usage();
    const char *host = argv[2], *port = argv[3];
    char *shared = NULL, **requests = NULL;
    if (strcmp(argv[1], "sse") == 0 && argc == 8) {
        mode = SSE;
        nconns = (size_t)number(argv[5]);
        rounds = (int)number(argv[6]);
        timeout_ns = number(argv[7]) * 1000000000LL;
        shared = format("GET %s HTTP/1.1\r\nHost: %s:%s\r\nAccept: text/event-stream\r\n\r\n", argv[4], host, port);
    } else if (strcmp(argv[1], "poll") == 0 && argc == 6) {
        mode = POLL;
        timeout_ns = number(argv[5]) * 1000000000LL;
        requests = read_paths(argv[4], host, port);
    } else if (strcmp(argv[1], "post") == 0 && argc == 8) {
        mode = POST;
        post_total = (size_t)number(argv[5]);
        nconns = (size_t)number(argv[6]);
        if (nconns > post_total) nconns = post_total;
        timeout_ns = POST_TIMEOUT_S * 1000000000LL;
        shared = format("POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                        argv[4], host, port, strlen(argv[7]), argv[7]);
    } else {
        usage();
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    int gai = getaddrinfo(host, port, &hints, &server);
    if (gai != 0) fail("%s:%s: %s", host, port, gai_strerror(gai));

    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    if (nconns + 16 > limit.rlim_cur)
        fail("%zu connections need more than the %llu open files allowed", nconns, (unsigned long long)limit.rlim_cur);

    setvbuf(stdout, NULL, _IOLBF, 0);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) fail("epoll_create1: %s", strerror(errno));
    conns = calloc(nconns, sizeof *conns);
    for (size_t i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].round = -1;
        conns[i].request = requests ? requests[i] : shared;
        conns[i].request_length = strlen(conns[i].request);
    }
    deadline_ns = started_ns + timeout_ns;
    open_more();
    run();
}
