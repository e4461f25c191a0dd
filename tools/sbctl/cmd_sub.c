/*
 * sbctl sub: attach to a durable subscription (creating it when --filter is
 * given), print each delivered message and acknowledge it once printed.
 * sbctl tail: the same through a transient subscription of its own, deleted
 * at the end: a live view that leaves nothing behind.
 */
#include "tools/sbctl/codec.h"
#include "tools/sbctl/sbctl.h"

#include "service/alloc.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static const sbctl_opt sub_opts[] = {
    SBCTL_COMMON_OPTS,
    {"filter", 'f', SBCTL_OPT_STRING, 0, "FILTER",
     "topic filter; creates the subscription if it does not exist", 0, 0},
    {"count", 'n', SBCTL_OPT_INT, 0, "N", "stop after N messages", 1, INT64_MAX},
    {"timeout", 't', SBCTL_OPT_DURATION, 0, "DURATION", "stop after DURATION", 0, INT64_MAX},
    {"no-ack", 0, SBCTL_OPT_FLAG, 0, NULL,
     "do not acknowledge (messages return to the queue when sbctl exits)", 0, 0},
    {"window", 'w', SBCTL_OPT_INT, 0, "N",
     "deliveries unacknowledged at once (default 100; with --count: 1, or N with --no-ack)", 1,
     65535},
    {"durability", 0, SBCTL_OPT_STRING, 0, "CLASS", "when creating: fsync, batched or memory", 0,
     0},
    {"max-attempts", 0, SBCTL_OPT_INT, 0, "N", "when creating: deliveries before dead-lettering", 1,
     1000000},
    {"lease", 0, SBCTL_OPT_DURATION, 0, "DURATION", "when creating: ack timeout", 1, INT64_MAX},
    {"ttl", 0, SBCTL_OPT_DURATION, 0, "DURATION", "when creating: message expiry", 1, INT64_MAX},
    {"max-depth", 0, SBCTL_OPT_INT, 0, "N", "when creating: most messages waiting", 1, INT64_MAX},
};

/* Prints one delivery. Returns 0, or -1 if stdout failed. */
static int print_msg(const json_t *msg, const char *raw, size_t raw_len, int as_json)
{
    if (as_json) {
        fwrite(raw, 1, raw_len, stdout);
    } else {
        const json_t *topic = json_object_get(msg, "topic");
        const json_t *p = json_object_get(msg, "payload");
        const char *b64 = json_string_value(json_object_get(msg, "payload_b64"));
        if (json_is_string(topic))
            fwrite(json_string_value(topic), 1, json_string_length(topic), stdout);
        fputc('\t', stdout);
        if (json_is_string(p)) {
            fwrite(json_string_value(p), 1, json_string_length(p), stdout);
        } else if (b64 != NULL) {
            unsigned char *bytes;
            size_t n;
            if (sbctl_base64_decode(&bytes, &n, b64, strlen(b64)) != 0) {
                sbctl_errorf("sub: message %lld has malformed payload_b64",
                             (long long)sbctl_json_int(msg, "msg_id", -1));
                return -1;
            }
            fwrite(bytes, 1, n, stdout);
            sb_free(bytes);
        }
    }
    fputc('\n', stdout);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        sbctl_errorf("sub: cannot write to stdout");
        return -1;
    }
    return 0;
}

