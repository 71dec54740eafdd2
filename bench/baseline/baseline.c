/*
 * The limit of this machine for the gateway's request shapes: libmicrohttpd (epoll, one internal
 * thread, responses queued on the second handler call) + jansson, nothing else.
 *
 *   POST /v1/send              parses a JSON body {"port": "...", "message": [...]} (or an array of
 *                              them, a batch) with jansson and answers 202 {"accepted":N} encoded by
 *                              jansson (what the gateway does minus the mesh).
 *   GET  /healthz              200 {"status":"ok"}.
 *   GET  /v1/db/FAMILY/watch   Server-Sent Events, the shape of the gateway's family change feed:
 *                              "retry: 1000", a snapshot event of the family's values, then one
 *                              change event per PUT to the family. An idle stream is a suspended
 *                              MHD connection; a PUT resumes it.
 *   PUT  /v1/db/FAMILY/KEY     stores the JSON body as KEY's value, encodes ONE change event with
 *                              jansson and appends its bytes to every watcher of FAMILY; 204.
 *   GET  /v1/poll              a long-poll: parked (a suspended connection) until
 *   POST /v1/release           answers every parked long-poll, each with its own jansson-encoded
 *                              body shaped like a mailbox answer with one message; 200 {"released":N}.
 *
 * usage: baseline PORT   (binds 127.0.0.1 only; runs until SIGINT/SIGTERM)
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct request {
    char *body;
    size_t length;
    int too_large;
    /* A parked long-poll (GET /v1/poll): on the parked list until POST /v1/release answers it. */
    struct request *prev_parked, *next_parked;
    struct MHD_Connection *connection;
    int parked, released;
    long long message;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, json_t *value) {
    char *text = json_dumps(value, JSON_COMPACT);
    json_decref(value);
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result reply_empty(struct MHD_Connection *c, unsigned status) {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* ---- family change feeds ----
 * Everything below runs on the one MHD thread, except the shutdown pass in main(), which must
 * resume every suspended stream before MHD_stop_daemon (that panics on a suspended connection).
 * streams_lock exists for that pass only; on the MHD thread it is never contended. */

#define STREAM_BLOCK 4096
#define PENDING_LIMIT ((size_t)1 << 20)   /* a watcher further behind than this loses its stream */

struct subscriber {
    struct family *family;              /* NULL once unlinked: the stream only drains, then ends */
    struct subscriber *prev, *next;
    struct MHD_Connection *connection;
    char *pending;                      /* bytes not yet handed to MHD: pending[offset, length) */
    size_t offset, length, capacity;
    int suspended;
};

struct family {
    struct family *next;
    char *name;
    json_t *values;                     /* key -> value */
    unsigned long long index;           /* changes so far; the current event id is b-<index> */
    struct subscriber *subscribers;
};

static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;
static struct family *families;         /* a list: a benchmark has a handful of families */
static int stopping;

static struct family *family_named(const char *name, size_t length) {
    for (struct family *f = families; f; f = f->next)
        if (strlen(f->name) == length && memcmp(f->name, name, length) == 0) return f;
    struct family *f = calloc(1, sizeof *f);
    f->name = strndup(name, length);
    f->values = json_object();
    f->next = families;
    families = f;
    return f;
}

static void unlink_subscriber(struct subscriber *s) {
    if (s->family == NULL) return;
    if (s->prev) s->prev->next = s->next; else s->family->subscribers = s->next;
    if (s->next) s->next->prev = s->prev;
    s->family = NULL;
    s->prev = s->next = NULL;
}

static void wake(struct subscriber *s) {
    if (!s->suspended) return;
    s->suspended = 0;
    MHD_resume_connection(s->connection);
}

/* Queues bytes on a stream; past PENDING_LIMIT the stream is unlinked and ends once drained. */
static void append(struct subscriber *s, const char *bytes, size_t n) {
    if (s->length - s->offset + n > PENDING_LIMIT) {
        unlink_subscriber(s);
    } else {
        if (s->offset > 0) {
            memmove(s->pending, s->pending + s->offset, s->length - s->offset);
            s->length -= s->offset;
            s->offset = 0;
        }
        if (s->length + n > s->capacity) {
            s->capacity = s->length + n > 2 * s->capacity ? s->length + n : 2 * s->capacity;
            s->pending = realloc(s->pending, s->capacity);
        }
        memcpy(s->pending + s->length, bytes, n);
        s->length += n;
    }
    wake(s);
}

/* "id: b-<index>\nevent: <event>\ndata: <compact JSON>\n\n"; takes the reference to data. */
static char *event_text(unsigned long long index, const char *event, json_t *data, size_t *length) {
    char *json = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    size_t size = strlen(json) + strlen(event) + 64;
    char *text = malloc(size);
    *length = (size_t)snprintf(text, size, "id: b-%llu\nevent: %s\ndata: %s\n\n", index, event, json);
    free(json);
    return text;
}

static ssize_t stream_read(void *cls, uint64_t position, char *buffer, size_t max) {
    (void)position;
    struct subscriber *s = cls;
    ssize_t result;
    pthread_mutex_lock(&streams_lock);
    if (s->offset < s->length) {
        size_t n = s->length - s->offset < max ? s->length - s->offset : max;
        memcpy(buffer, s->pending + s->offset, n);
        s->offset += n;
        if (s->offset == s->length) {   /* drained: an idle stream holds no buffer */
            free(s->pending);
            s->pending = NULL;
            s->offset = s->length = s->capacity = 0;
        }
        result = (ssize_t)n;
    } else if (s->family == NULL) {
        result = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* Nothing to send: park the connection until append() resumes it. */
        s->suspended = 1;
        MHD_suspend_connection(s->connection);
        result = 0;
    }
    pthread_mutex_unlock(&streams_lock);
    return result;
}

/* The response is gone: the stream ended, or the client went away. MHD does not watch a
 * suspended connection, so a client that left an idle stream is noticed only once events resume
 * it and a write fails (the second event after the close, as the first draws the peer's RST). */
static void stream_free(void *cls) {
    struct subscriber *s = cls;
    pthread_mutex_lock(&streams_lock);
    unlink_subscriber(s);
    pthread_mutex_unlock(&streams_lock);
    free(s->pending);
    free(s);
}

static enum MHD_Result watch(struct MHD_Connection *c, const char *name, size_t length) {
    pthread_mutex_lock(&streams_lock);
    if (stopping) {
        pthread_mutex_unlock(&streams_lock);
        return reply(c, 503, json_pack("{s:s}", "code", "shutting_down"));
    }
    struct family *f = family_named(name, length);
    struct subscriber *s = calloc(1, sizeof *s);
    s->connection = c;
    s->family = f;
    s->next = f->subscribers;
    if (s->next) s->next->prev = s;
    f->subscribers = s;
    char id[32];
    snprintf(id, sizeof id, "b-%llu", f->index);
    size_t n;
    char *snapshot = event_text(f->index, "snapshot",
                                json_pack("{s:s, s:s, s:O, s:b}", "family", f->name, "id", id,
                                          "values", f->values, "reset", 0), &n);
    static const char retry[] = "retry: 1000\n\n";
    append(s, retry, sizeof retry - 1);
    append(s, snapshot, n);
    free(snapshot);
    pthread_mutex_unlock(&streams_lock);

    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read,
                                                               s, stream_free);
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result put(struct MHD_Connection *c, struct request *q, const char *name, size_t length,
                           const char *key) {
    if (q->too_large) return reply(c, 413, json_pack("{s:s}", "code", "body_too_large"));
    json_error_t error;
    json_t *value = json_loadb(q->body ? q->body : "", q->length, JSON_DECODE_ANY, &error);
    if (value == NULL) return reply(c, 400, json_pack("{s:s}", "code", "malformed_json"));
    pthread_mutex_lock(&streams_lock);
    struct family *f = family_named(name, length);
    int added = json_object_get(f->values, key) == NULL;
    json_object_set(f->values, key, value);
    f->index++;
    char id[32];
    snprintf(id, sizeof id, "b-%llu", f->index);
    json_t *change = json_pack("{s:s, s:s, s:{}, s:{}, s:[]}", "family", f->name, "id", id, "added",
                               "changed", "deleted");
    json_object_set_new(json_object_get(change, added ? "added" : "changed"), key, value);
    size_t n;
    char *event = event_text(f->index, "change", change, &n);
    for (struct subscriber *s = f->subscribers, *next; s; s = next) {
        next = s->next;                 /* append() may unlink s */
        append(s, event, n);
    }
    pthread_mutex_unlock(&streams_lock);
    free(event);
    return reply_empty(c, 204);
}

/* ---- long-polls: the shape of the gateway's mailbox long-poll (scenario 4) ----
 * GET /v1/poll parks the request (a suspended connection); POST /v1/release answers every parked
 * one with its own jansson-encoded body, shaped like a mailbox answer with one message. */

static struct request *parked_requests;  /* under streams_lock (for the shutdown pass) */
static long long released_total;

static void unpark(struct request *q) {
    if (!q->parked) return;
    if (q->prev_parked) q->prev_parked->next_parked = q->next_parked; else parked_requests = q->next_parked;
    if (q->next_parked) q->next_parked->prev_parked = q->prev_parked;
    q->parked = 0;
    q->prev_parked = q->next_parked = NULL;
}

static enum MHD_Result poll_request(struct MHD_Connection *c, struct request *q) {
    if (q->released) {
        json_t *entry = json_pack("{s:s, s:[s, I], s:i}", "type", "message", "message", "bench",
                                  (json_int_t)q->message, "seq", 1);
        return reply(c, 200, json_pack("{s:[o], s:i, s:i}", "messages", entry, "last", 1, "dropped", 0));
    }
    pthread_mutex_lock(&streams_lock);
    if (stopping) {
        pthread_mutex_unlock(&streams_lock);
        return reply(c, 503, json_pack("{s:s}", "code", "shutting_down"));
    }
    q->connection = c;
    q->parked = 1;
    q->next_parked = parked_requests;
    if (parked_requests) parked_requests->prev_parked = q;
    parked_requests = q;
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&streams_lock);
    return MHD_YES;
}

static int release_all(void) {
    int n = 0;
    while (parked_requests) {
        struct request *q = parked_requests;
        unpark(q);
        q->released = 1;
        q->message = released_total++;
        MHD_resume_connection(q->connection);
        n++;
    }
    return n;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **req_cls) {
    (void)cls; (void)version;
    struct request *q = *req_cls;
    if (q == NULL) {
        *req_cls = calloc(1, sizeof *q);
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (q->length + *upload_size > (1 << 20)) {
            q->too_large = 1;
        } else {
            q->body = realloc(q->body, q->length + *upload_size);
            memcpy(q->body + q->length, upload, *upload_size);
            q->length += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") == 0 && strcmp(url, "/healthz") == 0)
        return reply(c, 200, json_pack("{s:s}", "status", "ok"));
    if (strcmp(method, "POST") == 0 && strcmp(url, "/v1/send") == 0) {
        if (q->too_large) return reply(c, 413, json_pack("{s:s}", "code", "body_too_large"));
        json_error_t error;
        json_t *body = json_loadb(q->body ? q->body : "", q->length, 0, &error);
        if (body == NULL) return reply(c, 400, json_pack("{s:s}", "code", "malformed_json"));
        /* One envelope, or a batch: an array of them (each checked, as the gateway does). */
        size_t count = json_is_array(body) ? json_array_size(body) : 1;
        int valid = count > 0;
        for (size_t i = 0; valid && i < count; i++) {
            json_t *item = json_is_array(body) ? json_array_get(body, i) : body;
            json_t *port = json_object_get(item, "port"), *message = json_object_get(item, "message");
            valid = json_is_string(port) && json_is_array(message);
        }
        json_decref(body);
        if (!valid) return reply(c, 422, json_pack("{s:s}", "code", "invalid_request"));
        return reply(c, 202, json_pack("{s:I}", "accepted", (json_int_t)count));
    }
    if (strcmp(method, "GET") == 0 && strcmp(url, "/v1/poll") == 0) return poll_request(c, q);
    if (strcmp(method, "POST") == 0 && strcmp(url, "/v1/release") == 0) {
        pthread_mutex_lock(&streams_lock);
        int n = release_all();
        pthread_mutex_unlock(&streams_lock);
        return reply(c, 200, json_pack("{s:i}", "released", n));
    }
        if (strncmp(url, "/v1/db/", 7) == 0) {   /* /v1/db/FAMILY/(watch|KEY), one segment each */
        const char *family = url + 7, *slash = strchr(family, '/');
        if (slash && slash > family && slash[1] != '\0' && strchr(slash + 1, '/') == NULL) {
            if (strcmp(method, "GET") == 0 && strcmp(slash + 1, "watch") == 0)
                return watch(c, family, (size_t)(slash - family));
            if (strcmp(method, "PUT") == 0) return put(c, q, family, (size_t)(slash - family), slash + 1);
        }
    }
    return reply(c, 404, json_pack("{s:s}", "code", "route_not_found"));
}

static void completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls; (void)c; (void)toe;
    struct request *q = *req_cls;
    if (q) {
        pthread_mutex_lock(&streams_lock);
        unpark(q);
        pthread_mutex_unlock(&streams_lock);
        free(q->body);
        free(q);
    }
    *req_cls = NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s PORT\n", argv[0]); return 2; }
    json_object_seed(0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_USE_TURBO | MHD_ALLOW_SUSPEND_RESUME, 0, NULL,
        NULL, handle, NULL,
        MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
        MHD_OPTION_CONNECTION_LIMIT, 16000u, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)8192,
        MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_END);
    if (d == NULL) { fprintf(stderr, "baseline: cannot listen on 127.0.0.1:%s\n", argv[1]); return 1; }
    printf("baseline listening on 127.0.0.1:%s\n", argv[1]);
    fflush(stdout);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sig;
    sigwait(&set, &sig);
    /* End every stream (each drains what it has, then ends) and resume the parked ones; MHD takes
     * resumed connections off its suspended list before it closes them. */
    pthread_mutex_lock(&streams_lock);
    stopping = 1;
    for (struct family *f = families; f; f = f->next)
        while (f->subscribers) {
            struct subscriber *s = f->subscribers;
            unlink_subscriber(s);
            wake(s);
        }
    release_all();
    pthread_mutex_unlock(&streams_lock);
    MHD_stop_daemon(d);
    return 0;
}
