/*
 * The Subscription object (com_int.h, docs/com.md): a jsonl consumer of a
 * durable subscription with a bounded buffer (its window, `Buffer`),
 * emptied by Pull/Wait or by OnMessage events.
 *
 * Attached or not. The broker offers a consumer up to its window of
 * messages, and each one's lease (the ack timeout, 30 s by default) runs
 * from that moment; a message that sat here unpulled past it would count
 * as a failed attempt. So the consumer is attached only while it is used:
 * from Subscribe, while a Pull or Wait waits, while an event sink is
 * advised, while taken messages are unacknowledged, and for SB_COM_HOLD_MS
 * after the last call. Then it detaches (an orderly unsub), and what it
 * held returns to the queue without counting. The next Pull attaches
 * again.
 *
 * Taken messages ("held": handed to the client by Pull, Wait or an event
 * call) are acknowledged by Ack/Nack, or after an event by the handler's
 * result. A held message whose connection to the broker was lost is gone
 * from here: the broker gives it to a consumer again.
 *
 * Events: Advise starts a thread that calls the sink's OnMessage for each
 * message in order and acks (S_OK) or nacks (an error: the route retries
 * it) on return. A call that does not return within EventTimeout is
 * nacked by the housekeeping tick and the sink is dropped (its thread is
 * blocked in the call; it exits when the call returns): a hung handler can
 * take no more events, and the subscription's messages go to its other
 * consumers or wait in the queue.
 */
#include "adapters/com/win/com_int.h"

#include "service/alloc.h"
#include "tools/client/client.h"

#include <stdio.h>
#include <string.h>

typedef struct held {
    uint64_t id, gen;
} held;

/* A worker's call: who ends it first, the call returning or the tick
 * giving up on it (compare-and-swap from CALLING). */
enum { W_IDLE, W_CALLING, W_ABANDONED };

typedef struct worker {
    sb_com_sub *s;
    IDispatch *sink;
    DWORD cookie;
    int stop;      /* under s->cs */
    LONG state;    /* W_*: an abandoned worker never touches s again */
    sb_com_msg *call; /* under s->cs: the message of the call in progress */
    int64_t deadline;
} worker;

struct sb_com_sub {
    ISubscription iface;
    IConnectionPointContainer cpc;
    IConnectionPoint cp;
    ISupportErrorInfo sei;
    IProvideClassInfo2 pci;
    LONG refs;
    sb_com_obj obj;
    sb_com_link *link;
    CRITICAL_SECTION cs;
    CONDITION_VARIABLE cv;
    char *name, *filter;
    long timeout_ms; /* calls to the broker (the Broker's Timeout) */
    /* ---- under cs ---- */
    int closed;
    uint64_t gen;  /* the connection it is attached on, 0: detached */
    int attaching; /* a sub request is out */
    int unsubbing; /* unsub requests out on the current connection */
    int wanted;    /* counted in sb_com__link_want */
    long buffer, event_timeout_ms;
    sb_com_msg *head, *tail; /* taken from the broker, not handed out */
    long queued;
    held *held;
    size_t nheld, held_cap;
    int pulling;
    int64_t idle_since;
    worker *w;
    DWORD last_cookie;
    sb_error attach_err; /* why the last attach failed */
    int attach_failed;
};

#define SUB_FROM(p, m) ((sb_com_sub *)((char *)(p) - offsetof(sb_com_sub, m)))

const char *sb_com__sub_name(const sb_com_sub *s)
{
    return s->name;
}

int sb_com__sub_try_ref(sb_com_sub *s)
{
    LONG n = s->refs;
    while (n > 0) {
        LONG seen = InterlockedCompareExchange(&s->refs, n + 1, n);
        if (seen == n)
            return 1;
        n = seen;
    }
    return 0;
}

void sb_com__sub_unref(sb_com_sub *s)
{
    ISubscription_Release(&s->iface);
}

/* ---- helpers (cs held unless said) ---- */

static void update_want(sb_com_sub *s)
{
    int want = !s->closed && (s->w != NULL || s->pulling > 0);
    if (want != s->wanted) {
        s->wanted = want;
        sb_com__link_want(s->link, want);
    }
}

static void drop_queued(sb_com_sub *s)
{
    while (s->head != NULL) {
        sb_com_msg *m = s->head;
        s->head = m->next;
        sb_com__msg_unref(m);
    }
    s->tail = NULL;
    s->queued = 0;
}

static void held_add(sb_com_sub *s, const sb_com_msg *m)
{
    if (s->nheld == s->held_cap) {
        size_t cap = s->held_cap == 0 ? 8 : s->held_cap * 2;
        held *n = sb_realloc(s->held, cap * sizeof(*n));
        if (n == NULL)
            return; /* the ack then fails; the lease brings it back */
        s->held = n;
        s->held_cap = cap;
    }
    s->held[s->nheld].id = m->id;
    s->held[s->nheld].gen = m->gen;
    s->nheld++;
}

/* Takes id off the held list; returns its connection, or 0 if not held. */
static uint64_t held_take(sb_com_sub *s, uint64_t id)
{
    for (size_t i = 0; i < s->nheld; i++)
        if (s->held[i].id == id) {
            uint64_t gen = s->held[i].gen;
            s->held[i] = s->held[--s->nheld];
            return gen;
        }
    return 0;
}

static void schedule_idle(sb_com_sub *s)
{
    if (s->gen != 0 && s->w == NULL && s->pulling == 0 && s->nheld == 0)
        sb_com__link_tick_at(s->link, s->idle_since + SB_COM_HOLD_MS);
}

static json_t *ack_req(const sb_com_sub *s, uint64_t id, int ack, const char *reason)
{
    json_t *o = json_pack("{s:s, s:s, s:I}", "op", ack ? "ack" : "nack", "sub", s->name, "msg_id",
                          (json_int_t)id);
    if (o != NULL && !ack)
        json_object_set_new(o, "reason", json_string(reason != NULL ? reason : "nack"));
    return o;
}

