/*
 * Administration commands: ping, stats, dlq list / redrive / purge, store
 * check / compact. Each is
 * one request and one reply on the admin endpoint (docs/protocol.md,
 * "Administration").
 */
#include "tools/sbctl/format.h"
#include "tools/sbctl/sbctl.h"

#include "service/alloc.h"
#include "service/message.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- ping ------------------------------------------------------------- */

static const sbctl_opt ping_opts[] = {SBCTL_COMMON_OPTS};

static int run_ping(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    sb_client *c = NULL;
    json_t *req, *reply = NULL;
    unsigned long long t0;
    char took[32];
    const char *op;
    int rc;

    rc = sbctl_connect(&c, ctx, ctx->endpoints[0]);
    if (rc != 0)
        return rc;
    req = json_pack("{s:s}", "op", "ping");
    t0 = sbctl_now_ns();
    rc = sbctl_call(c, req, &reply, "ping");
    if (rc == 0) {
        op = json_string_value(json_object_get(reply, "op"));
        if (op == NULL || strcmp(op, "pong") != 0) {
            sbctl_errorf("ping: unexpected reply (op %s)", op != NULL ? op : "missing");
            rc = SBCTL_EXIT_ERROR;
        } else if (ctx->json) {
            /* the broker's pong (max_message, user) with what sbctl measured */
            json_object_set_new(reply, "endpoint", json_string(sb_client_endpoint(c)));
            json_object_set_new(reply, "rtt_ms", json_real((double)(sbctl_now_ns() - t0) / 1e6));
            json_object_del(reply, "id");
            rc = sbctl_print_json(json_incref(reply));
        } else {
            sbctl_fmt_ns(took, sizeof(took), (int64_t)(sbctl_now_ns() - t0));
            printf("pong from %s in %s\n", sb_client_endpoint(c), took);
        }
    }
    json_decref(req);
    json_decref(reply);
    sb_client_free(c);
    return rc;
}

const sbctl_cmd sbctl_cmd_ping = {
    "ping",
    "",
    "check that the broker answers",
    "Sends a ping and prints the round-trip time. Exit status 0 means the broker\n"
    "is up and serving its endpoint.\n",
    ping_opts,
    sizeof(ping_opts) / sizeof(ping_opts[0]),
    0,
    0,
    run_ping};

/* ---- stats ------------------------------------------------------------ */

static const sbctl_opt stats_opts[] = {
    SBCTL_COMMON_OPTS,
};

static void cell_int(char *buf, size_t len, const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, len, "%.0f", json_real_value(v));
    else
        snprintf(buf, len, "-");
}

static void cell_rate(char *buf, size_t len, const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_number(v))
        sbctl_fmt_rate(buf, len, json_number_value(v));
    else
        snprintf(buf, len, "-");
}

