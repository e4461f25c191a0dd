/*
 * The procedures of switchboard.idl, on the RPC runtime's threads.
 *
 * SbOpen finds the adapter of the call's protocol sequence and checks the
 * caller against its rules (Wine never runs the interface's security
 * callback, so SbOpen does it itself); the session it returns keeps the
 * caller's identity. Every call counts itself in on its adapter (beyond
 * max_calls it is answered SB_RPC_EBUSY at once, so a flood of calls cannot
 * hold more than max_calls threads in here), checks its arguments (the
 * stubs already enforce the IDL's ranges), hands the loop a job and waits
 * for the answer. A pull waits for deliveries at most
 * max_wait, and only max_pulls pulls wait at once: beyond, a pull is
 * answered at once with what there is.
 */
#include "adapters/rpc/win/rpc_int.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/topic.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* The codes of the interface are the broker's. */
_Static_assert(SB_RPC_ENOMEM == SB_ENOMEM && SB_RPC_EINVAL == SB_EINVAL && SB_RPC_EIO == SB_EIO &&
                   SB_RPC_ENOSPC == SB_ENOSPC && SB_RPC_ENOTFOUND == SB_ENOTFOUND &&
                   SB_RPC_EEXIST == SB_EEXIST && SB_RPC_EFULL == SB_EFULL &&
                   SB_RPC_ETOOBIG == SB_ETOOBIG && SB_RPC_ETIMEDOUT == SB_ETIMEDOUT &&
                   SB_RPC_EACCES == SB_EACCES && SB_RPC_ESHUTDOWN == SB_ESHUTDOWN &&
                   SB_RPC_EBUSY == SB_EBUSY && SB_RPC_ESTORE == SB_ESTORE &&
                   SB_RPC_EAUTH == SB_EAUTH && SB_RPC_EUNKNOWN == SB_EUNKNOWN,
               "switchboard.idl's codes follow service/error.h");

/* Longest subscription name, header key or value, nack reason (bytes). */
#define NAME_MAX_LEN 1024
#define TEXT_MAX_LEN 65535
/* A refusal is logged at most this often per adapter (a flood would fill
 * the log); the count goes with it. */
#define REFUSAL_LOG_MS 10000

