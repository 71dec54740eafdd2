/*
 * The limit of this machine for the gateway's request shapes: libmicrohttpd (epoll, one internal
 * thread, responses queued on the second handler call) + jansson, nothing else.
 *
 *   POST /v1/send   parses a JSON body {"port": "...", "message": [...]} with jansson and answers
 *                   202 {"accepted":1} encoded by jansson (what the gateway does minus the mesh).
 *   GET  /healthz   200 {"status":"ok"}.
 *
 * usage: baseline PORT   (binds 127.0.0.1 only; runs until SIGINT/SIGTERM)
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct request {
    char *body;
    size_t length;
    int too_large;
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
        json_t *port = json_object_get(body, "port"), *message = json_object_get(body, "message");
        int valid = json_is_string(port) && json_is_array(message);
        json_decref(body);
        if (!valid) return reply(c, 422, json_pack("{s:s}", "code", "invalid_request"));
        return reply(c, 202, json_pack("{s:i}", "accepted", 1));
    }
    return reply(c, 404, json_pack("{s:s}", "code", "route_not_found"));
}

static void completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls; (void)c; (void)toe;
    struct request *q = *req_cls;
    if (q) { free(q->body); free(q); }
    *req_cls = NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s PORT\n", argv[0]); return 2; }
    json_object_seed(0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_USE_TURBO, 0, NULL, NULL, handle, NULL,
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
    MHD_stop_daemon(d);
    return 0;
}