static int print_queues(const json_t *queues)
{
    static const char *const headers[] = {"QUEUE",  "DEPTH", "BYTES", "INFLIGHT", "CONSUMERS",
                                          "OLDEST", "IN/S",  "OUT/S", "DEAD"};
    static const sbctl_align align[] = {SBCTL_ALIGN_LEFT,  SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT,
                                        SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT,
                                        SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT};
    sbctl_table *t = sbctl_table_new(9, headers, align);
    char *text = NULL;
    size_t i;
    json_t *q;

    if (t == NULL)
        return SB_ENOMEM;
    json_array_foreach(queues, i, q)
    {
        char depth[32], bytes[32], inflight[32], consumers[32], oldest[32], in[32], out[32],
            dead[32];
        const char *name = json_string_value(json_object_get(q, "name"));
        const json_t *b = json_object_get(q, "bytes");
        const json_t *age = json_object_get(q, "oldest_age_ms");
        const char *cells[9];
        cell_int(depth, sizeof(depth), q, "depth");
        if (json_is_number(b))
            sbctl_fmt_bytes(bytes, sizeof(bytes), (int64_t)json_number_value(b));
        else
            snprintf(bytes, sizeof(bytes), "-");
        cell_int(inflight, sizeof(inflight), q, "inflight");
        cell_int(consumers, sizeof(consumers), q, "consumers");
        /* No oldest message (empty queue) is reported as null or absent. */
        /* An empty queue has no oldest message, whatever the broker reports. */
        sbctl_fmt_ms(oldest, sizeof(oldest),
                     json_is_number(age) && sbctl_json_int(q, "depth", 1) != 0
                         ? (int64_t)json_number_value(age)
                         : -1);
        cell_rate(in, sizeof(in), q, "in_rate");
        cell_rate(out, sizeof(out), q, "out_rate");
        cell_int(dead, sizeof(dead), q, "dead");
        cells[0] = name != NULL ? name : "?";
        cells[1] = depth;
        cells[2] = bytes;
        cells[3] = inflight;
        cells[4] = consumers;
        cells[5] = oldest;
        cells[6] = in;
        cells[7] = out;
        cells[8] = dead;
        if (sbctl_table_add(t, cells) != 0) {
            sbctl_table_free(t);
            return SB_ENOMEM;
        }
    }
    if (sbctl_table_rows(t) == 0) {
        printf("no queues\n");
    } else if (sbctl_table_render(t, 0, &text) == 0) {
        fputs(text, stdout);
        sb_free(text);
    }
    sbctl_table_free(t);
    return 0;
}

static void print_store(const json_t *s)
{
    char db[32], free_b[32];
    const json_t *bytes = json_object_get(s, "db_bytes");
    const char *last = json_string_value(json_object_get(s, "last_error"));

    if (!json_is_object(s))
        return;
    sbctl_fmt_bytes(db, sizeof(db), json_is_number(bytes) ? (int64_t)json_number_value(bytes) : -1);
    sbctl_fmt_bytes(free_b, sizeof(free_b), sbctl_json_int(s, "free_bytes", -1));
    printf("store:  %lld commits (%lld fsync), %lld ops, %lld failed commits, database %s "
           "(%s free%s)%s\n",
           (long long)sbctl_json_int(s, "commits", 0),
           (long long)sbctl_json_int(s, "fsync_commits", 0), (long long)sbctl_json_int(s, "ops", 0),
           (long long)sbctl_json_int(s, "failed_commits", 0), db, free_b,
           json_is_false(json_object_get(s, "auto_vacuum")) ? ", not returned: sbctl compact" : "",
           json_is_true(json_object_get(s, "degraded")) ? ", DEGRADED" : "");
    if (last != NULL && *last != '\0')
        printf("        last error: %s\n", last);
}

static void print_broker(const json_t *b)
{
    const char *version = json_string_value(json_object_get(b, "version"));
    const json_t *adapters = json_object_get(b, "adapters");
    const json_t *dur = json_object_get(b, "durability");
    char up[32];
    size_t i;
    json_t *v;

    if (!json_is_object(b))
        return;
    sbctl_fmt_ms(up, sizeof(up), sbctl_json_int(b, "uptime_ms", -1));
    printf("broker: version %s, up %s, %lld published", version != NULL ? version : "?", up,
           (long long)sbctl_json_int(b, "published", 0));
    if (json_is_object(dur))
        printf(" (committed: fsync %lld, batched %lld, memory %lld)",
               (long long)sbctl_json_int(dur, "fsync", 0),
               (long long)sbctl_json_int(dur, "batched", 0),
               (long long)sbctl_json_int(dur, "memory", 0));
    printf("\n");
    if (json_is_array(adapters)) {
        printf("        %zu adapter%s", json_array_size(adapters),
               json_array_size(adapters) == 1 ? "" : "s");
        json_array_foreach(adapters, i, v)
        {
            const char *name = json_string_value(v);
            if (name == NULL && json_is_object(v))
                name = json_string_value(json_object_get(v, "name"));
            printf("%s%s", i == 0 ? ": " : ", ", name != NULL ? name : "?");
        }
        printf("\n");
    }
}

