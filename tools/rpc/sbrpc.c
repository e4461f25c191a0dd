/*
 * The sbrpc client library (sbrpc.h): switchboard.idl's client stub behind
 * plain C calls. Each call runs the stub inside sb_rpc__guarded (guard.c),
 * which turns the runtime's exceptions into status codes.
 */
#include "tools/rpc/sbrpc.h"
#include "service/alloc.h"
#include "tools/rpc/sbrpc_alloc.h"
#include "service/platform/win/utf.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>

#include "switchboard_h.h"

long sb_rpc__guarded(long (*fn)(void *), void *arg);

/* The interface's header struct is sbrpc.h's, field for field. */
_Static_assert(sizeof(SB_RPC_HEADER) == sizeof(sb_rpc_header) &&
                   offsetof(SB_RPC_HEADER, key) == offsetof(sb_rpc_header, key) &&
                   offsetof(SB_RPC_HEADER, value) == offsetof(sb_rpc_header, value),
               "SB_RPC_HEADER and sb_rpc_header have one layout");

#define ENDPOINT_MAX 300
/* Idle sessions a binding keeps for the next calls. */
#define POOL_MAX 16

struct sb_rpc {
    RPC_BINDING_HANDLE h;
    int tcp;
    char display[ENDPOINT_MAX + 8];
    SRWLOCK lock; /* the pool */
    SB_RPC_SESSION idle[POOL_MAX];
    int nidle;
};

/* SbOpen binds through the stub's global sb_rpc_binding: one at a time. */
static SRWLOCK open_lock = SRWLOCK_INIT;

struct sb_rpc_sub {
    sb_rpc *c;
    SB_RPC_SUB ctx;
    char *name;
};

/* ---- errors ---- */

int sb_rpc_status_code(unsigned long status)
{
    switch (status) {
    case RPC_S_SERVER_UNAVAILABLE:
    case EPT_S_NOT_REGISTERED:
    case RPC_S_UNKNOWN_IF:
        return SB_ECONNREFUSED;
    case RPC_S_SERVER_TOO_BUSY:
        return SB_EBUSY;
    case RPC_S_CALL_FAILED:
    case RPC_S_CALL_FAILED_DNE:
    case RPC_S_COMM_FAILURE:
    case RPC_S_CALL_CANCELLED:
        return SB_ECLOSED;
    case ERROR_ACCESS_DENIED:
    case RPC_S_SEC_PKG_ERROR:
    case RPC_S_UNKNOWN_AUTHN_SERVICE:
    case RPC_S_UNKNOWN_AUTHN_LEVEL:
        return SB_EAUTH;
    case RPC_X_INVALID_BOUND:
    case RPC_X_BAD_STUB_DATA:
    case RPC_X_NULL_REF_POINTER:
    case RPC_X_SS_IN_NULL_CONTEXT:
    case RPC_X_ENUM_VALUE_OUT_OF_RANGE:
    case RPC_X_BYTE_COUNT_TOO_SMALL:
    case RPC_S_PROTSEQ_NOT_SUPPORTED:
    case RPC_S_INVALID_ENDPOINT_FORMAT:
    case RPC_S_INVALID_NET_ADDR:
    case RPC_S_INVALID_STRING_BINDING:
        return SB_EINVAL;
    case RPC_X_SS_CONTEXT_MISMATCH: /* ERROR_INVALID_HANDLE */
        return SB_ENOTFOUND;
    case ERROR_OUTOFMEMORY:
    case ERROR_NOT_ENOUGH_MEMORY:
        return SB_ENOMEM;
    case ERROR_TIMEOUT:
        return SB_ETIMEDOUT;
    default:
        return SB_EIO;
    }
}

/* A runtime failure (an exception's code or a returned RPC status). */
static int rpc_failed(const char *where, const char *call, unsigned long status, sb_error *err)
{
    char text[256];
    int code = sb_rpc_status_code(status);
    sb_win_strerror(status, text, sizeof text);
    return sb_error_set(err, code, (int)status, "%s: %s: %s (RPC status %lu)%s", where, call, text,
                        status,
                        code == SB_ECONNREFUSED ? "; is the broker running with an rpc adapter "
                                                  "on this endpoint?"
                                                : "");
}

