/*
 * sbctl pub: publish one message (or --count copies, pipelined) and wait for
 * the broker's puback, which it sends only once the message is committed.
 */
#include "tools/sbctl/codec.h"
#include "tools/sbctl/format.h"
#include "tools/sbctl/sbctl.h"

#include "service/platform.h"
#include "service/alloc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const sbctl_opt pub_opts[] = {
    SBCTL_COMMON_OPTS,
    {"file", 'f', SBCTL_OPT_STRING, 0, "FILE", "read the payload from FILE ('-': stdin)", 0, 0},
    {"header", 'H', SBCTL_OPT_STRING, 1, "KEY=VALUE", "add a header (repeatable)", 0, 0},
    {"retain", 'r', SBCTL_OPT_FLAG, 0, NULL,
     "keep as the topic's retained value (an empty payload clears it)", 0, 0},
    {"ttl", 0, SBCTL_OPT_DURATION, 0, "DURATION", "expire the message after DURATION", 1,
     INT64_MAX},
    {"priority", 0, SBCTL_OPT_INT, 0, "N", "priority 0..9", 0, 9},
    {"count", 'n', SBCTL_OPT_INT, 0, "N", "publish N copies, pipelined (default 1)", 1, 1000000000},
    {"window", 'w', SBCTL_OPT_INT, 0, "N",
     "with --count: at most N publishes awaiting their puback (default 256)", 1, 1000000},
};