static int run_stats(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    sb_client *c = NULL;
    json_t *req, *reply = NULL;
    int rc;

    rc = sbctl_connect(&c, ctx, ctx->endpoints[0]);
    if (rc != 0)
        return rc;
    req = json_pack("{s:s}", "op", "stats");
    rc = sbctl_call(c, req, &reply, "stats");
    if (rc == 0) {
        if (ctx->json) {
            size_t len;
            const char *raw = sb_client_last_line(c, &len);
            fwrite(raw, 1, len, stdout);
            fputc('\n', stdout);
        } else {
            const json_t *queues = json_object_get(reply, "queues");
            if (json_is_array(queues) && print_queues(queues) != 0) {
                sbctl_errorf("stats: out of memory");
                rc = SBCTL_EXIT_ERROR;
            }
            printf("\n");
            print_store(json_object_get(reply, "store"));
            print_broker(json_object_get(reply, "broker"));
        }
    }
    json_decref(req);
    json_decref(reply);
    sb_client_free(c);
    return rc;
}

const sbctl_cmd sbctl_cmd_stats = {
    "stats",
    "",
    "show queues, store and broker counters",
    "Prints one row per subscription queue: messages waiting (DEPTH) and their\n"
    "size, deliveries not yet acknowledged (INFLIGHT), attached consumers, the age\n"
    "of the oldest waiting message, messages in and out per second over the last\n"
    "10 s, and dead letters; then the store's commit counters and the broker's.\n",
    stats_opts,
    sizeof(stats_opts) / sizeof(stats_opts[0]),
    0,
    0,
    run_stats};

/* ---- dlq -------------------------------------------------------------- */

static json_t *dlq_request(const char *op, const sbctl_args *a)
{
    json_t *req = json_pack("{s:s}", "op", op);
    if (req != NULL && a->npos > 0)
        json_object_set_new(req, "sub", json_string(a->pos[0]));
    return req;
}

static const sbctl_opt dlq_list_opts[] = {
    SBCTL_COMMON_OPTS,
    {"limit", 'n', SBCTL_OPT_INT, 0, "N", "show at most N dead letters (default 100)", 1, 1000000},
    {"after", 0, SBCTL_OPT_INT, 0, "DLQ_ID", "start after this dlq_id (paging)", 0, INT64_MAX},
};