/* A refusal by the broker: its code and reason; frees why. */
static int broker_failed(const char *call, long rc, SB_RPC_TEXT *why, sb_error *err)
{
    int code = rc < 0 ? (int)rc : SB_EUNKNOWN;
    sb_error_set(err, code, (int)rc, "%s: %s", call,
                 why->text != NULL ? why->text : sb_strerror(code));
    MIDL_user_free(why->text);
    why->text = NULL;
    return code;
}

/* ---- endpoints and bindings ---- */

static int parse_endpoint(const char *s, int *tcp, char *host, size_t hn, char *ep, size_t en,
                          sb_error *err)
{
    const char *colon;
    if (s == NULL || *s == '\0')
        s = SB_RPC_DEFAULT_ENDPOINT;
    if (strncmp(s, "rpc:", 4) == 0)
        s += 4;
    if (strlen(s) > ENDPOINT_MAX)
        return sb_error_set(err, SB_EINVAL, 0, "rpc endpoint longer than %d characters",
                            ENDPOINT_MAX);
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return sb_error_set(err, SB_EINVAL, 0, "rpc:%s: expected [ADDRESS]:PORT", s);
        snprintf(host, hn, "%.*s", (int)(close - s - 1), s + 1);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon != NULL)
            snprintf(host, hn, "%.*s", (int)(colon - s), s);
    }
    if (colon == NULL) {
        if (*s == '\0' || strpbrk(s, "\\/ ") != NULL)
            return sb_error_set(err, SB_EINVAL, 0,
                                "rpc:%s: an ncalrpc endpoint is a name without '\\', '/' or blanks",
                                s);
        *tcp = 0;
        snprintf(ep, en, "%s", s);
        return 0;
    }
    {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (host[0] == '\0' || *end != '\0' || colon[1] == '\0' || port < 1 || port > 65535)
            return sb_error_set(err, SB_EINVAL, 0,
                                "rpc:%s: expected HOST:PORT with a port between 1 and 65535", s);
        *tcp = 1;
        snprintf(ep, en, "%ld", port);
    }
    return 0;
}