/* Sets why's text and returns code. */
static long answer(SB_RPC_TEXT *why, int code, const char *fmt, ...) SB_PRINTF(3, 4);
static long answer(SB_RPC_TEXT *why, int code, const char *fmt, ...)
{
    char text[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    why->text = sb_rpc__text(text);
    return code;
}

/* ---- jobs ---- */

rpc_job *sb_rpc__job_new(rpc_adapter *a, rpc_job_kind kind, const rpc_caller *caller)
{
    rpc_job *j = sb_calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    if (uv_cond_init(&j->cond) != 0) {
        sb_free(j);
        return NULL;
    }
    j->kind = kind;
    j->a = a;
    sb_rpc__retain(a);
    if (caller != NULL)
        j->caller = *caller;
    j->refs = 1;
    return j;
}

void sb_rpc__job_release(rpc_job *j)
{
    rpc_adapter *a = j->a;
    int last;
    uv_mutex_lock(&a->lock);
    last = --j->refs == 0;
    uv_mutex_unlock(&a->lock);
    if (!last)
        return;
    if (j->msg != NULL) /* never posted: nobody else has seen it */
        sb_message_unref(j->msg);
    sb_free(j->name);
    sb_free(j->filter);
    sb_free(j->retained);
    sb_free(j->reason);
    sb_free(j->ids);
    sb_free(j->text);
    if (j->items != NULL) {
        for (unsigned long i = 0; i < j->nitems; i++)
            sb_rpc__dead_free(&j->items[i]);
        MIDL_user_free(j->items);
    }
    if (j->sub != NULL)
        sb_rpc__sub_release(j->sub);
    uv_cond_destroy(&j->cond);
    sb_free(j);
    sb_rpc__release(a);
}

int sb_rpc__job_run(rpc_job *j, int64_t timeout_ms)
{
    rpc_adapter *a = j->a;
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
    int rc;

    uv_mutex_lock(&a->lock);
    if (a->stopping) {
        uv_mutex_unlock(&a->lock);
        return SB_ESHUTDOWN;
    }
    j->refs++; /* the loop's */
    rc = sb_inbox_post(a->inbox, sb_rpc__job_exec, j);
    if (rc != 0) {
        j->refs--;
        uv_mutex_unlock(&a->lock);
        return rc;
    }
    while (!j->done) {
        uint64_t now = uv_hrtime();
        if (now >= deadline)
            break;
        (void)uv_cond_timedwait(&j->cond, &a->lock, deadline - now);
    }
    j->answered = j->done;
    if (j->done) {
        rc = j->status;
    } else {
        j->abandoned = 1;
        rc = SB_ETIMEDOUT;
    }
    uv_mutex_unlock(&a->lock);
    return rc;
}

/* The reason j gave for its status, if the loop answered before the call
 * stopped waiting; else the loop may still be writing it: the code's text. */
static const char *job_why(const rpc_job *j, int rc)
{
    return j->answered && j->why[0] != '\0' ? j->why : sb_strerror(rc);
}

int sb_rpc__job_post(rpc_job *j)
{
    rpc_adapter *a = j->a;
    int rc;
    uv_mutex_lock(&a->lock);
    j->abandoned = 1;
    rc = a->stopping ? SB_ESHUTDOWN : sb_inbox_post(a->inbox, sb_rpc__job_exec, j);
    uv_mutex_unlock(&a->lock);
    if (rc != 0)
        sb_rpc__job_release(j);
    return rc;
}

/* ---- subscriptions' references ---- */

static void sub_retain(rpc_sub *s)
{
    uv_mutex_lock(&s->a->lock);
    s->refs++;
    uv_mutex_unlock(&s->a->lock);
}

void sb_rpc__sub_release(rpc_sub *s)
{
    rpc_adapter *a = s->a;
    int last;
    uv_mutex_lock(&a->lock);
    last = --s->refs == 0;
    uv_mutex_unlock(&a->lock);
    if (!last)
        return;
    uv_cond_destroy(&s->cond);
    sb_free(s->name);
    s->magic = 0;
    sb_free(s);
    sb_rpc__release(a);
}

/* ---- context handles ---- */

/* The runtime hands a procedure any context handle of the interface its
 * client names: these read the first field (both structs have the magic
 * there) before anything else. */

static const char *handle_kind(const void *h)
{
    uint32_t magic = *(const uint32_t *)h;
    return magic == RPC_SUB_MAGIC       ? "a subscription handle"
           : magic == RPC_SESSION_MAGIC ? "a session"
                                        : "unknown";
}

/* h as a session, or NULL with why set (SB_EINVAL). */
static rpc_session *as_session(void *h, SB_RPC_TEXT *why)
{
    if (*(const uint32_t *)h == RPC_SESSION_MAGIC)
        return h;
    answer(why, SB_EINVAL, "the handle is not a session (from SbOpen): it is %s", handle_kind(h));
    return NULL;
}

/* h as a subscription handle, or NULL with why set (SB_EINVAL). */
static rpc_sub *as_sub(void *h, SB_RPC_TEXT *why)
{
    if (*(const uint32_t *)h == RPC_SUB_MAGIC)
        return h;
    answer(why, SB_EINVAL, "the handle is not a subscription (from SbSubscribe): it is %s",
           handle_kind(h));
    return NULL;
}

/* ---- entering and leaving a call ---- */

static void note_refusal(rpc_adapter *a, const char *who, const char *why)
{
    ULONGLONG now = GetTickCount64();
    uint64_t n;
    int log;
    uv_mutex_lock(&a->lock);
    n = ++a->refused;
    log = a->refusal_logged == 0 || now - a->refusal_logged >= REFUSAL_LOG_MS;
    if (log)
        a->refusal_logged = now;
    uv_mutex_unlock(&a->lock);
    if (log)
        sb_log(SB_LOG_WARN, a->name, "refused a call from %s: %s (%llu refused so far)", who, why,
               (unsigned long long)n);
}

/* Counts a call in on a. SB_ESHUTDOWN, SB_EBUSY (with why set) or 0. */
static int count_in(rpc_adapter *a, const char *who, SB_RPC_TEXT *why)
{
    int rc = 0;
    uv_mutex_lock(&a->lock);
    if (a->stopping)
        rc = SB_ESHUTDOWN;
    else if (a->calls >= a->set.max_calls)
        rc = SB_EBUSY;
    else
        a->calls++;
    uv_mutex_unlock(&a->lock);
    if (rc == SB_ESHUTDOWN)
        return (int)answer(why, rc, "adapter %s is stopping", a->name);
    if (rc == SB_EBUSY) {
        note_refusal(a, who, "too many calls at once (max_calls)");
        return (int)answer(why, rc, "adapter %s has %d calls in progress (max_calls); try again",
                           a->name, a->set.max_calls);
    }
    return 0;
}

static void call_leave(rpc_adapter *a)
{
    uv_mutex_lock(&a->lock);
    a->calls--;
    uv_mutex_unlock(&a->lock);
    sb_rpc__release(a);
}

/* SbOpen: finds the adapter of the call's protocol sequence, counts the
 * call in and admits the caller. On success *out is counted (call_leave
 * it). */
static int open_enter(rpc_adapter **out, rpc_caller *c, SB_RPC_TEXT *why)
{
    char text[320];
    rpc_adapter *a;
    int rc;

    *out = NULL;
    sb_rpc__caller_inspect(c);
    a = sb_rpc__find(c->tcp);
    if (a == NULL)
        return (int)answer(why, SB_ESHUTDOWN, "no rpc adapter serves %s now",
                           c->tcp ? "ncacn_ip_tcp" : "ncalrpc");
    rc = count_in(a, c->peer, why);
    if (rc != 0) {
        sb_rpc__release(a);
        return rc;
    }
    rc = sb_rpc__caller_admit(&a->set, c, text, sizeof text);
    if (rc != 0) {
        note_refusal(a, c->peer, text);
        call_leave(a);
        return (int)answer(why, rc, "%s", text);
    }
    *out = a;
    return 0;
}

/* A call on a session (admitted when it opened; the runtime keeps it to its
 * client). On success the session's adapter is counted (call_leave it). */
static int session_enter(rpc_session *ss, SB_RPC_TEXT *why)
{
    int rc;
    sb_rpc__retain(ss->a);
    rc = count_in(ss->a, ss->caller.peer, why);
    if (rc != 0)
        sb_rpc__release(ss->a);
    return rc;
}

/* A call on a subscription handle (the handle was admitted when it was
 * made, and the runtime keeps it to its client). */
static int sub_enter(rpc_sub *s, SB_RPC_TEXT *why)
{
    int rc;
    sb_rpc__retain(s->a);
    rc = count_in(s->a, s->who, why);
    if (rc != 0)
        sb_rpc__release(s->a);
    return rc;
}

/* ---- argument checks ---- */

/* 0 if s is UTF-8 text of at most max bytes; else SB_EINVAL with why set. */
static int check_text(SB_RPC_TEXT *why, const char *what, const char *s, size_t max)
{
    size_t n;
    if (s == NULL)
        return (int)answer(why, SB_EINVAL, "%s is required", what);
    n = strnlen(s, max + 1);
    if (n > max)
        return (int)answer(why, SB_EINVAL, "%s is longer than %zu bytes", what, max);
    if (!sb_utf8_valid(s, n))
        return (int)answer(why, SB_EINVAL, "%s is not valid UTF-8", what);
    return 0;
}

static int check_filter(SB_RPC_TEXT *why, const char *what, const char *f)
{
    const char *bad;
    int rc = check_text(why, what, f, SB_TOPIC_MAX);
    if (rc == 0 && sb_filter_validate(f, strlen(f), &bad) != 0)
        rc = (int)answer(why, SB_EINVAL, "%s: %s", what, bad);
    return rc;
}

/* ---- the procedures ---- */

LONG sb_rpc__SbOpen(SB_RPC_SESSION *session, LONG *flags, SB_RPC_TEXT *why)
{
    rpc_session *ss;
    rpc_caller caller;
    rpc_adapter *a;
    int rc;

    *session = NULL;
    *flags = 0;
    why->text = NULL;
    rc = open_enter(&a, &caller, why);
    if (rc != 0)
        return rc;
    ss = sb_calloc(1, sizeof(*ss));
    if (ss == NULL) {
        call_leave(a);
        return answer(why, SB_ENOMEM, "out of memory");
    }
    ss->magic = RPC_SESSION_MAGIC;
    ss->a = a;
    sb_rpc__retain(a);
    ss->caller = caller;
    *flags = (caller.admin ? SB_RPC_CALLER_ADMIN : 0) |
             (caller.anonymous ? SB_RPC_CALLER_ANONYMOUS : 0) |
             (caller.local ? SB_RPC_CALLER_LOCAL : 0);
    *session = ss;
    call_leave(a);
    return 0;
}

static void session_free(rpc_session *ss)
{
    sb_rpc__release(ss->a);
    ss->magic = 0;
    sb_free(ss);
}

LONG sb_rpc__SbClose(SB_RPC_SESSION *session)
{
    SB_RPC_TEXT why = {NULL};
    rpc_session *ss;
    if (*session == NULL)
        return 0;
    ss = as_session(*session, &why);
    MIDL_user_free(why.text); /* SbClose has no why: the code says it */
    if (ss == NULL)
        return SB_EINVAL; /* the handle stays what it was */
    session_free(ss);
    *session = NULL;
    return 0;
}

void __RPC_USER SB_RPC_SESSION_rundown(SB_RPC_SESSION session)
{
    /* The runtime runs a handle down with the routine of the procedure
     * that made it; should it ever not, a leak beats freeing a stranger. */
    if (*(const uint32_t *)session != RPC_SESSION_MAGIC) {
        sb_log(SB_LOG_ERROR, "rpc", "a session's rundown was given %s: left alone",
               handle_kind(session));
        return;
    }
    session_free(session);
}

LONG sb_rpc__SbPublish(SB_RPC_SESSION session, const char *topic, ULONG payload_size,
                       const byte *payload, ULONG header_count, const SB_RPC_HEADER *headers,
                       const SB_RPC_PUB_OPTIONS *options, MIDL_uhyper *msg_id, LONG *queues,
                       SB_RPC_TEXT *why)
{
    rpc_session *ss;
    rpc_adapter *a;
    rpc_job *j = NULL;
    sb_message *m = NULL;
    const char *bad;
    int rc;

    *msg_id = 0;
    *queues = 0;
    why->text = NULL;
    if ((ss = as_session(session, why)) == NULL)
        return SB_EINVAL;
    a = ss->a;
    rc = session_enter(ss, why);
    if (rc != 0)
        return rc;
    if ((rc = check_text(why, "topic", topic, SB_TOPIC_MAX)) != 0)
        goto done;
    if (sb_topic_validate(topic, strlen(topic), &bad) != 0) {
        rc = (int)answer(why, SB_EINVAL, "topic: %s", bad);
        goto done;
    }
    if ((int64_t)payload_size > a->set.max_message) {
        rc = (int)answer(why, SB_ETOOBIG, "payload of %lu bytes is larger than max_message (%lld)",
                         (unsigned long)payload_size, (long long)a->set.max_message);
        goto done;
    }
    if ((payload_size > 0 && payload == NULL) || (header_count > 0 && headers == NULL)) {
        rc = (int)answer(why, SB_EINVAL, "payload or headers missing for their size");
        goto done;
    }
    for (ULONG i = 0; i < header_count; i++)
        if ((rc = check_text(why, "a header key", headers[i].key, TEXT_MAX_LEN)) != 0 ||
            (rc = check_text(why, "a header value", headers[i].value, TEXT_MAX_LEN)) != 0)
            goto done;
    if (options != NULL &&
        (options->priority < 0 || options->priority > 9 || options->ttl_ms < 0)) {
        rc = (int)answer(why, SB_EINVAL, "options: priority must be 0..9 and ttl_ms >= 0");
        goto done;
    }
    m = sb_message_new(topic, payload, payload_size);
    if (m == NULL)
        goto nomem;
    for (ULONG i = 0; i < header_count; i++)
        if (sb_message_add_header(m, headers[i].key, headers[i].value) != 0)
            goto nomem;
    if (options != NULL) {
        /* A TTL beyond what an int64_t of epoch milliseconds can hold is
         * as long as it can be. */
        if (options->ttl_ms > INT64_MAX - m->created_ms)
            m->expires_ms = INT64_MAX;
        else if (options->ttl_ms > 0)
            m->expires_ms = m->created_ms + options->ttl_ms;
        m->priority = (int)options->priority;
    }
    j = sb_rpc__job_new(a, RPC_JOB_PUBLISH, &ss->caller);
    if (j == NULL)
        goto nomem;
    j->msg = m; /* the loop's once posted */
    m = NULL;
    j->retain = options != NULL && options->retain != 0;
    rc = sb_rpc__job_run(j, SB_RPC_COMMIT_WAIT_MS);
    if (rc == 0) {
        *msg_id = j->msg_id;
        *queues = j->queues;
    } else if (rc == SB_ETIMEDOUT) {
        answer(why, rc, "no commit within %d ms: the message may or may not be stored",
               SB_RPC_COMMIT_WAIT_MS);
    } else {
        answer(why, rc, "%s", job_why(j, rc));
    }
    goto done;
nomem:
    rc = (int)answer(why, SB_ENOMEM, "out of memory");
done:
    if (m != NULL)
        sb_message_unref(m);
    if (j != NULL)
        sb_rpc__job_release(j);
    call_leave(a);
    return rc;
}

LONG sb_rpc__SbSubscribe(SB_RPC_SESSION session, const char *name, const char *filter,
                         const SB_RPC_SUB_OPTIONS *options, SB_RPC_SUB *sub, SB_RPC_TEXT *filters,
                         SB_RPC_TEXT *why)
{
    rpc_session *ss;
    rpc_adapter *a;
    rpc_job *j = NULL;
    int rc;

    *sub = NULL;
    filters->text = NULL;
    why->text = NULL;
    if ((ss = as_session(session, why)) == NULL)
        return SB_EINVAL;
    a = ss->a;
    rc = session_enter(ss, why);
    if (rc != 0)
        return rc;
    if ((rc = check_text(why, "name", name, NAME_MAX_LEN)) != 0)
        goto done;
    if (name[0] == '\0') {
        rc = (int)answer(why, SB_EINVAL, "name is empty");
        goto done;
    }
    if (filter != NULL && (rc = check_filter(why, "filter", filter)) != 0)
        goto done;
    if (options != NULL) {
        const SB_RPC_SUB_OPTIONS *o = options;
        if (o->window < 0 || o->window > SB_RPC_WINDOW_MAX || o->durability < 0 ||
            o->durability > SB_RPC_DURABILITY_MEMORY || o->max_attempts < 0 || o->lease_ms < 0 ||
            o->ttl_ms < 0 || o->max_depth < 0 || o->expire_ms < 0) {
            rc = (int)answer(why, SB_EINVAL,
                             "options: window must be 0..%d, durability 0..3, the others >= 0",
                             SB_RPC_WINDOW_MAX);
            goto done;
        }
        if (o->retained != NULL && (rc = check_filter(why, "retained", o->retained)) != 0)
            goto done;
    }
    j = sb_rpc__job_new(a, RPC_JOB_SUBSCRIBE, &ss->caller);
    if (j == NULL || (j->name = sb_strdup(name)) == NULL ||
        (filter != NULL && (j->filter = sb_strdup(filter)) == NULL) ||
        (options != NULL && options->retained != NULL &&
         (j->retained = sb_strdup(options->retained)) == NULL)) {
        rc = (int)answer(why, SB_ENOMEM, "out of memory");
        goto done;
    }
    sb_sub_settings_default(&j->settings);
    j->window = SB_RPC_WINDOW_DEFAULT;
    if (options != NULL) {
        const SB_RPC_SUB_OPTIONS *o = options;
        static const sb_durability classes[] = {SB_DURABILITY_FSYNC, SB_DURABILITY_FSYNC,
                                                SB_DURABILITY_BATCHED, SB_DURABILITY_MEMORY};
        if (o->window > 0)
            j->window = (int)o->window;
        j->settings.durability = classes[o->durability];
        if (o->max_attempts > 0)
            j->settings.max_attempts = (int)o->max_attempts;
        if (o->lease_ms > 0)
            j->settings.lease_ms = o->lease_ms;
        if (o->ttl_ms > 0)
            j->settings.ttl_ms = o->ttl_ms;
        if (o->max_depth > 0)
            j->settings.max_depth = o->max_depth;
        if (o->expire_ms > 0)
            j->settings.expire_ms = o->expire_ms;
        j->settings.transient = o->transient != 0;
    }
    rc = sb_rpc__job_run(j, SB_RPC_LOOP_WAIT_MS);
    if (rc == 0) {
        *sub = j->sub; /* the handle's reference */
        j->sub = NULL;
        filters->text = sb_rpc__text(j->text);
    } else {
        answer(why, rc, "%s", job_why(j, rc));
    }
done:
    if (j != NULL)
        sb_rpc__job_release(j);
    call_leave(a);
    return rc;
}

/* Posts a READY job for s (it may take up to its credit) and waits for the
 * loop to have run it. */
static int ask_for_deliveries(rpc_sub *s)
{
    rpc_job *j = sb_rpc__job_new(s->a, RPC_JOB_READY, NULL);
    int rc;
    if (j == NULL)
        return SB_ENOMEM;
    sub_retain(s);
    j->sub = s;
    rc = sb_rpc__job_run(j, SB_RPC_LOOP_WAIT_MS);
    sb_rpc__job_release(j);
    return rc;
}

LONG sb_rpc__SbPull(SB_RPC_SUB sub, ULONG max, ULONG wait_ms, ULONG *count,
                    SB_RPC_DELIVERY **deliveries, SB_RPC_TEXT *why)
{
    rpc_sub *s;
    rpc_adapter *a;
    SB_RPC_DELIVERY *out = NULL;
    int64_t wait = wait_ms;
    ULONG n = 0;
    int rc;

    *count = 0;
    *deliveries = NULL;
    why->text = NULL;
    if ((s = as_sub(sub, why)) == NULL)
        return SB_EINVAL;
    a = s->a;
    rc = sub_enter(s, why);
    if (rc != 0)
        return rc;
    if (wait > a->set.max_wait_ms)
        wait = a->set.max_wait_ms;
    uv_mutex_lock(&a->lock);
    if (!s->closed && s->buffered == 0) {
        s->credit = (int)max;
        uv_mutex_unlock(&a->lock);
        rc = ask_for_deliveries(s);
        uv_mutex_lock(&a->lock);
        if (rc == 0 && s->buffered == 0 && wait > 0 && !s->closed && a->pulls < a->set.max_pulls) {
            uint64_t deadline = uv_hrtime() + (uint64_t)wait * 1000000u;
            a->pulls++;
            while (s->buffered == 0 && !s->closed && !a->stopping) {
                uint64_t now = uv_hrtime();
                if (now >= deadline)
                    break;
                (void)uv_cond_timedwait(&s->cond, &a->lock, deadline - now);
            }
            a->pulls--;
        }
    }
    if (s->closed) {
        rc = SB_ESHUTDOWN;
    } else if (rc == 0 && s->buffered > 0) {
        n = (ULONG)s->buffered < max ? (ULONG)s->buffered : max;
        out = MIDL_user_allocate(n * sizeof(SB_RPC_DELIVERY));
        if (out == NULL) {
            n = 0;
            rc = SB_ENOMEM;
        }
        for (ULONG i = 0; i < n; i++) {
            rpc_lease *l = s->bhead;
            s->bhead = l->bnext;
            out[i] = l->wire; /* the stub frees what it points to */
            memset(&l->wire, 0, sizeof l->wire);
            l->pulled = 1;
            s->buffered--;
        }
        if (s->bhead == NULL)
            s->btail = NULL;
    }
    s->credit = 0; /* no more until the next pull asks */
    uv_mutex_unlock(&a->lock);
    if (rc == SB_ESHUTDOWN)
        answer(why, rc,
               "the subscription was closed (the adapter stopped or was replaced by a "
               "reload): subscribe again");
    else if (rc != 0)
        answer(why, rc, "%s", sb_strerror(rc));
    *count = n;
    *deliveries = out;
    call_leave(a);
    return rc;
}

static LONG ack_or_nack(SB_RPC_SUB sub, ULONG count, const MIDL_uhyper *ids, const char *reason,
                        int ack, ULONG *done, SB_RPC_TEXT *why)
{
    rpc_sub *s;
    rpc_job *j = NULL;
    int rc;

    *done = 0;
    why->text = NULL;
    if ((s = as_sub(sub, why)) == NULL)
        return SB_EINVAL;
    rc = sub_enter(s, why);
    if (rc != 0)
        return rc;
    if (reason != NULL && (rc = check_text(why, "reason", reason, TEXT_MAX_LEN)) != 0)
        goto leave;
    j = sb_rpc__job_new(s->a, RPC_JOB_ACK, NULL);
    if (j == NULL || (j->ids = sb_malloc(count * sizeof(uint64_t))) == NULL ||
        (reason != NULL && (j->reason = sb_strdup(reason)) == NULL)) {
        rc = (int)answer(why, SB_ENOMEM, "out of memory");
        goto leave;
    }
    memcpy(j->ids, ids, count * sizeof(uint64_t));
    j->count = count;
    j->ack = ack;
    sub_retain(s);
    j->sub = s;
    rc = sb_rpc__job_run(j, SB_RPC_LOOP_WAIT_MS);
    if (j->answered)
        *done = j->done_count;
    if (rc != 0)
        answer(why, rc, "%s", job_why(j, rc));
leave:
    if (j != NULL)
        sb_rpc__job_release(j);
    call_leave(s->a);
    return rc;
}

LONG sb_rpc__SbAck(SB_RPC_SUB sub, ULONG count, const MIDL_uhyper *ids, ULONG *done,
                   SB_RPC_TEXT *why)
{
    return ack_or_nack(sub, count, ids, NULL, 1, done, why);
}

LONG sb_rpc__SbNack(SB_RPC_SUB sub, ULONG count, const MIDL_uhyper *ids, const char *reason,
                    ULONG *done, SB_RPC_TEXT *why)
{
    return ack_or_nack(sub, count, ids, reason, 0, done, why);
}

LONG sb_rpc__SbUnsubscribe(SB_RPC_SUB *sub, LONG delete_sub, SB_RPC_TEXT *why)
{
    rpc_sub *s;
    rpc_adapter *a;
    rpc_job *j;
    rpc_caller caller;
    int rc;

    why->text = NULL;
    if (*sub == NULL)
        return answer(why, SB_EINVAL, "no subscription handle");
    if ((s = as_sub(*sub, why)) == NULL)
        return SB_EINVAL; /* the handle stays what it was */
    a = s->a;
    rc = sub_enter(s, why);
    if (rc != 0)
        return rc; /* the handle stays open: try again */
    /* The client that subscribed: deleting takes its rights. */
    memset(&caller, 0, sizeof caller);
    snprintf(caller.user, sizeof caller.user, "%s", s->user);
    caller.anonymous = s->anonymous;
    caller.admin = s->admin;
    j = sb_rpc__job_new(a, RPC_JOB_CLOSE, &caller);
    if (j == NULL) {
        call_leave(a);
        return answer(why, SB_ENOMEM, "out of memory");
    }
    sub_retain(s);
    j->sub = s;
    j->delete_sub = delete_sub != 0;
    rc = sb_rpc__job_run(j, SB_RPC_LOOP_WAIT_MS);
    if (rc == SB_ESHUTDOWN && !delete_sub)
        rc = 0; /* detached already by the stop */
    if (rc != 0)
        answer(why, rc, "%s", job_why(j, rc));
    sb_rpc__job_release(j);
    *sub = NULL; /* the runtime forgets the handle: no rundown */
    sb_rpc__sub_release(s);
    call_leave(a);
    return rc;
}

void __RPC_USER SB_RPC_SUB_rundown(SB_RPC_SUB ctx)
{
    rpc_sub *s = ctx;
    rpc_job *j;
    if (s->magic != RPC_SUB_MAGIC) { /* as in SB_RPC_SESSION_rundown */
        sb_log(SB_LOG_ERROR, "rpc", "a subscription handle's rundown was given %s: left alone",
               handle_kind(ctx));
        return;
    }
    j = sb_rpc__job_new(s->a, RPC_JOB_CLOSE, NULL);
    /* The client went away: what it held comes back as a failed attempt.
     * If the adapter is stopping, the stop detached it already. */
    if (j != NULL) {
        sub_retain(s);
        j->sub = s;
        j->failed = 1;
        (void)sb_rpc__job_post(j);
    }
    sb_rpc__sub_release(s); /* the handle's */
}

LONG sb_rpc__SbStats(SB_RPC_SESSION session, SB_RPC_TEXT *json, SB_RPC_TEXT *why)
{
    rpc_session *ss;
    rpc_adapter *a;
    rpc_job *j;
    int rc;

    json->text = NULL;
    why->text = NULL;
    if ((ss = as_session(session, why)) == NULL)
        return SB_EINVAL;
    a = ss->a;
    rc = session_enter(ss, why);
    if (rc != 0)
        return rc;
    j = sb_rpc__job_new(a, RPC_JOB_STATS, &ss->caller);
    if (j == NULL) {
        rc = (int)answer(why, SB_ENOMEM, "out of memory");
    } else {
        rc = sb_rpc__job_run(j, SB_RPC_LOOP_WAIT_MS);
        if (rc == 0)
            json->text = sb_rpc__text(j->text);
        else
            answer(why, rc, "%s", job_why(j, rc));
        sb_rpc__job_release(j);
    }
    call_leave(a);
    return rc;
}

/* The dead-letter procedures: administrators only. */
static int dlq_call(rpc_job_kind kind, SB_RPC_SESSION session, const char *sub, int64_t after,
                    ULONG limit, rpc_job **out, SB_RPC_TEXT *why)
{
    const rpc_caller *caller;
    rpc_session *ss;
    rpc_adapter *a;
    rpc_job *j;
    int rc;

    *out = NULL;
    if ((ss = as_session(session, why)) == NULL)
        return SB_EINVAL;
    caller = &ss->caller;
    a = ss->a;
    rc = session_enter(ss, why);
    if (rc != 0)
        return rc;
    if (!caller->admin) {
        rc = (int)answer(why, SB_EACCES,
                         "dead-letter operations are for SYSTEM and Administrators (an elevated "
                         "token); %s is not",
                         caller->anonymous ? "an anonymous caller" : caller->user);
        goto leave;
    }
    if (sub != NULL && (rc = check_text(why, "sub", sub, NAME_MAX_LEN)) != 0)
        goto leave;
    j = sb_rpc__job_new(a, kind, caller);
    if (j == NULL || (sub != NULL && (j->name = sb_strdup(sub)) == NULL)) {
        if (j != NULL)
            sb_rpc__job_release(j);
        rc = (int)answer(why, SB_ENOMEM, "out of memory");
        goto leave;
    }
    j->after = after;
    j->limit = limit > 0 ? (int)limit : 100;
    rc = sb_rpc__job_run(j, SB_RPC_LOOP_WAIT_MS);
    if (rc != 0)
        answer(why, rc, "%s", job_why(j, rc));
    *out = j;
leave:
    call_leave(a);
    return rc;
}

LONG sb_rpc__SbDlqList(SB_RPC_SESSION session, const char *sub, hyper after, ULONG limit,
                       ULONG *count, SB_RPC_DEAD_LETTER **items, hyper *next, SB_RPC_TEXT *why)
{
    rpc_job *j;
    int rc;
    *count = 0;
    *items = NULL;
    *next = 0;
    why->text = NULL;
    rc = dlq_call(RPC_JOB_DLQ_LIST, session, sub, after, limit, &j, why);
    if (rc == 0) {
        *count = j->nitems;
        *items = j->items; /* the stub frees them */
        *next = j->next;
        j->items = NULL;
        j->nitems = 0;
    }
    if (j != NULL)
        sb_rpc__job_release(j);
    return rc;
}

LONG sb_rpc__SbDlqRedrive(SB_RPC_SESSION session, const char *sub, hyper *count, SB_RPC_TEXT *why)
{
    rpc_job *j;
    int rc;
    *count = 0;
    why->text = NULL;
    rc = dlq_call(RPC_JOB_DLQ_REDRIVE, session, sub, 0, 0, &j, why);
    if (rc == 0)
        *count = j->total;
    if (j != NULL)
        sb_rpc__job_release(j);
    return rc;
}

LONG sb_rpc__SbDlqPurge(SB_RPC_SESSION session, const char *sub, hyper *count, SB_RPC_TEXT *why)
{
    rpc_job *j;
    int rc;
    *count = 0;
    why->text = NULL;
    rc = dlq_call(RPC_JOB_DLQ_PURGE, session, sub, 0, 0, &j, why);
    if (rc == 0)
        *count = j->total;
    if (j != NULL)
        sb_rpc__job_release(j);
    return rc;
}

LONG sb_rpc__SbWhoAmI(SB_RPC_SESSION session, SB_RPC_TEXT *user, LONG *flags, SB_RPC_TEXT *why)
{
    rpc_session *ss;
    const rpc_caller *c;
    int rc;

    user->text = NULL;
    *flags = 0;
    why->text = NULL;
    if ((ss = as_session(session, why)) == NULL)
        return SB_EINVAL;
    c = &ss->caller;
    rc = session_enter(ss, why);
    if (rc != 0)
        return rc;
    if (!c->anonymous)
        user->text = sb_rpc__text(c->user);
    *flags = (c->admin ? SB_RPC_CALLER_ADMIN : 0) | (c->anonymous ? SB_RPC_CALLER_ANONYMOUS : 0) |
             (c->local ? SB_RPC_CALLER_LOCAL : 0);
    call_leave(ss->a);
    return 0;
}