static int run_dlq_list(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    static const char *const headers[] = {"DLQ_ID",   "SUB", "MSG_ID", "TOPIC",
                                          "ATTEMPTS", "AGE", "REASON", "PAYLOAD"};
    static const sbctl_align align[] = {SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_LEFT,  SBCTL_ALIGN_RIGHT,
                                        SBCTL_ALIGN_LEFT,  SBCTL_ALIGN_RIGHT, SBCTL_ALIGN_RIGHT,
                                        SBCTL_ALIGN_LEFT,  SBCTL_ALIGN_LEFT};
    sb_client *c = NULL;
    json_t *req, *reply = NULL, *items, *it;
    sbctl_table *t = NULL;
    int64_t now = sb_now_ms();
    size_t i;
    int rc;

    rc = sbctl_connect(&c, ctx, ctx->endpoints[0]);
    if (rc != 0)
        return rc;
    req = dlq_request("dlq.list", a);
    json_object_set_new(req, "limit", json_integer(sbctl_arg_num(a, "limit", 100)));
    if (sbctl_arg_flag(a, "after"))
        json_object_set_new(req, "after", json_integer(sbctl_arg_num(a, "after", 0)));
    rc = sbctl_call(c, req, &reply, "dlq list");
    if (rc != 0)
        goto done;
    items = json_object_get(reply, "items");
    if (!json_is_array(items)) {
        sbctl_errorf("dlq list: reply has no \"items\" array");
        rc = SBCTL_EXIT_ERROR;
        goto done;
    }
    if (ctx->json) {
        json_array_foreach(items, i, it)
        {
            char *s = json_dumps(it, JSON_COMPACT | JSON_PRESERVE_ORDER);
            if (s != NULL)
                puts(s);
            free(s);
        }
    } else if (json_array_size(items) == 0) {
        if (a->npos > 0)
            printf("no dead letters in %s\n", a->pos[0]);
        else
            printf("no dead letters\n");
    } else {
        char *text = NULL;
        t = sbctl_table_new(8, headers, align);
        if (t == NULL)
            goto oom;
        json_array_foreach(items, i, it)
        {
            char id[32], msg_id[32], attempts[32], age[32], reason[128], payload[128];
            const char *cells[8];
            const json_t *dead_at = json_object_get(it, "dead_at");
            const json_t *p = json_object_get(it, "payload");
            const char *r = json_string_value(json_object_get(it, "reason"));
            cell_int(id, sizeof(id), it, "dlq_id");
            cell_int(msg_id, sizeof(msg_id), it, "msg_id");
            cell_int(attempts, sizeof(attempts), it, "attempts");
            sbctl_fmt_ms(age, sizeof(age),
                         json_is_number(dead_at) ? now - (int64_t)json_number_value(dead_at) : -1);
            sbctl_fmt_preview(reason, sizeof(reason), r != NULL ? r : "", r != NULL ? strlen(r) : 0,
                              40);
            if (json_is_string(p))
                sbctl_fmt_preview(payload, sizeof(payload), json_string_value(p),
                                  json_string_length(p), 30);
            else if (json_is_string(json_object_get(it, "payload_b64")))
                snprintf(payload, sizeof(payload), "(binary)");
            else
                snprintf(payload, sizeof(payload), "-");
            cells[0] = id;
            cells[1] = json_string_value(json_object_get(it, "sub"));
            cells[2] = msg_id;
            cells[3] = json_string_value(json_object_get(it, "topic"));
            cells[4] = attempts;
            cells[5] = age;
            cells[6] = reason;
            cells[7] = payload;
            if (sbctl_table_add(t, cells) != 0)
                goto oom;
        }
        if (sbctl_table_render(t, 0, &text) != 0)
            goto oom;
        fputs(text, stdout);
        sb_free(text);
    }
    if (json_is_integer(json_object_get(reply, "next")))
        fprintf(stderr, "sbctl: more dead letters: sbctl dlq list%s%s --after %lld\n",
                a->npos > 0 ? " " : "", a->npos > 0 ? a->pos[0] : "",
                (long long)json_integer_value(json_object_get(reply, "next")));
    goto done;
oom:
    sbctl_errorf("dlq list: out of memory");
    rc = SBCTL_EXIT_ERROR;
done:
    sbctl_table_free(t);
    json_decref(req);
    json_decref(reply);
    sb_client_free(c);
    return rc;
}

const sbctl_cmd sbctl_cmd_dlq_list = {
    "dlq list",
    "[SUB]",
    "list dead letters",
    "Lists the dead letters of subscription SUB (of every subscription if SUB is\n"
    "omitted), oldest first: why each one died, after how many attempts, and a\n"
    "preview of its payload. When more are left, prints the --after value that\n"
    "shows the next page.\n",
    dlq_list_opts,
    sizeof(dlq_list_opts) / sizeof(dlq_list_opts[0]),
    0,
    1,
    run_dlq_list};

/* Dead letters a redrive or purge handles per request: a progress line
 * between them, and no request holds the broker's store for long. */
#define DLQ_BATCH 1000

/* redrive and purge: requests of DLQ_BATCH until the broker says there are
 * no more (a broker without batches does all in one), the total counted. */