int sb_rpc_connect(sb_rpc **out, const char *endpoint, const sb_rpc_options *opts, sb_error *err)
{
    char host[ENDPOINT_MAX + 1] = "", ep[ENDPOINT_MAX + 1] = "";
    wchar_t *whost = NULL, *wep = NULL;
    RPC_WSTR str = NULL;
    RPC_STATUS st;
    sb_rpc *c;
    int tcp = 0, rc;

    *out = NULL;
    rc = parse_endpoint(endpoint, &tcp, host, sizeof host, ep, sizeof ep, err);
    if (rc != 0)
        return rc;
    c = sb_calloc(1, sizeof(*c));
    if (c == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    c->tcp = tcp;
    InitializeSRWLock(&c->lock);
    if (tcp)
        snprintf(c->display, sizeof c->display,
                 strchr(host, ':') != NULL ? "rpc:[%s]:%s" : "rpc:%s:%s", host, ep);
    else
        snprintf(c->display, sizeof c->display, "rpc:%s", ep);
    whost = tcp ? sb_utf8_to_wide(host) : NULL;
    wep = sb_utf8_to_wide(ep);
    if ((tcp && whost == NULL) || wep == NULL) {
        rc = sb_error_set(err, SB_EINVAL, 0, "%s: not valid UTF-8, or out of memory", c->display);
        goto fail;
    }
    st = RpcStringBindingComposeW(NULL, (RPC_WSTR)(tcp ? L"ncacn_ip_tcp" : L"ncalrpc"),
                                  (RPC_WSTR)whost, (RPC_WSTR)wep, NULL, &str);
    if (st == RPC_S_OK)
        st = RpcBindingFromStringBindingW(str, &c->h);
    if (str != NULL)
        RpcStringFreeW(&str);
    if (st != RPC_S_OK) {
        rc = rpc_failed(c->display, "binding", st, err);
        goto fail;
    }
    if (!tcp || opts == NULL || !opts->anonymous) {
        /* Identify level: the broker reads who calls, and cannot act as them. */
        RPC_SECURITY_QOS qos = {RPC_C_SECURITY_QOS_VERSION, RPC_C_QOS_CAPABILITIES_DEFAULT,
                                RPC_C_QOS_IDENTITY_STATIC, RPC_C_IMP_LEVEL_IDENTIFY};
        st = RpcBindingSetAuthInfoExW(c->h, NULL, RPC_C_AUTHN_LEVEL_PKT_PRIVACY, RPC_C_AUTHN_WINNT,
                                      NULL, RPC_C_AUTHZ_NONE, &qos);
        /* Over ncalrpc Windows passes the caller's identity anyway (and under
         * Wine NTLM may be missing): authentication is a bonus there. */
        if (st != RPC_S_OK && tcp) {
            char text[256];
            sb_win_strerror(st, text, sizeof text);
            rc = sb_error_set(err, SB_EAUTH, (int)st,
                              "%s: cannot authenticate with NTLM (RPC_C_AUTHN_WINNT): %s (RPC "
                              "status %lu); under Wine NTLM needs Samba's ntlm_auth",
                              c->display, text, (unsigned long)st);
            goto fail;
        }
    }
    sb_free(whost);
    sb_free(wep);
    *out = c;
    return 0;
fail:
    if (c->h != NULL)
        RpcBindingFree(&c->h);
    sb_free(whost);
    sb_free(wep);
    sb_free(c);
    return rc;
}

static void session_close(SB_RPC_SESSION *ss);

void sb_rpc_free(sb_rpc *c)
{
    if (c == NULL)
        return;
    while (c->nidle > 0)
        session_close(&c->idle[--c->nidle]);
    if (c->h != NULL)
        RpcBindingFree(&c->h);
    sb_free(c);
}

const char *sb_rpc_endpoint(const sb_rpc *c)
{
    return c->display;
}

/* ---- sessions ---- */

typedef struct open_args {
    SB_RPC_SESSION ss;
    LONG flags, rc;
    SB_RPC_TEXT why;
} open_args;

static long call_open(void *p)
{
    open_args *a = p;
    a->rc = SbOpen(&a->ss, &a->flags, &a->why);
    return 0;
}

static long call_close(void *p)
{
    SbClose(p);
    return 0;
}

/* Closes a session, on the broker if it can be reached, else here. */
static void session_close(SB_RPC_SESSION *ss)
{
    if (*ss != NULL)
        (void)sb_rpc__guarded(call_close, ss);
    if (*ss != NULL)
        RpcSsDestroyClientContext(ss);
}

/* An idle session of c, or a new one. */
static int session_get(sb_rpc *c, SB_RPC_SESSION *out, const char *call, sb_error *err)
{
    open_args a;
    long ex;

    *out = NULL;
    AcquireSRWLockExclusive(&c->lock);
    if (c->nidle > 0)
        *out = c->idle[--c->nidle];
    ReleaseSRWLockExclusive(&c->lock);
    if (*out != NULL)
        return 0;
    memset(&a, 0, sizeof a);
    AcquireSRWLockExclusive(&open_lock);
    sb_rpc_binding = c->h;
    ex = sb_rpc__guarded(call_open, &a);
    sb_rpc_binding = NULL;
    ReleaseSRWLockExclusive(&open_lock);
    if (ex != 0)
        return rpc_failed(c->display, call, (unsigned long)ex, err);
    if (a.rc != 0)
        return broker_failed(call, a.rc, &a.why, err);
    *out = a.ss;
    return 0;
}

static void session_put(sb_rpc *c, SB_RPC_SESSION ss)
{
    AcquireSRWLockExclusive(&c->lock);
    if (c->nidle < POOL_MAX) {
        c->idle[c->nidle++] = ss;
        ss = NULL;
    }
    ReleaseSRWLockExclusive(&c->lock);
    if (ss != NULL)
        session_close(&ss);
}

/* Runs fn(args) (a call on *slot, the session) with a session of c, and
 * returns the runtime's exception code (0: the call ran; its result is
 * the procedure's). A session the broker no longer knows (it restarted)
 * or no longer serves (a reload replaced the adapter) is dropped and the
 * call made once more on a new one: neither ran the call. */
static int session_call(sb_rpc *c, const char *call, long (*fn)(void *), void *args,
                        SB_RPC_SESSION *slot, LONG *rc, SB_RPC_TEXT *why, long *ex, sb_error *err)
{
    for (int attempt = 0;; attempt++) {
        int code = session_get(c, slot, call, err);
        if (code != 0)
            return code;
        *rc = 0;
        *ex = sb_rpc__guarded(fn, args);
        if (*ex == 0 && *rc != SB_ESHUTDOWN) {
            session_put(c, *slot);
            return 0;
        }
        if (*ex != 0)
            RpcSsDestroyClientContext(slot); /* the broker is gone, or forgot it */
        else
            session_close(slot);
        if (attempt == 1 || (*ex != 0 && *ex != RPC_X_SS_CONTEXT_MISMATCH))
            return 0;
        MIDL_user_free(why->text);
        why->text = NULL;
    }
}

/* ---- publish ---- */

typedef struct publish_args {
    sb_rpc *c;
    SB_RPC_SESSION ss;
    const char *topic;
    const void *payload;
    ULONG len;
    const SB_RPC_HEADER *headers;
    ULONG nheaders;
    const SB_RPC_PUB_OPTIONS *opts;
    MIDL_uhyper id;
    LONG queues, rc;
    SB_RPC_TEXT why;
} publish_args;

static long call_publish(void *p)
{
    publish_args *a = p;
    a->rc = SbPublish(a->ss, a->topic, a->len, a->payload, a->nheaders, a->headers, a->opts, &a->id,
                      &a->queues, &a->why);
    return 0;
}

int sb_rpc_publish(sb_rpc *c, const char *topic, const void *payload, size_t len,
                   const sb_rpc_header *headers, size_t nheaders, const sb_rpc_pub_opts *opts,
                   uint64_t *out_id, int *out_queues, sb_error *err)
{
    SB_RPC_PUB_OPTIONS o;
    publish_args a;
    long ex;
    int code;

    if (topic == NULL || (payload == NULL && len > 0) || len > SB_RPC_MAX_PAYLOAD ||
        nheaders > SB_RPC_MAX_HEADERS || (headers == NULL && nheaders > 0))
        return sb_error_set(err, len > SB_RPC_MAX_PAYLOAD ? SB_ETOOBIG : SB_EINVAL, 0,
                            "SbPublish: topic required; payload at most %lu bytes, at most %lu "
                            "headers",
                            (unsigned long)SB_RPC_MAX_PAYLOAD, (unsigned long)SB_RPC_MAX_HEADERS);
    memset(&a, 0, sizeof a);
    a.c = c;
    a.topic = topic;
    a.payload = payload;
    a.len = (ULONG)len;
    a.headers = (const SB_RPC_HEADER *)headers;
    a.nheaders = (ULONG)nheaders;
    if (opts != NULL) {
        o.retain = opts->retain;
        o.priority = opts->priority;
        o.ttl_ms = opts->ttl_ms;
        a.opts = &o;
    }
    code = session_call(c, "SbPublish", call_publish, &a, &a.ss, &a.rc, &a.why, &ex, err);
    if (code != 0)
        return code;
    if (ex != 0)
        return rpc_failed(c->display, "SbPublish", (unsigned long)ex, err);
    if (a.rc != 0)
        return broker_failed("SbPublish", a.rc, &a.why, err);
    if (out_id != NULL)
        *out_id = a.id;
    if (out_queues != NULL)
        *out_queues = (int)a.queues;
    return 0;
}

/* ---- subscriptions ---- */

typedef struct subscribe_args {
    sb_rpc *c;
    SB_RPC_SESSION ss;
    const char *name, *filter;
    const SB_RPC_SUB_OPTIONS *opts;
    SB_RPC_SUB ctx;
    SB_RPC_TEXT filters, why;
    LONG rc;
} subscribe_args;

static long call_subscribe(void *p)
{
    subscribe_args *a = p;
    a->rc = SbSubscribe(a->ss, a->name, a->filter, a->opts, &a->ctx, &a->filters, &a->why);
    return 0;
}

int sb_rpc_subscribe(sb_rpc_sub **out, sb_rpc *c, const char *name, const char *filter,
                     const sb_rpc_sub_opts *opts, char **out_filters, sb_error *err)
{
    SB_RPC_SUB_OPTIONS o;
    subscribe_args a;
    sb_rpc_sub *s;
    long ex;
    int code;

    *out = NULL;
    if (out_filters != NULL)
        *out_filters = NULL;
    if (name == NULL)
        return sb_error_set(err, SB_EINVAL, 0, "SbSubscribe: a subscription name is required");
    s = sb_calloc(1, sizeof(*s));
    if (s == NULL || (s->name = sb_strdup(name)) == NULL) {
        sb_free(s);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    memset(&a, 0, sizeof a);
    a.c = c;
    a.name = name;
    a.filter = filter;
    if (opts != NULL) {
        memset(&o, 0, sizeof o);
        o.window = opts->window;
        o.durability = opts->durability;
        o.max_attempts = opts->max_attempts;
        o.transient = opts->transient;
        o.lease_ms = opts->lease_ms;
        o.ttl_ms = opts->ttl_ms;
        o.max_depth = opts->max_depth;
        o.expire_ms = opts->expire_ms;
        o.retained = (char *)opts->retained;
        a.opts = &o;
    }
    code = session_call(c, "SbSubscribe", call_subscribe, &a, &a.ss, &a.rc, &a.why, &ex, err);
    if (code != 0 || ex != 0 || a.rc != 0) {
        sb_free(s->name);
        sb_free(s);
        if (code != 0)
            return code;
        if (ex != 0)
            return rpc_failed(c->display, "SbSubscribe", (unsigned long)ex, err);
        MIDL_user_free(a.filters.text);
        return broker_failed("SbSubscribe", a.rc, &a.why, err);
    }
    if (out_filters != NULL) {
        *out_filters = sb_strdup(a.filters.text != NULL ? a.filters.text : "");
        if (*out_filters == NULL) {
            MIDL_user_free(a.filters.text);
            s->c = c;
            s->ctx = a.ctx;
            sb_rpc_unsubscribe(s, 0, NULL);
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        }
    }
    MIDL_user_free(a.filters.text);
    s->c = c;
    s->ctx = a.ctx;
    *out = s;
    return 0;
}

const char *sb_rpc_sub_name(const sb_rpc_sub *s)
{
    return s->name;
}

typedef struct pull_args {
    sb_rpc_sub *s;
    ULONG max, wait, count;
    SB_RPC_DELIVERY *items;
    SB_RPC_TEXT why;
    LONG rc;
} pull_args;

static long call_pull(void *p)
{
    pull_args *a = p;
    a->rc = SbPull(a->s->ctx, a->max, a->wait, &a->count, &a->items, &a->why);
    return 0;
}

static void wire_free(SB_RPC_DELIVERY *items, ULONG n)
{
    for (ULONG i = 0; i < n; i++)
        sb_rpc__wire_free(&items[i]);
    MIDL_user_free(items);
}

typedef struct batch_priv {
    SB_RPC_DELIVERY *items;
    ULONG count;
} batch_priv;

int sb_rpc_pull(sb_rpc_sub *s, sb_rpc_batch **out, size_t max, int wait_ms, sb_error *err)
{
    sb_rpc_batch *b;
    batch_priv *priv;
    pull_args a;
    long ex;

    *out = NULL;
    if (max < 1 || max > SB_RPC_MAX_BATCH)
        return sb_error_set(err, SB_EINVAL, 0, "SbPull: max must be 1..%lu",
                            (unsigned long)SB_RPC_MAX_BATCH);
    memset(&a, 0, sizeof a);
    a.s = s;
    a.max = (ULONG)max;
    a.wait = wait_ms < 0 ? 0xffffffffu : (ULONG)wait_ms;
    ex = sb_rpc__guarded(call_pull, &a);
    if (ex != 0)
        return rpc_failed(s->c->display, "SbPull", (unsigned long)ex, err);
    if (a.rc != 0) {
        wire_free(a.items, a.count);
        return broker_failed("SbPull", a.rc, &a.why, err);
    }
    b = sb_calloc(1, sizeof(*b));
    priv = sb_calloc(1, sizeof(*priv));
    if (b == NULL || priv == NULL ||
        (a.count > 0 && (b->items = sb_calloc(a.count, sizeof(*b->items))) == NULL)) {
        /* The broker leased them: they come back after the lease. */
        wire_free(a.items, a.count);
        sb_free(b);
        sb_free(priv);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    priv->items = a.items;
    priv->count = a.count;
    b->priv = priv;
    b->count = a.count;
    for (ULONG i = 0; i < a.count; i++) {
        SB_RPC_DELIVERY *w = &a.items[i];
        sb_rpc_delivery *d = &b->items[i];
        d->msg_id = w->msg_id;
        d->attempt = (int)w->attempt;
        d->created_ms = w->created_ms;
        d->topic = w->topic != NULL ? w->topic : "";
        d->payload = w->payload;
        d->payload_len = w->payload_size;
        d->headers = (const sb_rpc_header *)w->headers;
        d->header_count = w->headers != NULL ? w->header_count : 0;
    }
    *out = b;
    return 0;
}

void sb_rpc_batch_free(sb_rpc_batch *b)
{
    batch_priv *priv;
    if (b == NULL)
        return;
    priv = b->priv;
    if (priv != NULL) {
        wire_free(priv->items, priv->count);
        sb_free(priv);
    }
    sb_free(b->items);
    sb_free(b);
}

typedef struct ack_args {
    sb_rpc_sub *s;
    ULONG n, done;
    const MIDL_uhyper *ids;
    const char *reason;
    int ack;
    SB_RPC_TEXT why;
    LONG rc;
} ack_args;

static long call_ack(void *p)
{
    ack_args *a = p;
    if (a->ack)
        a->rc = SbAck(a->s->ctx, a->n, a->ids, &a->done, &a->why);
    else
        a->rc = SbNack(a->s->ctx, a->n, a->ids, a->reason, &a->done, &a->why);
    return 0;
}

static int ack_or_nack(sb_rpc_sub *s, const uint64_t *ids, size_t n, const char *reason, int ack,
                       size_t *out_done, sb_error *err)
{
    const char *call = ack ? "SbAck" : "SbNack";
    ack_args a;
    long ex;

    if (out_done != NULL)
        *out_done = 0;
    if (ids == NULL || n < 1 || n > SB_RPC_MAX_BATCH)
        return sb_error_set(err, SB_EINVAL, 0, "%s: 1..%lu ids", call,
                            (unsigned long)SB_RPC_MAX_BATCH);
    memset(&a, 0, sizeof a);
    a.s = s;
    a.n = (ULONG)n;
    a.ids = (const MIDL_uhyper *)ids;
    a.reason = reason;
    a.ack = ack;
    ex = sb_rpc__guarded(call_ack, &a);
    if (ex != 0)
        return rpc_failed(s->c->display, call, (unsigned long)ex, err);
    if (out_done != NULL)
        *out_done = a.done;
    if (a.rc != 0)
        return broker_failed(call, a.rc, &a.why, err);
    return 0;
}

int sb_rpc_ack(sb_rpc_sub *s, const uint64_t *ids, size_t n, size_t *out_done, sb_error *err)
{
    return ack_or_nack(s, ids, n, NULL, 1, out_done, err);
}

int sb_rpc_nack(sb_rpc_sub *s, const uint64_t *ids, size_t n, const char *reason, size_t *out_done,
                sb_error *err)
{
    return ack_or_nack(s, ids, n, reason, 0, out_done, err);
}

typedef struct unsub_args {
    sb_rpc_sub *s;
    LONG del, rc;
    SB_RPC_TEXT why;
} unsub_args;

static long call_unsubscribe(void *p)
{
    unsub_args *a = p;
    a->rc = SbUnsubscribe(&a->s->ctx, a->del, &a->why);
    return 0;
}

int sb_rpc_unsubscribe(sb_rpc_sub *s, int delete_sub, sb_error *err)
{
    unsub_args a;
    long ex;
    int rc = 0;

    if (s == NULL)
        return 0;
    memset(&a, 0, sizeof a);
    a.s = s;
    a.del = delete_sub != 0;
    ex = sb_rpc__guarded(call_unsubscribe, &a);
    if (ex != 0)
        rc = rpc_failed(s->c->display, "SbUnsubscribe", (unsigned long)ex, err);
    else if (a.rc != 0)
        rc = broker_failed("SbUnsubscribe", a.rc, &a.why, err);
    if (s->ctx != NULL) /* the broker did not close it: forget it here */
        RpcSsDestroyClientContext(&s->ctx);
    sb_free(s->name);
    sb_free(s);
    return rc;
}

/* ---- statistics, dead letters, identity ---- */

typedef struct text_args {
    sb_rpc *c;
    SB_RPC_SESSION ss;
    int op; /* 0 stats, 1 whoami */
    SB_RPC_TEXT text, why;
    LONG flags, rc;
} text_args;

static long call_text(void *p)
{
    text_args *a = p;
    if (a->op == 0)
        a->rc = SbStats(a->ss, &a->text, &a->why);
    else
        a->rc = SbWhoAmI(a->ss, &a->text, &a->flags, &a->why);
    return 0;
}

int sb_rpc_stats(sb_rpc *c, char **out, sb_error *err)
{
    text_args a;
    long ex;
    int code;
    *out = NULL;
    memset(&a, 0, sizeof a);
    a.c = c;
    code = session_call(c, "SbStats", call_text, &a, &a.ss, &a.rc, &a.why, &ex, err);
    if (code != 0)
        return code;
    if (ex != 0)
        return rpc_failed(c->display, "SbStats", (unsigned long)ex, err);
    if (a.rc != 0)
        return broker_failed("SbStats", a.rc, &a.why, err);
    *out = sb_strdup(a.text.text != NULL ? a.text.text : "{}");
    MIDL_user_free(a.text.text);
    return *out != NULL ? 0 : sb_error_set(err, SB_ENOMEM, 0, "out of memory");
}

int sb_rpc_whoami(sb_rpc *c, char **out_user, int *out_flags, sb_error *err)
{
    text_args a;
    long ex;
    int code;
    if (out_user != NULL)
        *out_user = NULL;
    if (out_flags != NULL)
        *out_flags = 0;
    memset(&a, 0, sizeof a);
    a.c = c;
    a.op = 1;
    code = session_call(c, "SbWhoAmI", call_text, &a, &a.ss, &a.rc, &a.why, &ex, err);
    if (code != 0)
        return code;
    if (ex != 0)
        return rpc_failed(c->display, "SbWhoAmI", (unsigned long)ex, err);
    if (a.rc != 0)
        return broker_failed("SbWhoAmI", a.rc, &a.why, err);
    if (out_flags != NULL)
        *out_flags = (int)a.flags;
    if (out_user != NULL && a.text.text != NULL) {
        *out_user = sb_strdup(a.text.text);
        if (*out_user == NULL) {
            MIDL_user_free(a.text.text);
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        }
    }
    MIDL_user_free(a.text.text);
    return 0;
}

typedef struct dlq_args {
    sb_rpc *c;
    SB_RPC_SESSION ss;
    int op; /* 0 list, 1 redrive, 2 purge */
    const char *sub;
    hyper after, next, count;
    ULONG limit, n;
    SB_RPC_DEAD_LETTER *items;
    SB_RPC_TEXT why;
    LONG rc;
} dlq_args;

static long call_dlq(void *p)
{
    dlq_args *a = p;
    if (a->op == 0)
        a->rc = SbDlqList(a->ss, a->sub, a->after, a->limit, &a->n, &a->items, &a->next, &a->why);
    else if (a->op == 1)
        a->rc = SbDlqRedrive(a->ss, a->sub, &a->count, &a->why);
    else
        a->rc = SbDlqPurge(a->ss, a->sub, &a->count, &a->why);
    return 0;
}

typedef struct dead_priv {
    SB_RPC_DEAD_LETTER *items;
    ULONG count;
} dead_priv;

static void dead_wire_free(SB_RPC_DEAD_LETTER *items, ULONG n)
{
    for (ULONG i = 0; i < n; i++)
        sb_rpc__dead_free(&items[i]);
    MIDL_user_free(items);
}

int sb_rpc_dlq_list(sb_rpc *c, const char *sub, int64_t after, int limit, sb_rpc_dead_letters **out,
                    sb_error *err)
{
    sb_rpc_dead_letters *d;
    dead_priv *priv;
    dlq_args a;
    long ex;
    int code;

    *out = NULL;
    if (limit < 0 || limit > (int)SB_RPC_MAX_BATCH)
        return sb_error_set(err, SB_EINVAL, 0, "SbDlqList: limit must be 0..%lu",
                            (unsigned long)SB_RPC_MAX_BATCH);
    memset(&a, 0, sizeof a);
    a.c = c;
    a.sub = sub;
    a.after = after;
    a.limit = (ULONG)limit;
    code = session_call(c, "SbDlqList", call_dlq, &a, &a.ss, &a.rc, &a.why, &ex, err);
    if (code != 0)
        return code;
    if (ex != 0)
        return rpc_failed(c->display, "SbDlqList", (unsigned long)ex, err);
    if (a.rc != 0) {
        dead_wire_free(a.items, a.n);
        return broker_failed("SbDlqList", a.rc, &a.why, err);
    }
    d = sb_calloc(1, sizeof(*d));
    priv = sb_calloc(1, sizeof(*priv));
    if (d == NULL || priv == NULL ||
        (a.n > 0 && (d->items = sb_calloc(a.n, sizeof(*d->items))) == NULL)) {
        dead_wire_free(a.items, a.n);
        sb_free(d);
        sb_free(priv);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    priv->items = a.items;
    priv->count = a.n;
    d->priv = priv;
    d->count = a.n;
    d->next = a.next;
    for (ULONG i = 0; i < a.n; i++) {
        SB_RPC_DEAD_LETTER *w = &a.items[i];
        sb_rpc_dead_letter *x = &d->items[i];
        x->dlq_id = w->dlq_id;
        x->sub = w->sub != NULL ? w->sub : "";
        x->msg_id = w->msg_id;
        x->topic = w->topic != NULL ? w->topic : "";
        x->payload = w->payload;
        x->payload_len = w->payload_size;
        x->headers = (const sb_rpc_header *)w->headers;
        x->header_count = w->headers != NULL ? w->header_count : 0;
        x->reason = w->reason;
        x->source = w->source;
        x->attempts = (int)w->attempts;
        x->dead_at_ms = w->dead_at_ms;
    }
    *out = d;
    return 0;
}

void sb_rpc_dead_letters_free(sb_rpc_dead_letters *d)
{
    dead_priv *priv;
    if (d == NULL)
        return;
    priv = d->priv;
    if (priv != NULL) {
        dead_wire_free(priv->items, priv->count);
        sb_free(priv);
    }
    sb_free(d->items);
    sb_free(d);
}

static int dlq_count(sb_rpc *c, int op, const char *sub, int64_t *out_count, sb_error *err)
{
    const char *call = op == 1 ? "SbDlqRedrive" : "SbDlqPurge";
    dlq_args a;
    long ex;
    int code;
    if (out_count != NULL)
        *out_count = 0;
    memset(&a, 0, sizeof a);
    a.c = c;
    a.op = op;
    a.sub = sub;
    code = session_call(c, call, call_dlq, &a, &a.ss, &a.rc, &a.why, &ex, err);
    if (code != 0)
        return code;
    if (ex != 0)
        return rpc_failed(c->display, call, (unsigned long)ex, err);
    if (a.rc != 0)
        return broker_failed(call, a.rc, &a.why, err);
    if (out_count != NULL)
        *out_count = a.count;
    return 0;
}

int sb_rpc_dlq_redrive(sb_rpc *c, const char *sub, int64_t *out_count, sb_error *err)
{
    return dlq_count(c, 1, sub, out_count, err);
}

int sb_rpc_dlq_purge(sb_rpc *c, const char *sub, int64_t *out_count, sb_error *err)
{
    return dlq_count(c, 2, sub, out_count, err);
}