/* Reads a whole stream. Returns 0 or errno. */
static int read_all(FILE *f, unsigned char **out, size_t *out_len)
{
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;

    for (;;) {
        size_t n;
        if (len == cap) {
            unsigned char *p;
            cap = cap == 0 ? 65536 : cap * 2;
            p = sb_realloc(buf, cap + 1);
            if (p == NULL) {
                sb_free(buf);
                return ENOMEM;
            }
            buf = p;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                int e = errno != 0 ? errno : EIO;
                sb_free(buf);
                return e;
            }
            break;
        }
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

/* Builds the pub request (without id) from the command line. Returns an exit
 * status; on success *out is the request. */
static int build_request(json_t **out, sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    const char *topic = a->pos[0];
    const char *file = sbctl_arg_str(a, "file", NULL);
    const sbctl_optval *hv = sbctl_arg(a, "header");
    unsigned char *payload = NULL;
    size_t len = 0;
    json_t *req = NULL, *headers = NULL;
    int rc = SBCTL_EXIT_OK;

    *out = NULL;
    if (a->npos > 1 && file != NULL)
        return sbctl_usage_error(cmd, "give the payload as an argument or with --file, not both");
    if (a->npos > 1) {
        len = strlen(a->pos[1]);
        payload = (unsigned char *)sb_strndup(a->pos[1], len);
        if (payload == NULL)
            goto oom;
    } else if (file != NULL && strcmp(file, "-") != 0) {
        FILE *f = sb_platform_fopen(file, "rb");
        int e;
        if (f == NULL) {
            sbctl_errorf("pub: cannot open %s: %s", file, strerror(errno));
            return SBCTL_EXIT_ERROR;
        }
        e = read_all(f, &payload, &len);
        fclose(f);
        if (e != 0) {
            sbctl_errorf("pub: cannot read %s: %s", file, strerror(e));
            return SBCTL_EXIT_ERROR;
        }
    } else {
        int e;
        if (ctx->tty_in)
            fprintf(stderr, "sbctl: reading the payload from stdin (end it with %s)\n",
                    sbctl_eof_key());
        e = read_all(stdin, &payload, &len);
        if (e != 0) {
            sbctl_errorf("pub: cannot read stdin: %s", strerror(e));
            return SBCTL_EXIT_ERROR;
        }
    }

    req = json_pack("{s:s,s:s}", "op", "pub", "topic", topic);
    if (req == NULL) {
        sbctl_errorf("pub: the topic is not valid UTF-8");
        rc = SBCTL_EXIT_USAGE;
        goto done;
    }
    if (sbctl_is_text(payload, len)) {
        if (json_object_set_new(req, "payload", json_stringn((const char *)payload, len)) != 0)
            goto oom;
    } else {
        char *b64 = NULL;
        if (sbctl_base64_encode(&b64, payload, len) != 0)
            goto oom;
        rc = json_object_set_new(req, "payload_b64", json_string(b64));
        sb_free(b64);
        if (rc != 0)
            goto oom;
    }
    if (hv->count > 0) {
        headers = json_object();
        if (headers == NULL)
            goto oom;
        for (int i = 0; i < hv->count; i++) {
            const char *eq = strchr(hv->list[i], '=');
            char *key;
            json_t *val;
            if (eq == NULL || eq == hv->list[i]) {
                rc = sbctl_usage_error(cmd, "--header: expected KEY=VALUE, got '%s'", hv->list[i]);
                goto done;
            }
            key = sb_strndup(hv->list[i], (size_t)(eq - hv->list[i]));
            val = json_string(eq + 1);
            if (key == NULL || val == NULL || json_object_set_new(headers, key, val) != 0) {
                sb_free(key);
                rc = sbctl_usage_error(cmd, "--header: '%s' is not valid UTF-8", hv->list[i]);
                goto done;
            }
            sb_free(key);
        }
        json_object_set_new(req, "headers", headers);
        headers = NULL;
    }
    if (sbctl_arg_flag(a, "retain"))
        json_object_set_new(req, "retain", json_true());
    if (sbctl_arg_flag(a, "ttl"))
        json_object_set_new(req, "ttl", json_integer(sbctl_arg_num(a, "ttl", 0)));
    if (sbctl_arg_flag(a, "priority"))
        json_object_set_new(req, "priority", json_integer(sbctl_arg_num(a, "priority", 0)));
    *out = req;
    req = NULL;
    goto done;
oom:
    sbctl_errorf("pub: out of memory");
    rc = SBCTL_EXIT_ERROR;
done:
    json_decref(headers);
    json_decref(req);
    sb_free(payload);
    return rc;
}

/* A write failed: report the broker's reason if it gave one before closing. */
static int write_failed(sb_client *c, const char *topic, sb_error *err)
{
    json_t *last = NULL;
    char what[300];
    snprintf(what, sizeof(what), "pub %s", topic);
    if (err->code == SB_ECLOSED && sb_client_last_words(c, &last) == 0) {
        sb_client_reply_error(last, err);
        json_decref(last);
        return sbctl_broker_failed(what, err);
    }
    return sbctl_conn_failed(what, err);
}

typedef struct pub_state {
    long long count, sent, answered, ok, failed, unrouted;
    long long first_msg_id, last_msg_id;
    unsigned long long start_ns;
    sbctl_progress pg;
} pub_state;

static void show_progress(pub_state *s)
{
    double secs = (double)(sbctl_now_ns() - s->start_ns) / 1e9;
    char rate[32];
    sbctl_fmt_rate(rate, sizeof(rate), secs > 0 ? (double)s->answered / secs : 0);
    sbctl_progress_show(&s->pg, "published %lld/%lld (%lld%%)  %s msg/s", s->answered, s->count,
                        s->answered * 100 / s->count, rate);
}

static int run_pub(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    sb_client *c = NULL;
    json_t *req = NULL;
    char *body = NULL, *line = NULL;
    size_t body_len, line_cap;
    long long window = sbctl_arg_num(a, "window", 256);
    pub_state s;
    sb_error err;
    int rc;

    memset(&s, 0, sizeof(s));
    s.count = sbctl_arg_num(a, "count", 1);
    rc = build_request(&req, ctx, cmd, a);
    if (rc != 0)
        return rc;
    rc = sbctl_connect(&c, ctx, ctx->endpoints[0]);
    if (rc != 0)
        goto done;

    /* Serialise once; each copy is `{"id":N,` + the rest of the object. */
    body = json_dumps(req, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (body == NULL) {
        sbctl_errorf("pub: out of memory");
        rc = SBCTL_EXIT_ERROR;
        goto done;
    }
    body_len = strlen(body);
    line_cap = body_len + 32;
    line = sb_malloc(line_cap);
    if (line == NULL) {
        sbctl_errorf("pub: out of memory");
        rc = SBCTL_EXIT_ERROR;
        goto done;
    }

    s.start_ns = sbctl_now_ns();
    sbctl_progress_start(&s.pg, ctx);
    while (s.answered < s.count) {
        json_t *reply = NULL;
        const char *op;
        while (s.sent < s.count && s.sent - s.answered < window && s.failed == 0) {
            int n = snprintf(line, line_cap, "{\"id\":%lld,", s.sent + 1);
            memcpy(line + n, body + 1, body_len - 1);
            sb_error_clear(&err);
            if (sb_client_write_line(c, line, (size_t)n + body_len - 1, &err) != 0) {
                rc = write_failed(c, a->pos[0], &err);
                goto done;
            }
            s.sent++;
        }
        if (s.answered == s.sent)
            break; /* stopped sending after a failure; everything answered */
        sb_error_clear(&err);
        if (sb_client_read_json(c, &reply, SBCTL_REQUEST_TIMEOUT_MS, &err) != 0) {
            if (err.code == SB_ECLOSED) { /* maybe the broker said why */
                rc = write_failed(c, a->pos[0], &err);
                goto done;
            }
            sbctl_progress_end(&s.pg);
            rc = sbctl_conn_failed("pub", &err);
            if (s.count > 1)
                sbctl_errorf("pub: %lld of %lld publishes acknowledged before the failure", s.ok,
                             s.count);
            goto done;
        }
        op = json_string_value(json_object_get(reply, "op"));
        if (op != NULL && strcmp(op, "puback") == 0) {
            long long id = (long long)sbctl_json_int(reply, "msg_id", -1);
            if (s.ok == 0)
                s.first_msg_id = id;
            s.last_msg_id = id;
            s.ok++;
            if (sbctl_json_int(reply, "queues", 1) == 0)
                s.unrouted++;
        } else if (op != NULL && strcmp(op, "error") == 0) {
            sb_client_reply_error(reply, &err);
            if (s.failed == 0) {
                sbctl_progress_end(&s.pg);
                sbctl_errorf("pub %s: %s [%s]", a->pos[0], err.msg, sb_errname(err.code));
            }
            s.failed++;
        } else {
            json_decref(reply);
            continue; /* not a reply to a pub: ignore */
        }
        json_decref(reply);
        s.answered++;
        if (s.count > 1)
            show_progress(&s);
    }
    sbctl_progress_end(&s.pg);

    if (s.unrouted > 0)
        sbctl_errorf("warning: no subscription matches %s, so %s not stored%s", a->pos[0],
                     s.count == 1 ? "the message was" : "the messages were",
                     sbctl_arg_flag(a, "retain") ? " (except as the retained value)" : "");
    if (s.failed > 0) {
        if (s.count > 1)
            sbctl_errorf("pub: %lld of %lld publishes acknowledged, %lld refused, %lld not sent",
                         s.ok, s.count, s.failed, s.count - s.sent);
        rc = SBCTL_EXIT_ERROR;
    }
    if (ctx->json) {
        double secs = (double)(sbctl_now_ns() - s.start_ns) / 1e9;
        json_t *o = json_pack("{s:s,s:I,s:I,s:I,s:I,s:f}", "topic", a->pos[0], "published",
                              (json_int_t)s.ok, "refused", (json_int_t)s.failed, "not_sent",
                              (json_int_t)(s.count - s.sent), "unrouted", (json_int_t)s.unrouted,
                              "seconds", secs);
        if (o != NULL && s.ok > 0) {
            json_object_set_new(o, "first_msg_id", json_integer(s.first_msg_id));
            json_object_set_new(o, "last_msg_id", json_integer(s.last_msg_id));
        }
        if (sbctl_print_json(o) != 0)
            rc = SBCTL_EXIT_ERROR;
    } else if (rc != 0) {
        /* said above */
    } else if (s.count == 1) {
        printf("%lld\n", s.first_msg_id);
    } else {
        double secs = (double)(sbctl_now_ns() - s.start_ns) / 1e9;
        char rate[32];
        sbctl_fmt_rate(rate, sizeof(rate), secs > 0 ? (double)s.ok / secs : 0);
        printf("published %lld messages in %.3f s (%s msg/s), msg_id %lld..%lld\n", s.ok, secs,
               rate, s.first_msg_id, s.last_msg_id);
    }
done:
    sb_free(line);
    free(body);
    json_decref(req);
    sb_client_free(c);
    return rc;
}

const sbctl_cmd sbctl_cmd_pub = {
    "pub",
    "TOPIC [PAYLOAD]",
    "publish a message",
    "Publishes PAYLOAD (or the contents of --file, or stdin when neither is given,\n"
    "byte for byte) to TOPIC and prints the message id once the broker has\n"
    "committed it. Payloads that are not UTF-8 text are sent base64-encoded.\n"
    "With --count N, publishes N copies pipelined and prints a summary; on a\n"
    "terminal (or with --progress), long runs show their progress. --json prints\n"
    "{\"topic\", \"published\", \"refused\", \"not_sent\", \"unrouted\", \"seconds\",\n"
    "\"first_msg_id\", \"last_msg_id\"}.\n",
    pub_opts,
    sizeof(pub_opts) / sizeof(pub_opts[0]),
    1,
    2,
    run_pub};