static int dlq_count_op(sbctl_ctx *ctx, const sbctl_args *a, const char *op, const char *what,
                        const char *verb)
{
    sb_client *c = NULL;
    json_t *reply = NULL;
    int64_t total = 0, after = 0, floor = 0;
    sbctl_progress pg;
    int rc, more = 1;

    rc = sbctl_connect(&c, ctx, ctx->endpoints[0]);
    if (rc != 0)
        return rc;
    sbctl_progress_start(&pg, ctx);
    while (more && rc == 0) {
        json_t *req = dlq_request(op, a);
        json_object_set_new(req, "limit", json_integer(DLQ_BATCH));
        if (after > 0)
            json_object_set_new(req, "after", json_integer(after));
        if (floor > 0) /* redrive: message ids; purge: dead-letter ids */
            json_object_set_new(req, "floor", json_integer(floor));
        rc = sbctl_call(c, req, &reply, what);
        json_decref(req);
        if (rc != 0)
            break;
        total += sbctl_json_int(reply, "count", 0);
        more = json_is_true(json_object_get(reply, "more"));
        after = sbctl_json_int(reply, "next", 0);
        floor = sbctl_json_int(reply, "floor", 0);
        json_decref(reply);
        reply = NULL;
        if (more) {
            double secs = (double)(sbctl_now_ns() - pg.start_ns) / 1e9;
            char rate[32];
            sbctl_fmt_rate(rate, sizeof(rate), secs > 0 ? (double)total / secs : 0);
            sbctl_progress_show(&pg, "%s: %s %lld dead letters so far (%s/s)", what, verb,
                                (long long)total, rate);
        }
    }
    sbctl_progress_end(&pg);
    if (rc == 0 && ctx->json)
        rc = sbctl_print_json(json_pack("{s:s,s:s?,s:I}", "op", op, "sub",
                                        a->npos > 0 ? a->pos[0] : NULL, "count",
                                        (json_int_t)total));
    else if (rc == 0)
        printf("%s %lld dead letter%s%s%s\n", verb, (long long)total, total == 1 ? "" : "s",
               a->npos > 0 ? " of " : "", a->npos > 0 ? a->pos[0] : "");
    json_decref(reply);
    sb_client_free(c);
    return rc;
}

static const sbctl_opt dlq_redrive_opts[] = {SBCTL_COMMON_OPTS};


static int run_dlq_redrive(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    return dlq_count_op(ctx, a, "dlq.redrive", "dlq redrive", "redrove");
}

const sbctl_cmd sbctl_cmd_dlq_redrive = {
    "dlq redrive",
    "[SUB]",
    "put dead letters back in their subscription",
    "Moves the dead letters of SUB (of every subscription if SUB is omitted) back\n"
    "to the tail of their subscription, with new message ids and attempt 1, in\n"
    "batches of 1000 (a progress line on a terminal, or with --progress). Dead\n"
    "letters that arrive meanwhile wait for the next redrive. --json prints\n"
    "{\"op\", \"sub\", \"count\"}.\n",
    dlq_redrive_opts,
    sizeof(dlq_redrive_opts) / sizeof(dlq_redrive_opts[0]),
    0,
    1,
    run_dlq_redrive};

static const sbctl_opt dlq_purge_opts[] = {
    SBCTL_COMMON_OPTS,
    {"yes", 'y', SBCTL_OPT_FLAG, 0, NULL, "do not ask for confirmation", 0, 0},
};

static int run_dlq_purge(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    const char *target = a->npos > 0 ? a->pos[0] : NULL;

    if (!sbctl_arg_flag(a, "yes")) {
        char answer[32];
        if (!ctx->tty_in) {
            sbctl_errorf("dlq purge: refusing to delete dead letters without confirmation; "
                         "pass --yes");
            return SBCTL_EXIT_USAGE;
        }
        if (target != NULL)
            fprintf(stderr, "Delete every dead letter of %s? This cannot be undone. [y/N] ",
                    target);
        else
            fprintf(stderr, "Delete the dead letters of EVERY subscription? This cannot be "
                            "undone. [y/N] ");
        fflush(stderr);
        if (fgets(answer, sizeof(answer), stdin) == NULL ||
            (strcmp(answer, "y\n") != 0 && strcmp(answer, "Y\n") != 0 &&
             strcmp(answer, "yes\n") != 0)) {
            fprintf(stderr, "sbctl: dlq purge: cancelled\n");
            return SBCTL_EXIT_ERROR;
        }
    }
    return dlq_count_op(ctx, a, "dlq.purge", "dlq purge", "purged");
}