/* Acks or nacks without waiting (outside cs). */
static void post_ack(sb_com_sub *s, uint64_t gen, uint64_t id, int ack, const char *reason)
{
    json_t *req = ack_req(s, id, ack, reason);
    sb_error err;
    if (req != NULL)
        (void)sb_com__link_post(s->link, gen, req, NULL, NULL, &err); /* a lost connection: redelivered */
    json_decref(req);
}

static void on_unsub_reply(void *ctx, json_t *reply, const sb_error *err)
{
    sb_com_sub *s = ctx;
    if (reply != NULL) {
        EnterCriticalSection(&s->cs);
        if (s->unsubbing > 0)
            s->unsubbing--;
        LeaveCriticalSection(&s->cs);
    }
    sb_com__sub_unref(s);
}

/* Detaches (cs held; releases and retakes it to send). With `final` (the
 * object is being freed) the reply is not waited for. */
static void detach_locked(sb_com_sub *s, int delete_it, int final)
{
    uint64_t gen = s->gen;
    json_t *req;
    sb_error err;
    if (gen == 0)
        return;
    s->gen = 0;
    drop_queued(s);
    req = json_pack("{s:s, s:s}", "op", "unsub", "sub", s->name);
    if (req == NULL)
        return;
    if (delete_it)
        json_object_set_new(req, "delete", json_true());
    if (final) {
        LeaveCriticalSection(&s->cs);
        (void)sb_com__link_post(s->link, gen, req, NULL, NULL, &err);
        json_decref(req);
        EnterCriticalSection(&s->cs);
        return;
    }
    s->unsubbing++;
    ISubscription_AddRef(&s->iface);
    LeaveCriticalSection(&s->cs);
    if (sb_com__link_post(s->link, gen, req, on_unsub_reply, s, &err) != 0) {
        EnterCriticalSection(&s->cs);
        if (s->unsubbing > 0)
            s->unsubbing--;
        LeaveCriticalSection(&s->cs);
        sb_com__sub_unref(s);
    }
    json_decref(req);
    EnterCriticalSection(&s->cs);
}

static json_t *sub_req(sb_com_sub *s, const char *filter)
{
    json_t *o = json_pack("{s:s, s:s, s:i}", "op", "sub", "sub", s->name, "window", (int)s->buffer);
    if (o != NULL && filter != NULL)
        json_object_set_new(o, "filter", json_string(filter));
    return o;
}

/* ---- attaching ---- */

static void on_attached(void *ctx, json_t *reply, const sb_error *err)
{
    sb_com_sub *s = ctx;
    const char *op = reply != NULL ? json_string_value(json_object_get(reply, "op")) : NULL;
    EnterCriticalSection(&s->cs);
    s->attaching = 0;
    if (op != NULL && strcmp(op, "subscribed") == 0) {
        s->attach_failed = 0;
        /* on_msg may have adopted the connection already */
    } else {
        s->gen = 0;
        s->attach_failed = 1;
        if (reply != NULL) {
            sb_error e;
            sb_client_reply_error(reply, &e);
            s->attach_err = e;
        } else if (err != NULL) {
            s->attach_err = *err;
        }
    }
    WakeAllConditionVariable(&s->cv);
    LeaveCriticalSection(&s->cs);
    sb_com__sub_unref(s);
}

/* Attaches on the current connection without waiting (cs held). */
static void attach_async(sb_com_sub *s)
{
    uint64_t gen = sb_com__link_gen(s->link);
    json_t *req;
    sb_error err;
    if (gen == 0 || s->gen != 0 || s->attaching || s->closed)
        return;
    req = sub_req(s, NULL);
    if (req == NULL)
        return;
    s->attaching = 1;
    s->gen = gen;
    ISubscription_AddRef(&s->iface);
    LeaveCriticalSection(&s->cs);
    if (sb_com__link_post(s->link, gen, req, on_attached, s, &err) != 0) {
        EnterCriticalSection(&s->cs);
        s->attaching = 0;
        s->gen = 0;
        LeaveCriticalSection(&s->cs);
        sb_com__sub_unref(s);
    }
    json_decref(req);
    EnterCriticalSection(&s->cs);
}

/* Attaches and waits for the answer (cs held; released while waiting).
 * Returns 0, or an SB_E* code with err set. */