static int send_ack(sb_client *c, const char *sub, const json_t *msg_id, sb_error *err)
{
    json_t *ack = json_pack("{s:s,s:s,s:O}", "op", "ack", "sub", sub, "msg_id", msg_id);
    int rc;
    if (ack == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    rc = sb_client_write_json(c, ack, err);
    json_decref(ack);
    return rc;
}

/* Ctrl-C (or SIGTERM) while consuming: the loop notices it within
 * INTERRUPT_POLL_MS and ends as if --count were reached, so acks are
 * flushed and a tail's subscription is deleted at once. On Windows the C
 * runtime maps console Ctrl-C and Ctrl-Break to SIGINT and SIGBREAK. */
#define INTERRUPT_POLL_MS 200
static volatile sig_atomic_t interrupted_by;

static void on_interrupt(int sig)
{
    interrupted_by = sig;
}

typedef void (*signal_handler)(int);
static signal_handler prev_int, prev_term;

static void catch_interrupts(void)
{
    interrupted_by = 0;
    prev_int = signal(SIGINT, on_interrupt);
    prev_term = signal(SIGTERM, on_interrupt);
}

static void release_interrupts(void)
{
    signal(SIGINT, prev_int == SIG_ERR ? SIG_DFL : prev_int);
    signal(SIGTERM, prev_term == SIG_ERR ? SIG_DFL : prev_term);
}

/* What sub and tail share: the subscription, how many to print and for how
 * long, whether to acknowledge, and whether to delete it at the end. */
typedef struct consume_spec {
    const char *name;
    json_t *req; /* the sub request */
    int has_filter;
    int64_t count, timeout_ms;
    int has_timeout, no_ack, delete_after;
} consume_spec;

/* Sends the sub request, prints the deliveries (acknowledging each once
 * printed) until --count or --timeout, then detaches (or deletes). */
static int consume(sbctl_ctx *ctx, const consume_spec *sp)
{
    const char *name = sp->name;
    int64_t received = 0;
    unsigned long long deadline = 0;
    sb_client *c = NULL;
    json_t *req = NULL, *reply = NULL;
    char what[300];
    sb_error err;
    int rc;

    snprintf(what, sizeof(what), "%s %s", sp->delete_after ? "tail" : "sub", name);
    rc = sbctl_connect(&c, ctx, ctx->endpoints[0]);
    if (rc != 0)
        goto done;
    sb_error_clear(&err);
    if (sb_client_request(c, &reply, sp->req, SBCTL_REQUEST_TIMEOUT_MS, &err) != 0) {
        rc = sbctl_conn_failed(what, &err);
        goto done;
    }
    if (sb_client_reply_error(reply, &err) != 0) {
        if (err.code == SB_ENOTFOUND && !sp->has_filter && strstr(err.msg, "filter") == NULL) {
            sbctl_errorf("%s: %s [%s] (pass --filter FILTER to create it)", what, err.msg,
                         sb_errname(err.code));
            rc = SBCTL_EXIT_ERROR;
        } else {
            rc = sbctl_broker_failed(what, &err);
        }
        goto done;
    }
    if (ctx->tty_err) {
        const char *f = json_string_value(json_object_get(reply, "filter"));
        fprintf(stderr, "sbctl: %s %s%s%s%s\n", sp->delete_after ? "tailing" : "subscribed to",
                sp->delete_after ? "" : name, f != NULL && !sp->delete_after ? " (" : "",
                f != NULL ? f : "", f != NULL && !sp->delete_after ? ")" : "");
    }
    json_decref(reply);
    reply = NULL;

    if (sp->has_timeout)
        deadline = sbctl_now_ns() + (unsigned long long)sp->timeout_ms * 1000000ull;
    catch_interrupts();
    while ((sp->count == 0 || received < sp->count) && !interrupted_by) {
        const char *line, *op;
        size_t len;
        json_t *msg;
        json_error_t jerr;
        int wait_ms = INTERRUPT_POLL_MS;

        if (sp->has_timeout) {
            unsigned long long now = sbctl_now_ns();
            if (now >= deadline)
                break;
            if (deadline - now < (unsigned long long)INTERRUPT_POLL_MS * 1000000ull)
                wait_ms = (int)((deadline - now + 999999ull) / 1000000ull);
        }
        sb_error_clear(&err);
        /* A timeout keeps a partly read line buffered for the next call. */
        rc = sb_client_read_line(c, &line, &len, wait_ms, &err);
        if (rc == SB_ETIMEDOUT) {
            rc = 0;
            continue;
        }
        if (rc != 0) {
            rc = sbctl_conn_failed(what, &err);
            goto done;
        }
        msg = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
        if (!json_is_object(msg)) {
            sbctl_errorf("%s: the broker sent a line that is not a JSON object: %s", what,
                         jerr.text);
            json_decref(msg);
            rc = SBCTL_EXIT_CONN;
            goto done;
        }
        op = json_string_value(json_object_get(msg, "op"));
        if (op != NULL && strcmp(op, "error") == 0) {
            sb_client_reply_error(msg, &err);
            json_decref(msg);
            rc = sbctl_broker_failed(what, &err);
            goto done;
        }
        if (op == NULL || strcmp(op, "msg") != 0) {
            json_decref(msg);
            continue;
        }
        if (!json_is_integer(json_object_get(msg, "msg_id"))) {
            sbctl_errorf("%s: delivery without a msg_id: cannot acknowledge it", what);
            json_decref(msg);
            rc = SBCTL_EXIT_ERROR;
            goto done;
        }
        if (print_msg(msg, line, len, ctx->json) != 0) {
            json_decref(msg);
            rc = SBCTL_EXIT_ERROR;
            goto done;
        }
        received++;
        if (!sp->no_ack) {
            const char *msub = json_string_value(json_object_get(msg, "sub"));
            /* Flushed at once: a message printed must not stay unacknowledged
             * while later ones are printed (sbctl may be killed, e.g. by
             * SIGPIPE from `| head`). */
            if (send_ack(c, msub != NULL ? msub : name, json_object_get(msg, "msg_id"), &err) !=
                    0 ||
                sb_client_flush(c, &err) != 0) {
                json_decref(msg);
                rc = sbctl_conn_failed(what, &err);
                goto done;
            }
        }
        json_decref(msg);
    }

    /* Detach explicitly: the acks are flushed before it, and deliveries we
     * did not print go back to the queue now rather than at disconnect
     * (tail: the subscription goes, with what it still holds). */
    req = json_pack("{s:s,s:s}", "op", "unsub", "sub", name);
    if (sp->delete_after)
        json_object_set_new(req, "delete", json_true());
    sb_error_clear(&err);
    if (sb_client_request(c, &reply, req, SBCTL_REQUEST_TIMEOUT_MS, &err) != 0) {
        rc = sbctl_conn_failed(what, &err);
        goto done;
    }
    if (sb_client_reply_error(reply, &err) != 0)
        sbctl_errorf("warning: %s: unsub: %s [%s]", what, err.msg, sb_errname(err.code));
    if (interrupted_by) {
        if (ctx->tty_err)
            fprintf(stderr, "sbctl: %s: interrupted after %lld messages\n", what,
                    (long long)received);
        rc = SBCTL_EXIT_INTERRUPTED_BASE + interrupted_by;
    } else if (sp->count > 0 && received < sp->count) {
        sbctl_errorf("%s: timed out after %lld ms with %lld of %lld messages", what,
                     (long long)sp->timeout_ms, (long long)received, (long long)sp->count);
        rc = SBCTL_EXIT_TIMEOUT;
    }
done:
    release_interrupts();
    json_decref(req);
    json_decref(reply);
    sb_client_free(c);
    return rc;
}

static int run_sub(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    const char *name = a->pos[0];
    const char *filter = sbctl_arg_str(a, "filter", NULL);
    const char *durability = sbctl_arg_str(a, "durability", NULL);
    consume_spec sp = {name,
                       NULL,
                       filter != NULL,
                       sbctl_arg_num(a, "count", 0),
                       sbctl_arg_num(a, "timeout", 0),
                       sbctl_arg_flag(a, "timeout"),
                       sbctl_arg_flag(a, "no-ack"),
                       0};
    json_t *req;
    int rc;

    if (durability != NULL && strcmp(durability, "fsync") != 0 &&
        strcmp(durability, "batched") != 0 && strcmp(durability, "memory") != 0)
        return sbctl_usage_error(cmd, "--durability: expected fsync, batched or memory, got '%s'",
                                 durability);

    req = json_pack("{s:s,s:s}", "op", "sub", "sub", name);
    if (req == NULL)
        return sbctl_usage_error(cmd, "the subscription name is not valid UTF-8");
    if (filter != NULL)
        json_object_set_new(req, "filter", json_string(filter));
    /* With --count, a small window keeps the broker from handing us messages
     * we will not print (they would return to the queue as redeliveries). */
    if (sbctl_arg_flag(a, "window"))
        json_object_set_new(req, "window", json_integer(sbctl_arg_num(a, "window", 100)));
    else if (sp.count > 0)
        json_object_set_new(req, "window",
                            json_integer(sp.no_ack ? (sp.count < 65535 ? sp.count : 65535) : 1));
    if (durability != NULL)
        json_object_set_new(req, "durability", json_string(durability));
    if (sbctl_arg_flag(a, "max-attempts"))
        json_object_set_new(req, "max_attempts", json_integer(sbctl_arg_num(a, "max-attempts", 0)));
    if (sbctl_arg_flag(a, "lease"))
        json_object_set_new(req, "lease", json_integer(sbctl_arg_num(a, "lease", 0)));
    if (sbctl_arg_flag(a, "ttl"))
        json_object_set_new(req, "ttl", json_integer(sbctl_arg_num(a, "ttl", 0)));
    if (sbctl_arg_flag(a, "max-depth"))
        json_object_set_new(req, "max_depth", json_integer(sbctl_arg_num(a, "max-depth", 0)));
    sp.req = req;
    rc = consume(ctx, &sp);
    json_decref(req);
    return rc;
}

const sbctl_cmd sbctl_cmd_sub = {
    "sub",
    "NAME",
    "consume from a durable subscription",
    "Attaches to the durable subscription NAME, creating it with --filter (and the\n"
    "other 'when creating' settings) if it does not exist, and prints each message\n"
    "as TOPIC<TAB>PAYLOAD (or the delivery's JSON with --json). Each message is\n"
    "acknowledged after it was written to stdout, so an interrupted sbctl loses\n"
    "nothing: unacknowledged messages are delivered again. Runs until --count\n"
    "messages were printed, --timeout expired, or it is interrupted; exits 5 if\n"
    "--timeout expired before --count messages arrived, 130 after Ctrl-C (it\n"
    "detaches first). --json prints each delivery as the broker sent it (one\n"
    "JSON object a line).\n",
    sub_opts,
    sizeof(sub_opts) / sizeof(sub_opts[0]),
    1,
    1,
    run_sub};

/* ---- tail ---- */

static const sbctl_opt tail_opts[] = {
    SBCTL_COMMON_OPTS,
    {"count", 'n', SBCTL_OPT_INT, 0, "N", "stop after N messages", 1, INT64_MAX},
    {"timeout", 't', SBCTL_OPT_DURATION, 0, "DURATION", "stop after DURATION", 0, INT64_MAX},
    {"max-depth", 0, SBCTL_OPT_INT, 0, "N",
     "messages kept for a slow terminal, the oldest dropped beyond (default 10000)", 1,
     10000000},
};

/* How long the broker keeps a tail whose sbctl went without saying so
 * (killed, Ctrl-C). */
#define TAIL_EXPIRE_MS 10000

static int run_tail(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    unsigned char rnd[6] = {0};
    char name[64];
    consume_spec sp = {name,
                       NULL,
                       1,
                       sbctl_arg_num(a, "count", 0),
                       sbctl_arg_num(a, "timeout", 0),
                       sbctl_arg_flag(a, "timeout"),
                       0,
                       1};
    json_t *filters = json_array(), *req;
    int rc;

    for (size_t i = 0; i < a->npos; i++)
        if (json_array_append_new(filters, json_string(a->pos[i])) != 0) {
            json_decref(filters);
            return sbctl_usage_error(cmd, "FILTER '%s' is not valid UTF-8", a->pos[i]);
        }
    if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) != 0) {
        unsigned long long t = sbctl_now_ns() ^ ((unsigned long long)uv_os_getpid() << 32);
        memcpy(rnd, &t, sizeof(rnd));
    }
    snprintf(name, sizeof(name), "sbctl-tail-%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3], rnd[4], rnd[5]);
    /* Not saved (transient, memory), gone at exit or TAIL_EXPIRE_MS after
     * sbctl disappeared, and never a reason to refuse a publisher: a slow
     * terminal loses its oldest messages instead (drop-oldest). */
    req = json_pack("{s:s,s:s,s:o,s:b,s:s,s:I,s:I,s:s,s:i}", "op", "sub", "sub", name, "filter",
                    filters, "transient", 1, "durability", "memory", "expire",
                    (json_int_t)TAIL_EXPIRE_MS, "max_depth",
                    (json_int_t)sbctl_arg_num(a, "max-depth", 10000), "overflow", "drop-oldest",
                    "window", 1000);
    if (req == NULL) {
        sbctl_errorf("tail: out of memory");
        return SBCTL_EXIT_ERROR;
    }
    sp.req = req;
    rc = consume(ctx, &sp);
    json_decref(req);
    return rc;
}

const sbctl_cmd sbctl_cmd_tail = {
    "tail",
    "FILTER...",
    "watch the messages on topics, live",
    "Prints the messages published from now on to topics matching any FILTER\n"
    "(and the retained values they match) as TOPIC<TAB>PAYLOAD, or with --json\n"
    "each delivery as the broker sent it, until --count messages, --timeout or\n"
    "Ctrl-C. It leaves nothing behind: the subscription it reads from is\n"
    "transient (never stored, memory durability), deleted when sbctl ends\n"
    "(Ctrl-C included), or 10 s after it was killed; when the terminal cannot\n"
    "keep up, the oldest messages beyond --max-depth are dropped, publishers\n"
    "are never refused. The broker's ACL applies as to any subscriber: a\n"
    "filter the user may read nothing of is refused (exit 4), messages it may\n"
    "not read are not shown. Exits 5 if --timeout expired before --count\n"
    "messages arrived, 130 after Ctrl-C.\n",
    tail_opts,
    sizeof(tail_opts) / sizeof(tail_opts[0]),
    1,
    64,
    run_tail};