const sbctl_cmd sbctl_cmd_dlq_purge = {
    "dlq purge",
    "[SUB] [--yes]",
    "delete dead letters",
    "Deletes the dead letters of SUB (of every subscription if SUB is omitted),\n"
    "oldest first in batches of 1000 (a progress line on a terminal, or with\n"
    "--progress). Asks for confirmation when stdin is a terminal; otherwise --yes\n"
    "is required. --json prints {\"op\", \"sub\", \"count\"}.\n",
    dlq_purge_opts,
    sizeof(dlq_purge_opts) / sizeof(dlq_purge_opts[0]),
    0,
    1,
    run_dlq_purge};

/* ---- store check / compact ---------------------------------------------- */

/* They take as long as the database is big: no request timeout. */
#define MAINTENANCE_TIMEOUT_MS (24 * 3600 * 1000)

static const sbctl_opt store_opts[] = {SBCTL_COMMON_OPTS};

static int store_op(sbctl_ctx *ctx, const char *op, const char *what, json_t **reply)
{
    sb_client *c = NULL;
    json_t *req = json_pack("{s:s}", "op", op);
    sb_error err;
    int rc = sbctl_connect(&c, ctx, ctx->endpoints[0]);
    *reply = NULL;
    if (rc == 0) {
        sb_error_clear(&err);
        rc = sb_client_request(c, reply, req, MAINTENANCE_TIMEOUT_MS, &err);
        if (rc != 0) {
            rc = sbctl_conn_failed(what, &err);
        } else if (sb_client_reply_error(*reply, &err) != 0) {
            json_decref(*reply);
            *reply = NULL;
            rc = sbctl_broker_failed(what, &err);
        }
    }
    json_decref(req);
    sb_client_free(c);
    return rc;
}

static int run_store_check(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    json_t *reply;
    int rc = store_op(ctx, "store.check", "check", &reply);
    if (rc == 0) {
        const char *report = json_string_value(json_object_get(reply, "report"));
        int ok = json_is_true(json_object_get(reply, "ok"));
        if (ctx->json) {
            json_object_del(reply, "id");
            rc = sbctl_print_json(json_incref(reply));
            if (rc == 0 && !ok)
                rc = SBCTL_EXIT_ERROR;
        } else if (ok) {
            printf("store: ok\n");
        } else {
            printf("store: CORRUPT: %s\n", report != NULL ? report : "?");
            rc = SBCTL_EXIT_ERROR;
        }
    }
    json_decref(reply);
    return rc;
}

const sbctl_cmd sbctl_cmd_check = {
    "check",
    "",
    "check the whole database for corruption",
    "Runs SQLite's quick_check over every page of the broker's database (at start\n"
    "a database over 64 MiB is checked only as far as start-up reads it). Commits\n"
    "wait while it runs: about a second per GiB. Exit status 1 if it is damaged.\n",
    store_opts,
    sizeof(store_opts) / sizeof(store_opts[0]),
    0,
    0,
    run_store_check};

static int run_store_compact(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    json_t *reply;
    int rc = store_op(ctx, "store.compact", "compact", &reply);
    if (rc == 0 && ctx->json) {
        json_object_del(reply, "id");
        rc = sbctl_print_json(json_incref(reply));
    } else if (rc == 0) {
        char before[32], after[32];
        sbctl_fmt_bytes(before, sizeof(before), sbctl_json_int(reply, "before_bytes", -1));
        sbctl_fmt_bytes(after, sizeof(after), sbctl_json_int(reply, "after_bytes", -1));
        printf("store: compacted from %s to %s\n", before, after);
    }
    json_decref(reply);
    return rc;
}

const sbctl_cmd sbctl_cmd_compact = {
    "compact",
    "",
    "shrink the database to its data",
    "Rewrites the broker's database (SQLite VACUUM) so the file holds only its\n"
    "data, and converts a database created before incremental auto-vacuum, after\n"
    "which free pages are returned to the file system as they come. Needs free\n"
    "disk space for a second copy (refused otherwise); commits wait meanwhile.\n",
    store_opts,
    sizeof(store_opts) / sizeof(store_opts[0]),
    0,
    0,
    run_store_compact};