static int attach_sync(sb_com_sub *s, const char *filter, sb_error *err)
{
    json_t *req, *reply = NULL;
    uint64_t gen = 0;
    int rc;

    while (s->attaching) /* an attach on its way: wait for it */
        SleepConditionVariableCS(&s->cv, &s->cs, INFINITE);
    if (s->gen != 0)
        return 0;
    if (s->closed)
        return sb_error_set(err, SB_ECLOSED, 0, "the subscription was closed");
    req = sub_req(s, filter);
    if (req == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    s->attaching = 1;
    LeaveCriticalSection(&s->cs);
    rc = sb_com__link_request(s->link, req, (int)s->timeout_ms, &reply, &gen, err);
    json_decref(req);
    EnterCriticalSection(&s->cs);
    s->attaching = 0;
    if (rc == 0) {
        const char *f = json_string_value(json_object_get(reply, "filter"));
        if (s->gen == 0)
            s->gen = gen;
        if (f != NULL && s->filter == NULL)
            s->filter = sb_strdup(f);
        s->attach_failed = 0;
    } else {
        s->gen = 0;
    }
    WakeAllConditionVariable(&s->cv);
    json_decref(reply);
    return rc;
}

/* ---- from the link's reader ---- */

void sb_com__sub_on_msg(sb_com_sub *s, sb_com_msg *m)
{
    EnterCriticalSection(&s->cs);
    if (s->gen == 0 && s->attaching && s->unsubbing == 0)
        s->gen = m->gen; /* the reply to our sub came just before */
    if (s->closed || s->unsubbing > 0 || s->gen != m->gen) {
        LeaveCriticalSection(&s->cs);
        sb_com__msg_unref(m); /* given back by the unsub on its way */
        return;
    }
    if (s->tail != NULL)
        s->tail->next = m;
    else
        s->head = m;
    s->tail = m;
    s->queued++;
    WakeAllConditionVariable(&s->cv);
    LeaveCriticalSection(&s->cs);
}

void sb_com__sub_on_link(sb_com_sub *s, uint64_t gen)
{
    EnterCriticalSection(&s->cs);
    if (gen == 0) {
        /* The broker gave back everything this connection held. */
        s->gen = 0;
        s->attaching = 0;
        s->unsubbing = 0;
        drop_queued(s);
        WakeAllConditionVariable(&s->cv);
    } else if (s->wanted && s->gen == 0) {
        attach_async(s);
    }
    LeaveCriticalSection(&s->cs);
}

void sb_com__sub_tick(sb_com_sub *s, int64_t now)
{
    worker *w;
    sb_com_msg *late = NULL;
    long limit = 0;

    EnterCriticalSection(&s->cs);
    w = s->w;
    if (w != NULL && w->call != NULL) {
        if (now >= w->deadline) {
            sb_com_msg *m = sb_com__msg_ref(w->call);
            /* w is the worker's from here on: it frees itself */
            if (InterlockedCompareExchange(&w->state, W_ABANDONED, W_CALLING) == W_CALLING) {
                late = m;
                limit = s->event_timeout_ms;
                s->w = NULL;
                held_take(s, late->id);
                s->idle_since = now;
                update_want(s);
                WakeAllConditionVariable(&s->cv);
            } else {
                sb_com__msg_unref(m); /* it returned just now */
            }
        } else {
            sb_com__link_tick_at(s->link, w->deadline);
        }
    }
    if (s->gen != 0 && !s->attaching && s->w == NULL && s->pulling == 0 && s->nheld == 0) {
        if (now - s->idle_since >= SB_COM_HOLD_MS)
            detach_locked(s, 0, 0);
        else
            sb_com__link_tick_at(s->link, s->idle_since + SB_COM_HOLD_MS);
    }
    LeaveCriticalSection(&s->cs);
    if (late != NULL) {
        char why[128];
        snprintf(why, sizeof why, "OnMessage did not return within %ld ms", limit);
        sb_com__log("subscription %s: %s; the sink is dropped", s->name, why);
        post_ack(s, late->gen, late->id, 0, why);
        sb_com__msg_unref(late);
        /* The worker's reference: the blocked thread no longer keeps the
         * subscription (nor the relay process) alive. */
        sb_com__sub_unref(s);
    }
}

/* The client process exited (com_server.c): what it took fails, the rest
 * goes back. */
static void sub_client_gone(sb_com_obj *o)
{
    sb_com_sub *s = SUB_FROM(o, obj);
    held *hs;
    size_t n;
    char why[96];

    EnterCriticalSection(&s->cs);
    s->closed = 1;
    if (s->w != NULL) {
        s->w->stop = 1;
        s->w = NULL;
    }
    hs = s->held;
    n = s->nheld;
    s->held = NULL;
    s->nheld = s->held_cap = 0;
    update_want(s);
    WakeAllConditionVariable(&s->cv);
    LeaveCriticalSection(&s->cs);
    snprintf(why, sizeof why, "the COM client (process %lu) exited", (unsigned long)o->pid);
    for (size_t i = 0; i < n; i++)
        post_ack(s, hs[i].gen, hs[i].id, 0, why);
    sb_free(hs);
    EnterCriticalSection(&s->cs);
    detach_locked(s, 0, 0);
    LeaveCriticalSection(&s->cs);
}

/* ---- the event thread ---- */

static int client_gone_hr(HRESULT hr)
{
    return hr == RPC_E_DISCONNECTED || hr == RPC_E_SERVER_DIED || hr == RPC_E_SERVER_DIED_DNE ||
           hr == HRESULT_FROM_WIN32(RPC_S_SERVER_UNAVAILABLE) ||
           hr == HRESULT_FROM_WIN32(RPC_S_CALL_FAILED) || hr == CO_E_OBJNOTCONNECTED ||
           hr == RPC_E_CALL_REJECTED;
}

static HRESULT raise_event(worker *w, sb_com_msg *m, char *why, size_t why_n)
{
    VARIANT args[4], result;
    DISPPARAMS dp = {args, NULL, 4, 0};
    EXCEPINFO ei;
    UINT argerr = 0;
    HRESULT hr;

    memset(&ei, 0, sizeof ei);
    VariantInit(&result);
    /* arguments in reverse: attempt, id, payload, topic */
    V_VT(&args[0]) = VT_I4;
    V_I4(&args[0]) = m->attempt;
    V_VT(&args[1]) = VT_R8;
    V_R8(&args[1]) = (double)m->id;
    if (FAILED(sb_com__payload_out(m->payload, m->payload_len, 0, &args[2]))) {
        snprintf(why, why_n, "out of memory in the COM server");
        return E_OUTOFMEMORY;
    }
    V_VT(&args[3]) = VT_BSTR;
    V_BSTR(&args[3]) = sb_com__utf8_bstr(m->topic, strlen(m->topic));
    hr = IDispatch_Invoke(w->sink, 1, &IID_NULL, LOCALE_USER_DEFAULT, DISPATCH_METHOD, &dp,
                          &result, &ei, &argerr);
    if (hr == DISP_E_EXCEPTION && ei.pfnDeferredFillIn != NULL)
        ei.pfnDeferredFillIn(&ei);
    if (FAILED(hr)) {
        if (ei.bstrDescription != NULL && SysStringLen(ei.bstrDescription) > 0) {
            char *d = NULL;
            sb_com__bstr_utf8(ei.bstrDescription, &d, NULL);
            snprintf(why, why_n, "OnMessage failed: %s", d != NULL ? d : "(no description)");
            sb_free(d);
        } else {
            snprintf(why, why_n, "OnMessage failed (0x%08lx)",
                     (unsigned long)(hr == DISP_E_EXCEPTION && ei.scode != 0 ? ei.scode : hr));
        }
    }
    SysFreeString(ei.bstrSource);
    SysFreeString(ei.bstrDescription);
    SysFreeString(ei.bstrHelpFile);
    VariantClear(&result);
    VariantClear(&args[2]);
    VariantClear(&args[3]);
    return hr;
}

static DWORD WINAPI worker_main(void *arg)
{
    worker *w = arg;
    sb_com_sub *s = w->s;

    CoInitializeEx(NULL, COINIT_MULTITHREADED);
    EnterCriticalSection(&s->cs);
    while (!w->stop) {
        sb_com_msg *m;
        HRESULT hr;
        char why[600] = "";
        int gone;

        if (s->head == NULL) {
            SleepConditionVariableCS(&s->cv, &s->cs, INFINITE);
            continue;
        }
        m = s->head;
        s->head = m->next;
        if (s->head == NULL)
            s->tail = NULL;
        s->queued--;
        m->next = NULL;
        held_add(s, m);
        w->call = m;
        w->deadline = sb_com_now_ms() + s->event_timeout_ms;
        InterlockedExchange(&w->state, W_CALLING);
        LeaveCriticalSection(&s->cs);
        sb_com__link_tick_at(s->link, w->deadline);

        hr = raise_event(w, m, why, sizeof why);

        if (InterlockedCompareExchange(&w->state, W_IDLE, W_CALLING) != W_CALLING) {
            /* The tick nacked it, dropped this sink and took over this
             * worker's reference on s: s is not ours to touch. */
            sb_com__msg_unref(m);
            IDispatch_Release(w->sink);
            sb_free(w);
            CoUninitialize();
            return 0;
        }
        EnterCriticalSection(&s->cs);
        w->call = NULL;
        held_take(s, m->id);
        s->idle_since = sb_com_now_ms();
        gone = client_gone_hr(hr);
        if (gone) {
            w->stop = 1;
            if (s->w == w)
                s->w = NULL;
            update_want(s);
            snprintf(why, sizeof why, "the subscriber's event sink is gone (0x%08lx)",
                     (unsigned long)hr);
        }
        schedule_idle(s);
        LeaveCriticalSection(&s->cs);
        post_ack(s, m->gen, m->id, SUCCEEDED(hr), why);
        sb_com__msg_unref(m);
        EnterCriticalSection(&s->cs);
    }
    LeaveCriticalSection(&s->cs);
    IDispatch_Release(w->sink);
    sb_free(w);
    sb_com__sub_unref(s);
    CoUninitialize();
    return 0;
}

/* ---- ISubscription ---- */

static sb_com_sub *impl(ISubscription *i)
{
    return (sb_com_sub *)i;
}

static HRESULT WINAPI s_query(ISubscription *i, REFIID iid, void **out)
{
    sb_com_sub *s = impl(i);
    if (IsEqualIID(iid, &IID_IUnknown) || IsEqualIID(iid, &IID_IDispatch) ||
        IsEqualIID(iid, &IID_ISubscription))
        *out = &s->iface;
    else if (IsEqualIID(iid, &IID_IConnectionPointContainer))
        *out = &s->cpc;
    else if (IsEqualIID(iid, &IID_ISupportErrorInfo))
        *out = &s->sei;
    else if (IsEqualIID(iid, &IID_IProvideClassInfo) || IsEqualIID(iid, &IID_IProvideClassInfo2))
        *out = &s->pci;
    else {
        *out = NULL;
        return E_NOINTERFACE;
    }
    ISubscription_AddRef(i);
    return S_OK;
}

static ULONG WINAPI s_addref(ISubscription *i)
{
    return (ULONG)InterlockedIncrement(&impl(i)->refs);
}

static ULONG WINAPI s_release(ISubscription *i)
{
    sb_com_sub *s = impl(i);
    LONG n = InterlockedDecrement(&s->refs);
    if (n != 0)
        return (ULONG)n;
    sb_com__link_remove_sub(s->link, s);
    EnterCriticalSection(&s->cs);
    s->closed = 1;
    update_want(s);
    detach_locked(s, 0, 1); /* what the client took and did not ack goes back */
    LeaveCriticalSection(&s->cs);
    drop_queued(s);
    sb_free(s->held);
    sb_free(s->name);
    sb_free(s->filter);
    sb_com__link_stop(s->link); /* after the unsub: a closed connection would count an attempt */
    DeleteCriticalSection(&s->cs);
    sb_com__server_untrack(&s->obj); /* last: the process may end now */
    sb_free(s);
    return 0;
}

static HRESULT WINAPI s_typeinfo_count(ISubscription *i, UINT *n)
{
    *n = 1;
    return S_OK;
}

static HRESULT WINAPI s_typeinfo(ISubscription *i, UINT index, LCID lcid, ITypeInfo **out)
{
    ITypeInfo *ti = sb_com__typeinfo(&IID_ISubscription);
    if (index != 0 || ti == NULL)
        return DISP_E_BADINDEX;
    ITypeInfo_AddRef(ti);
    *out = ti;
    return S_OK;
}

static HRESULT WINAPI s_ids(ISubscription *i, REFIID iid, LPOLESTR *names, UINT n, LCID lcid,
                            DISPID *ids)
{
    return DispGetIDsOfNames(sb_com__typeinfo(&IID_ISubscription), names, n, ids);
}

static HRESULT WINAPI s_invoke(ISubscription *i, DISPID id, REFIID iid, LCID lcid, WORD flags,
                               DISPPARAMS *params, VARIANT *result, EXCEPINFO *ei, UINT *argerr)
{
    return DispInvoke(i, sb_com__typeinfo(&IID_ISubscription), id, flags, params, result, ei, argerr);
}

static HRESULT WINAPI s_name(ISubscription *i, BSTR *out)
{
    *out = sb_com__utf8_bstr(impl(i)->name, strlen(impl(i)->name));
    return *out != NULL ? S_OK : E_OUTOFMEMORY;
}

static HRESULT WINAPI s_filter(ISubscription *i, BSTR *out)
{
    sb_com_sub *s = impl(i);
    EnterCriticalSection(&s->cs);
    *out = s->filter != NULL ? sb_com__utf8_bstr(s->filter, strlen(s->filter)) : SysAllocString(L"");
    LeaveCriticalSection(&s->cs);
    return *out != NULL ? S_OK : E_OUTOFMEMORY;
}

#define SUB_FAIL(hr, ...) sb_com__fail(hr, &IID_ISubscription, "Subscription", __VA_ARGS__)

/* Takes up to max messages, waiting up to wait_ms for the first. */
static HRESULT take(sb_com_sub *s, long max, long wait_ms, const char *what, sb_com_msg **out,
                    long *out_n)
{
    int64_t deadline = sb_com_now_ms() + wait_ms;
    HRESULT hr = S_OK;
    sb_error err;
    long n = 0;

    EnterCriticalSection(&s->cs);
    s->pulling++;
    update_want(s);
    for (;;) {
        int64_t left;
        if (s->closed) {
            hr = SUB_FAIL(sb_com_hresult(SB_ECLOSED), "%s: the subscription %s was closed", what,
                          s->name);
            break;
        }
        if (s->head != NULL) {
            while (s->head != NULL && n < max) {
                sb_com_msg *m = s->head;
                s->head = m->next;
                if (s->head == NULL)
                    s->tail = NULL;
                s->queued--;
                m->next = NULL;
                held_add(s, m);
                out[n++] = m;
            }
            break;
        }
        if (s->gen == 0 && attach_sync(s, NULL, &err) != 0) {
            hr = SUB_FAIL(sb_com_hresult(err.code), "%s %s: %s", what, s->name, err.msg);
            break;
        }
        if (s->head != NULL)
            continue;
        left = deadline - sb_com_now_ms();
        if (left <= 0)
            break;
        SleepConditionVariableCS(&s->cv, &s->cs, (DWORD)left);
    }
    s->pulling--;
    s->idle_since = sb_com_now_ms();
    update_want(s);
    schedule_idle(s);
    LeaveCriticalSection(&s->cs);
    *out_n = n;
    return hr;
}

static HRESULT WINAPI s_pull(ISubscription *i, VARIANT vmax, VARIANT vwait, VARIANT *out)
{
    sb_com_sub *s = impl(i);
    char why[200];
    long max, wait_ms, n = 0;
    sb_com_msg **got;
    SAFEARRAY *sa;
    HRESULT hr;
    DWORD pid = sb_com__caller_pid();

    VariantInit(out);
    if (FAILED(hr = sb_com__long_in(&vmax, 1, &max, why, sizeof why)))
        return SUB_FAIL(hr, "Pull: max: %s", why);
    if (FAILED(hr = sb_com__long_in(&vwait, 0, &wait_ms, why, sizeof why)))
        return SUB_FAIL(hr, "Pull: wait_ms: %s", why);
    if (max < 1 || max > SB_COM_MAX_BUFFER)
        return SUB_FAIL(E_INVALIDARG, "Pull: max must be 1..%d, not %ld", SB_COM_MAX_BUFFER, max);
    if (wait_ms < 0)
        return SUB_FAIL(E_INVALIDARG, "Pull: wait_ms must be 0 or more, not %ld", wait_ms);
    got = sb_malloc((size_t)max * sizeof(*got));
    if (got == NULL)
        return E_OUTOFMEMORY;
    hr = take(s, max, wait_ms, "Pull", got, &n);
    if (FAILED(hr)) {
        sb_free(got);
        return hr;
    }
    sa = SafeArrayCreateVector(VT_VARIANT, 0, (ULONG)n);
    for (long k = 0; k < n; k++) {
        IMessage *m = NULL;
        if (sa != NULL && SUCCEEDED(sb_com__message_new(got[k], pid, &m))) {
            VARIANT v;
            V_VT(&v) = VT_DISPATCH;
            V_DISPATCH(&v) = (IDispatch *)m;
            SafeArrayPutElement(sa, &k, &v);
            IMessage_Release(m);
        }
        sb_com__msg_unref(got[k]);
    }
    sb_free(got);
    if (sa == NULL)
        return E_OUTOFMEMORY; /* the messages taken come back by their lease */
    V_VT(out) = VT_ARRAY | VT_VARIANT;
    V_ARRAY(out) = sa;
    return S_OK;
}

static HRESULT WINAPI s_wait(ISubscription *i, VARIANT vwait, IMessage **out)
{
    sb_com_sub *s = impl(i);
    char why[200];
    long wait_ms, n = 0;
    sb_com_msg *m = NULL;
    HRESULT hr;

    *out = NULL;
    if (FAILED(hr = sb_com__long_in(&vwait, 0, &wait_ms, why, sizeof why)))
        return SUB_FAIL(hr, "Wait: wait_ms: %s", why);
    if (wait_ms < 0)
        return SUB_FAIL(E_INVALIDARG, "Wait: wait_ms must be 0 or more, not %ld", wait_ms);
    hr = take(s, 1, wait_ms, "Wait", &m, &n);
    if (FAILED(hr) || n == 0)
        return hr;
    hr = sb_com__message_new(m, sb_com__caller_pid(), out);
    sb_com__msg_unref(m);
    return hr;
}

static HRESULT ack_or_nack(sb_com_sub *s, const VARIANT *vid, int ack, const char *reason)
{
    const char *what = ack ? "Ack" : "Nack";
    char why[200];
    uint64_t id, gen;
    json_t *req, *reply = NULL;
    sb_error err;
    HRESULT hr;
    int rc;

    if (FAILED(hr = sb_com__id_in(vid, &id, why, sizeof why)))
        return SUB_FAIL(hr, "%s: %s", what, why);
    EnterCriticalSection(&s->cs);
    gen = held_take(s, id);
    s->idle_since = sb_com_now_ms();
    schedule_idle(s);
    LeaveCriticalSection(&s->cs);
    if (gen == 0)
        return SUB_FAIL(sb_com_hresult(SB_ENOTFOUND),
                        "%s: message %llu is not held by subscription %s (acknowledged already, "
                        "or never taken from it)",
                        what, (unsigned long long)id, s->name);
    if (gen != sb_com__link_gen(s->link))
        return SUB_FAIL(sb_com_hresult(SB_ECLOSED),
                        "%s: the connection to the broker was lost after message %llu was taken; "
                        "the broker delivers it again",
                        what, (unsigned long long)id);
    req = ack_req(s, id, ack, reason);
    if (req == NULL)
        return E_OUTOFMEMORY;
    rc = sb_com__link_request(s->link, req, (int)s->timeout_ms, &reply, NULL, &err);
    json_decref(req);
    json_decref(reply);
    if (rc != 0)
        return SUB_FAIL(sb_com_hresult(rc), "%s %llu: %s", what, (unsigned long long)id, err.msg);
    return S_OK;
}

static HRESULT WINAPI s_ack(ISubscription *i, VARIANT id)
{
    return ack_or_nack(impl(i), &id, 1, NULL);
}

static HRESULT WINAPI s_nack(ISubscription *i, VARIANT id, VARIANT vreason)
{
    sb_com_sub *s = impl(i);
    VARIANT r;
    char *reason = NULL;
    HRESULT hr;
    VariantInit(&r);
    if (!sb_com__var_missing(&vreason)) {
        VARIANT d;
        VariantInit(&d);
        if (FAILED(VariantCopyInd(&d, &vreason)) ||
            FAILED(VariantChangeTypeEx(&r, &d, LOCALE_INVARIANT, 0, VT_BSTR)) ||
            sb_com__bstr_utf8(V_BSTR(&r), &reason, NULL) != 0) {
            VariantClear(&d);
            VariantClear(&r);
            return SUB_FAIL(DISP_E_TYPEMISMATCH, "Nack: reason must be text");
        }
        VariantClear(&d);
    }
    hr = ack_or_nack(s, &id, 0, reason != NULL && reason[0] != '\0' ? reason : "nack from COM");
    sb_free(reason);
    VariantClear(&r);
    return hr;
}

static HRESULT WINAPI s_get_buffer(ISubscription *i, long *out)
{
    sb_com_sub *s = impl(i);
    EnterCriticalSection(&s->cs);
    *out = s->buffer;
    LeaveCriticalSection(&s->cs);
    return S_OK;
}

static HRESULT WINAPI s_put_buffer(ISubscription *i, long n)
{
    sb_com_sub *s = impl(i);
    if (n < 1 || n > SB_COM_MAX_BUFFER)
        return SUB_FAIL(E_INVALIDARG, "Buffer must be 1..%d, not %ld", SB_COM_MAX_BUFFER, n);
    EnterCriticalSection(&s->cs);
    if (n != s->buffer) {
        s->buffer = n;
        /* The window is fixed per attach: attach again now if nothing is
         * taken or held (else at the next attach). */
        if (s->gen != 0 && !s->attaching && s->nheld == 0 && s->queued == 0) {
            detach_locked(s, 0, 0);
            if (s->wanted)
                attach_async(s);
        }
    }
    LeaveCriticalSection(&s->cs);
    return S_OK;
}

static HRESULT WINAPI s_get_event_timeout(ISubscription *i, long *out)
{
    sb_com_sub *s = impl(i);
    EnterCriticalSection(&s->cs);
    *out = s->event_timeout_ms;
    LeaveCriticalSection(&s->cs);
    return S_OK;
}

static HRESULT WINAPI s_put_event_timeout(ISubscription *i, long ms)
{
    sb_com_sub *s = impl(i);
    if (ms < 1)
        return SUB_FAIL(E_INVALIDARG, "EventTimeout must be 1 ms or more, not %ld", ms);
    EnterCriticalSection(&s->cs);
    s->event_timeout_ms = ms;
    LeaveCriticalSection(&s->cs);
    return S_OK;
}

static HRESULT WINAPI s_close(ISubscription *i, VARIANT vdelete)
{
    sb_com_sub *s = impl(i);
    int delete_it = 0;
    json_t *req, *reply = NULL;
    sb_error err;
    uint64_t gen;
    int rc;

    if (!sb_com__var_missing(&vdelete)) {
        VARIANT d, b;
        VariantInit(&d);
        VariantInit(&b);
        if (FAILED(VariantCopyInd(&d, &vdelete)) ||
            FAILED(VariantChangeTypeEx(&b, &d, LOCALE_INVARIANT, 0, VT_BOOL))) {
            VariantClear(&d);
            return SUB_FAIL(DISP_E_TYPEMISMATCH, "Close: delete_it must be True or False");
        }
        delete_it = V_BOOL(&b) != VARIANT_FALSE;
        VariantClear(&d);
    }
    EnterCriticalSection(&s->cs);
    s->closed = 1;
    if (s->w != NULL) {
        s->w->stop = 1;
        s->w = NULL;
    }
    update_want(s);
    drop_queued(s);
    s->nheld = 0;
    gen = s->gen;
    s->gen = 0;
    WakeAllConditionVariable(&s->cv);
    LeaveCriticalSection(&s->cs);
    if (gen == 0 && !delete_it)
        return S_OK;
    /* Detaching returns what was taken and not acknowledged; deleting
     * needs the answer (a route's queue, another consumer). */
    req = json_pack("{s:s, s:s}", "op", "unsub", "sub", s->name);
    if (req == NULL)
        return E_OUTOFMEMORY;
    if (delete_it)
        json_object_set_new(req, "delete", json_true());
    if (gen == 0) { /* not attached here: deleting needs no attachment */
        rc = sb_com__link_request(s->link, req, (int)s->timeout_ms, &reply, NULL, &err);
        if (rc == SB_ENOTFOUND)
            rc = 0;
    } else {
        rc = sb_com__link_request(s->link, req, (int)s->timeout_ms, &reply, NULL, &err);
    }
    json_decref(req);
    json_decref(reply);
    if (rc != 0)
        return SUB_FAIL(sb_com_hresult(rc), "Close %s: %s", s->name, err.msg);
    return S_OK;
}

static const ISubscriptionVtbl sub_vtbl = {
    s_query,         s_addref,       s_release,           s_typeinfo_count,
    s_typeinfo,      s_ids,          s_invoke,            s_name,
    s_filter,        s_pull,         s_wait,              s_ack,
    s_nack,          s_get_buffer,   s_put_buffer,        s_get_event_timeout,
    s_put_event_timeout, s_close,
};

/* ---- ISupportErrorInfo, IProvideClassInfo2 ---- */

static HRESULT WINAPI sei_query(ISupportErrorInfo *i, REFIID iid, void **out)
{
    return s_query(&SUB_FROM(i, sei)->iface, iid, out);
}

static ULONG WINAPI sei_addref(ISupportErrorInfo *i)
{
    return s_addref(&SUB_FROM(i, sei)->iface);
}

static ULONG WINAPI sei_release(ISupportErrorInfo *i)
{
    return s_release(&SUB_FROM(i, sei)->iface);
}

static HRESULT WINAPI sei_supports(ISupportErrorInfo *i, REFIID iid)
{
    return IsEqualIID(iid, &IID_ISubscription) ? S_OK : S_FALSE;
}

static const ISupportErrorInfoVtbl sei_vtbl = {sei_query, sei_addref, sei_release, sei_supports};

static HRESULT WINAPI pci_query(IProvideClassInfo2 *i, REFIID iid, void **out)
{
    return s_query(&SUB_FROM(i, pci)->iface, iid, out);
}

static ULONG WINAPI pci_addref(IProvideClassInfo2 *i)
{
    return s_addref(&SUB_FROM(i, pci)->iface);
}

static ULONG WINAPI pci_release(IProvideClassInfo2 *i)
{
    return s_release(&SUB_FROM(i, pci)->iface);
}

static HRESULT WINAPI pci_class_info(IProvideClassInfo2 *i, ITypeInfo **out)
{
    ITypeInfo *ti = sb_com__typeinfo(&CLSID_Subscription);
    *out = NULL;
    if (ti == NULL)
        return E_UNEXPECTED;
    ITypeInfo_AddRef(ti);
    *out = ti;
    return S_OK;
}

static HRESULT WINAPI pci_guid(IProvideClassInfo2 *i, DWORD kind, GUID *out)
{
    if (kind != GUIDKIND_DEFAULT_SOURCE_DISP_IID)
        return E_INVALIDARG;
    *out = DIID__ISubscriptionEvents;
    return S_OK;
}

static const IProvideClassInfo2Vtbl pci_vtbl = {pci_query, pci_addref, pci_release,
                                                pci_class_info, pci_guid};

/* ---- the connection point ---- */

static HRESULT WINAPI cpc_query(IConnectionPointContainer *i, REFIID iid, void **out)
{
    return s_query(&SUB_FROM(i, cpc)->iface, iid, out);
}

static ULONG WINAPI cpc_addref(IConnectionPointContainer *i)
{
    return s_addref(&SUB_FROM(i, cpc)->iface);
}

static ULONG WINAPI cpc_release(IConnectionPointContainer *i)
{
    return s_release(&SUB_FROM(i, cpc)->iface);
}

static HRESULT WINAPI cpc_enum(IConnectionPointContainer *i, IEnumConnectionPoints **out)
{
    *out = NULL;
    return E_NOTIMPL;
}

static HRESULT WINAPI cpc_find(IConnectionPointContainer *i, REFIID iid, IConnectionPoint **out)
{
    sb_com_sub *s = SUB_FROM(i, cpc);
    *out = NULL;
    if (!IsEqualIID(iid, &DIID__ISubscriptionEvents) && !IsEqualIID(iid, &IID_IDispatch))
        return CONNECT_E_NOCONNECTION;
    *out = &s->cp;
    IConnectionPoint_AddRef(*out);
    return S_OK;
}

static const IConnectionPointContainerVtbl cpc_vtbl = {cpc_query, cpc_addref, cpc_release,
                                                       cpc_enum, cpc_find};

static HRESULT WINAPI cp_query(IConnectionPoint *i, REFIID iid, void **out)
{
    if (IsEqualIID(iid, &IID_IUnknown) || IsEqualIID(iid, &IID_IConnectionPoint)) {
        *out = i;
        IConnectionPoint_AddRef(i);
        return S_OK;
    }
    *out = NULL;
    return E_NOINTERFACE;
}

static ULONG WINAPI cp_addref(IConnectionPoint *i)
{
    return s_addref(&SUB_FROM(i, cp)->iface);
}

static ULONG WINAPI cp_release(IConnectionPoint *i)
{
    return s_release(&SUB_FROM(i, cp)->iface);
}

static HRESULT WINAPI cp_iid(IConnectionPoint *i, IID *out)
{
    *out = DIID__ISubscriptionEvents;
    return S_OK;
}

static HRESULT WINAPI cp_container(IConnectionPoint *i, IConnectionPointContainer **out)
{
    *out = &SUB_FROM(i, cp)->cpc;
    IConnectionPointContainer_AddRef(*out);
    return S_OK;
}

static HRESULT WINAPI cp_advise(IConnectionPoint *i, IUnknown *unk, DWORD *cookie)
{
    sb_com_sub *s = SUB_FROM(i, cp);
    IDispatch *sink = NULL;
    worker *w;
    HANDLE th;

    *cookie = 0;
    if (unk == NULL)
        return E_POINTER;
    if (FAILED(IUnknown_QueryInterface(unk, &DIID__ISubscriptionEvents, (void **)&sink)) &&
        FAILED(IUnknown_QueryInterface(unk, &IID_IDispatch, (void **)&sink)))
        return CONNECT_E_CANNOTCONNECT;
    w = sb_calloc(1, sizeof(*w));
    if (w == NULL) {
        IDispatch_Release(sink);
        return E_OUTOFMEMORY;
    }
    EnterCriticalSection(&s->cs);
    if (s->closed || s->w != NULL) {
        int closed = s->closed;
        LeaveCriticalSection(&s->cs);
        IDispatch_Release(sink);
        sb_free(w);
        return closed ? SUB_FAIL(sb_com_hresult(SB_ECLOSED), "Advise: the subscription is closed")
                      : CONNECT_E_ADVISELIMIT;
    }
    w->s = s;
    w->sink = sink; /* now owned by the worker */
    w->cookie = ++s->last_cookie;
    ISubscription_AddRef(&s->iface); /* the worker's */
    th = CreateThread(NULL, 0, worker_main, w, 0, NULL);
    if (th == NULL) {
        LeaveCriticalSection(&s->cs);
        IDispatch_Release(sink);
        sb_free(w);
        ISubscription_Release(&s->iface);
        return E_OUTOFMEMORY;
    }
    CloseHandle(th);
    s->w = w;
    *cookie = w->cookie;
    update_want(s);
    if (s->gen == 0)
        attach_async(s); /* or when the broker is back (on_link) */
    LeaveCriticalSection(&s->cs);
    return S_OK;
}

static HRESULT WINAPI cp_unadvise(IConnectionPoint *i, DWORD cookie)
{
    sb_com_sub *s = SUB_FROM(i, cp);
    HRESULT hr = S_OK;
    EnterCriticalSection(&s->cs);
    if (s->w != NULL && s->w->cookie == cookie) {
        s->w->stop = 1;
        s->w = NULL;
        s->idle_since = sb_com_now_ms();
        update_want(s);
        schedule_idle(s);
        WakeAllConditionVariable(&s->cv);
    } else if (cookie == 0 || cookie > s->last_cookie) {
        hr = CONNECT_E_NOCONNECTION;
    } /* else: dropped already (a handler that timed out) */
    LeaveCriticalSection(&s->cs);
    return hr;
}

static HRESULT WINAPI cp_enum(IConnectionPoint *i, IEnumConnections **out)
{
    *out = NULL;
    return E_NOTIMPL;
}

static const IConnectionPointVtbl cp_vtbl = {cp_query,  cp_addref, cp_release,  cp_iid,
                                             cp_container, cp_advise, cp_unadvise, cp_enum};

/* ---- creating ---- */

HRESULT sb_com__sub_new(const char *name, const char *filter, DWORD client_pid, long timeout_ms,
                    ISubscription **out)
{
    sb_com_sub *s = sb_calloc(1, sizeof(*s));
    sb_error err;
    int rc;

    *out = NULL;
    if (s == NULL || (s->name = sb_strdup(name)) == NULL) {
        sb_free(s);
        return E_OUTOFMEMORY;
    }
    s->iface.lpVtbl = (ISubscriptionVtbl *)&sub_vtbl;
    s->cpc.lpVtbl = (IConnectionPointContainerVtbl *)&cpc_vtbl;
    s->cp.lpVtbl = (IConnectionPointVtbl *)&cp_vtbl;
    s->sei.lpVtbl = (ISupportErrorInfoVtbl *)&sei_vtbl;
    s->pci.lpVtbl = (IProvideClassInfo2Vtbl *)&pci_vtbl;
    s->refs = 1;
    if (sb_com__link_start(&s->link, sb_com__server_endpoint(), &err) != 0) {
        sb_free(s->name);
        sb_free(s);
        return sb_com__fail(sb_com_hresult(err.code), &IID_IBroker, "Broker", "Subscribe %s: %s",
                        name, err.msg);
    }
    s->timeout_ms = timeout_ms;
    s->buffer = 1;
    s->event_timeout_ms = SB_COM_DEFAULT_EVENT_TIMEOUT_MS;
    s->idle_since = sb_com_now_ms();
    InitializeCriticalSection(&s->cs);
    InitializeConditionVariable(&s->cv);
    s->obj.unk = (IUnknown *)&s->iface;
    s->obj.refs = &s->refs;
    s->obj.pid = client_pid;
    s->obj.client_gone = sub_client_gone;
    sb_com__server_track(&s->obj);
    sb_com__link_add_sub(s->link, s); /* before the sub: its first deliveries follow the reply */
    EnterCriticalSection(&s->cs);
    rc = attach_sync(s, filter, &err);
    schedule_idle(s);
    LeaveCriticalSection(&s->cs);
    if (rc != 0) {
        HRESULT hr = sb_com__fail(sb_com_hresult(rc), &IID_IBroker, "Broker", "Subscribe %s: %s",
                              name, err.msg);
        ISubscription_Release(&s->iface);
        return hr;
    }
    *out = &s->iface;
    return S_OK;
}
