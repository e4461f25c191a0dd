/*
 * The DDE client role: Switchboard as a client of a legacy DDE server
 * (`service`, `dde_topic`).
 *
 * - Source: hot links (XTYP_ADVSTART, CF_TEXT) on the configured `items`;
 *   once linked, each item's current value is REQUESTed and published
 *   first (unless a newer XTYP_ADVDATA already came), then every ADVDATA
 *   is published to the item's broker topic (the `topic` template).
 * - Sink: each delivery is POKEd into the item named by its `dde-item`
 *   header, else by its topic through the template; a delivery on
 *   `execute_topic` is sent as XTYP_EXECUTE instead. It is acknowledged
 *   only when the server's WM_DDE_ACK has DDE_FACK set; DDE_FBUSY, a
 *   refusal or no answer nacks it with the server's answer as the reason
 *   (the route retries, then dead-letters). While the server is away the
 *   sink takes no deliveries: they wait in their queue.
 * - When the server is not running or goes away (WM_DDE_TERMINATE, or its
 *   window vanished: a killed process sends no terminate), the client
 *   reconnects with backoff (reconnect_backoff .. reconnect_max_backoff), at
 *   once when DDEML announces the service (XTYP_REGISTER), and logs the link
 *   state once per change.
 *
 * Two conversations, each of a DDEML instance of its own (Wine's DdeConnect
 * refuses a second conversation of one instance with the same service and
 * topic): hot links and requests on one, pokes and executes on the other.
 * Wine's DDEML client matches a poke's answer by item only and takes a
 * WM_DDE_DATA of a hot link on the poked item as the poke's
 * acknowledgement; a conversation without links never receives one. A
 * Wine-hosted server also follows every REQUEST's data with a stray
 * positive WM_DDE_ACK, which Wine's client takes as the answer of the next
 * transaction: under Wine it is drained after each request.
 */
#include "adapters/dde/win/dde_int.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform/win/utf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define TIMER_RECONNECT 1
#define TIMER_WATCH 2
#define WATCH_MS 1000
/* How long a request's stray acknowledgement is waited for under Wine. */
#define STRAY_ACK_MS 200

enum { STATE_UNKNOWN = 0, STATE_UP, STATE_DOWN };

typedef struct cli_item {
    char *name;  /* as configured */
    char *topic; /* its broker topic */
    HSZ hsz;
    int linked;
    int seen;    /* an ADVDATA came since its link started */
    int current; /* its current value was published (request or ADVDATA) */
} cli_item;

typedef struct sb_dde_client {
    HSZ service, topic;   /* of a->inst: links and requests */
    DWORD pinst;          /* the instance of pokes and executes */
    HSZ pservice, ptopic; /* of pinst */
    cli_item *items;
    size_t count;
    HCONV link, poke;
    int up;
    int lost; /* a conversation ended (XTYP_DISCONNECT): go down */
    int connecting;
    int state; /* STATE_*: what was logged last */
    int64_t backoff;
    char name[300]; /* "SERVICE|topic" for logs */
} sb_dde_client;

/* ---- publishing what the server sends ---- */

static cli_item *find_item(sb_dde_client *c, HSZ hsz)
{
    /* String handles are atoms: equal names have equal handles while one is
     * held, and comparing names costs a round trip to the atom table. */
    for (size_t i = 0; i < c->count; i++)
        if (c->items[i].hsz == hsz)
            return &c->items[i];
    for (size_t i = 0; i < c->count; i++)
        if (DdeCmpStringHandles(c->items[i].hsz, hsz) == 0)
            return &c->items[i];
    return NULL;
}

/* Publishes a data handle's content as the item's value. */
static void publish_data(sb_dde_adapter *a, cli_item *it, HDDEDATA data, UINT fmt)
{
    sb_dde_client *c = a->cli;
    unsigned char *payload = NULL;
    size_t payload_len = 0;
    char why[320] = "", name[128];
    int text = 0;
    sb_dde_pub *p = NULL;

    if (sb_dde__read(&payload, &payload_len, &text, data, fmt, a->codepage,
                     SB_DDE_CFG(a->base.cfg)->max_message, why, sizeof why) != 0)
        goto drop;
    p = sb_calloc(1, sizeof(*p));
    if (p == NULL || (p->topic = sb_strdup(it->topic)) == NULL ||
        (p->dde_topic = sb_strdup(SB_DDE_CFG(a->base.cfg)->dde_topic)) == NULL ||
        (p->item = sb_strdup(it->name)) == NULL ||
        (p->fmt_name = sb_strdup(sb_dde__format_name(fmt, name, sizeof name))) == NULL) {
        sb_dde__pub_free(p);
        snprintf(why, sizeof why, "out of memory");
        goto drop;
    }
    p->a = a;
    p->payload = payload; /* now owned by p */
    payload = NULL;
    p->len = payload_len;
    p->text = text;
    p->codepage = fmt == CF_TEXT ? a->codepage : 0;
    sb_dde__publish_wait(a, p, 0);
    goto done;
drop:
    sb_log(SB_LOG_WARN, a->base.name, "value of %s!%s dropped: %s", c->name, it->name, why);
done:
    sb_free(payload);
}

/* ---- the link ---- */

static void log_state(sb_dde_adapter *a, int state, const char *fmt, ...) SB_PRINTF(3, 4);
static void log_state(sb_dde_adapter *a, int state, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sb_log(a->cli->state == state ? SB_LOG_DEBUG
           : state == STATE_UP    ? SB_LOG_INFO
                                  : SB_LOG_WARN,
           a->base.name, "%s", msg);
    a->cli->state = state;
}

/* 1 while the conversation's server window still exists. */
static int alive(HCONV conv)
{
    CONVINFO ci;
    if (conv == 0)
        return 0;
    memset(&ci, 0, sizeof ci);
    ci.cb = sizeof ci;
    if (DdeQueryConvInfo(conv, QID_SYNC, &ci) == 0)
        return 0;
    return (ci.wStatus & ST_CONNECTED) != 0 && IsWindow(ci.hwndPartner);
}

static void schedule_reconnect(sb_dde_adapter *a)
{
    sb_dde_client *c = a->cli;
    const sb_adapter_config *cfg = a->base.cfg;
    c->backoff =
        sb_backoff_next(c->backoff, SB_DDE_CFG(cfg)->reconnect_backoff_ms, SB_DDE_CFG(cfg)->reconnect_max_backoff_ms);
    SetTimer(a->hwnd, TIMER_RECONNECT, (UINT)c->backoff, NULL);
}

static void go_down(sb_dde_adapter *a, const char *why)
{
    sb_dde_client *c = a->cli;
    int was_up = c->up;
    KillTimer(a->hwnd, TIMER_WATCH);
    if (c->link != 0)
        DdeDisconnect(c->link);
    if (c->poke != 0)
        DdeDisconnect(c->poke);
    c->link = c->poke = 0;
    c->up = 0;
    c->lost = 0;
    if (was_up)
        sb_dde__post(a, sb_dde__on_link_down, a);
    schedule_reconnect(a);
    log_state(a, STATE_DOWN, "%s %s: %s; retrying with backoff (%lld ms)",
              was_up ? "lost" : "cannot link to", c->name, why, (long long)c->backoff);
}

/* Under Wine: takes the stray acknowledgement a Wine server sends after a
 * request's data out of the queue before the next transaction. */
static void drain_stray_ack(sb_dde_adapter *a, HCONV conv)
{
    CONVINFO ci;
    uint64_t deadline = uv_hrtime() + (uint64_t)STRAY_ACK_MS * 1000000u;
    if (!a->wine)
        return;
    memset(&ci, 0, sizeof ci);
    ci.cb = sizeof ci;
    if (DdeQueryConvInfo(conv, QID_SYNC, &ci) == 0)
        return;
    for (;;) {
        MSG m;
        uint64_t now;
        if (PeekMessageW(&m, ci.hwnd, WM_DDE_ACK, WM_DDE_ACK, PM_REMOVE)) {
            UINT_PTR lo = 0, hi = 0;
            UnpackDDElParam(WM_DDE_ACK, m.lParam, &lo, &hi);
            FreeDDElParam(WM_DDE_ACK, m.lParam);
            if (hi != 0)
                GlobalDeleteAtom((ATOM)hi);
            return;
        }
        now = uv_hrtime();
        if (now >= deadline)
            return;
        MsgWaitForMultipleObjects(0, NULL, FALSE, (DWORD)((deadline - now) / 1000000u) + 1,
                                  QS_POSTMESSAGE);
    }
}

/* Asks for the current value of a linked item and publishes it, unless
 * the link already brought something newer. A request that fails is asked
 * again on the next watch tick (Wine's DDEML, under load, was seen to lose
 * one: its stray acknowledgement came after the drain's wait). */
static void request_current(sb_dde_adapter *a, cli_item *it)
{
    sb_dde_client *c = a->cli;
    HDDEDATA h;
    if (it->seen) {
        it->current = 1;
        return;
    }
    h = DdeClientTransaction(NULL, 0, c->link, it->hsz, CF_TEXT, XTYP_REQUEST, SB_DDE_TIMEOUT_MS,
                             NULL);
    if (h == 0) {
        sb_log(SB_LOG_DEBUG, a->base.name, "%s: no current value of item %s yet (DMLERR 0x%04x)",
               c->name, it->name, DdeGetLastError(a->inst));
        return;
    }
    drain_stray_ack(a, c->link);
    if (!it->seen)
        publish_data(a, it, h, CF_TEXT);
    it->current = 1;
    DdeFreeDataHandle(h);
}

/* Items the server refused to hot-link are asked again on every watch tick
 * while the conversation is up: a legacy server may refuse an item it does
 * not serve yet (and Wine's DDEML has been seen to refuse one under load). */
static void retry_refused_links(sb_dde_adapter *a)
{
    sb_dde_client *c = a->cli;
    for (size_t i = 0; i < c->count && !c->lost; i++) {
        cli_item *it = &c->items[i];
        if (it->linked && !it->current)
            request_current(a, it);
        if (it->linked)
            continue;
        it->seen = 0;
        it->current = 0;
        it->linked = DdeClientTransaction(NULL, 0, c->link, it->hsz, CF_TEXT, XTYP_ADVSTART,
                                          SB_DDE_TIMEOUT_MS, NULL) != 0;
        if (!it->linked) {
            sb_log(SB_LOG_DEBUG, a->base.name, "%s still refuses a hot link on item %s",
                   c->name, it->name);
            continue;
        }
        sb_log(SB_LOG_INFO, a->base.name, "%s: item %s hot-linked (refused before)", c->name,
               it->name);
        request_current(a, it);
    }
}

static void connect_now(sb_dde_adapter *a)
{
    sb_dde_client *c = a->cli;
    char why[200];
    size_t linked = 0;

    if (c->up || c->connecting)
        return;
    c->connecting = 1;
    KillTimer(a->hwnd, TIMER_RECONNECT);
    c->link = DdeConnect(a->inst, c->service, c->topic, NULL);
    if (c->link != 0)
        c->poke = DdeConnect(c->pinst, c->pservice, c->ptopic, NULL);
    if (c->link == 0 || c->poke == 0) {
        snprintf(why, sizeof why, "no DDE server answers (DMLERR 0x%04x)",
                 DdeGetLastError(c->link == 0 ? a->inst : c->pinst));
        c->connecting = 0;
        go_down(a, why);
        return;
    }
    for (size_t i = 0; i < c->count; i++) {
        cli_item *it = &c->items[i];
        it->seen = 0;
        it->current = 0;
        it->linked = DdeClientTransaction(NULL, 0, c->link, it->hsz, CF_TEXT, XTYP_ADVSTART,
                                          SB_DDE_TIMEOUT_MS, NULL) != 0;
        if (it->linked)
            linked++;
        else
            sb_log(SB_LOG_WARN, a->base.name, "%s refused a hot link on item %s (DMLERR 0x%04x)",
                   c->name, it->name, DdeGetLastError(a->inst));
    }
    /* The current values first: what a request returns, unless the link
     * already brought something newer. */
    for (size_t i = 0; i < c->count && !c->lost; i++)
        if (c->items[i].linked)
            request_current(a, &c->items[i]);
    c->connecting = 0;
    if (c->lost || !alive(c->link) || !alive(c->poke)) {
        go_down(a, "the server went away while linking");
        return;
    }
    c->up = 1;
    c->backoff = 0;
    SetTimer(a->hwnd, TIMER_WATCH, WATCH_MS, NULL);
    sb_dde__post(a, sb_dde__on_link_up, a);
    log_state(a, STATE_UP, "linked to %s (%zu of %zu items hot-linked)", c->name, linked, c->count);
}

void sb_dde__client_check(sb_dde_adapter *a)
{
    sb_dde_client *c = a->cli;
    if (c->connecting)
        return;
    if (c->up && (c->lost || !alive(c->link) || !alive(c->poke))) {
        go_down(a, "the server ended the conversation or went away");
        return;
    }
    if (!c->up)
        connect_now(a);
}

void sb_dde__client_timer(sb_dde_adapter *a, UINT_PTR id)
{
    sb_dde_client *c = a->cli;
    if (id == TIMER_RECONNECT) {
        KillTimer(a->hwnd, TIMER_RECONNECT);
        if (!c->up)
            connect_now(a);
    } else if (id == TIMER_WATCH && c->up && !c->connecting) {
        if (c->lost || !alive(c->link) || !alive(c->poke))
            go_down(a, "the server ended the conversation or went away");
        else
            retry_refused_links(a);
    }
}

HDDEDATA CALLBACK sb_dde__client_cb(UINT type, UINT fmt, HCONV conv, HSZ hsz1, HSZ hsz2,
                                    HDDEDATA data, ULONG_PTR d1, ULONG_PTR d2)
{
    sb_dde_adapter *a = sb_dde__current();
    sb_dde_client *c = a != NULL ? a->cli : NULL;
    (void)d1;
    (void)d2;
    if (c == NULL)
        return 0;
    /* Clipboard formats are 16 bits; Wine passes a poke's sign-extended */
    fmt &= 0xFFFF;
    switch (type) {
    case XTYP_ADVDATA: {
        cli_item *it = conv == c->link ? find_item(c, hsz2) : NULL;
        if (it == NULL || data == 0)
            return (HDDEDATA)DDE_FACK;
        it->seen = 1;
        publish_data(a, it, data, fmt);
        return (HDDEDATA)DDE_FACK;
    }
    case XTYP_DISCONNECT:
        if (conv != 0 && (conv == c->link || conv == c->poke)) {
            c->lost = 1;
            PostMessageW(a->hwnd, SB_DDE_WM_CHECK, 0, 0);
        }
        return 0;
    case XTYP_REGISTER:
        /* the server (re)started: link now rather than at the next retry */
        if (!c->up && DdeCmpStringHandles(hsz1, c->service) == 0)
            PostMessageW(a->hwnd, SB_DDE_WM_CHECK, 0, 0);
        return 0;
    default:
        return 0;
    }
}

/* ---- pokes and executes ---- */

void sb_dde__client_job(sb_dde_adapter *a, sb_dde_job *job)
{
    sb_dde_client *c = a->cli;
    const char *what = job->type == SB_DDE_JOB_EXECUTE ? "execute" : "poke";
    DWORD result = 0;
    HDDEDATA h;
    HSZ item = 0;
    UINT err = 0;

    job->status = 0;
    if (!c->up) {
        job->status = SB_EBUSY;
        snprintf(job->why, sizeof job->why, "not linked to %s", c->name);
        goto done;
    }
    if (job->type == SB_DDE_JOB_POKE) {
        wchar_t *w = sb_utf8_to_wide(job->item);
        item = w != NULL ? DdeCreateStringHandleW(c->pinst, w, CP_WINUNICODE) : 0;
        sb_free(w);
        if (item == 0) {
            job->status = SB_ENOMEM;
            snprintf(job->why, sizeof job->why, "cannot make a DDE string of item %s", job->item);
            goto done;
        }
    }
    h = DdeClientTransaction(job->value.data, (DWORD)job->value.len, c->poke, item,
                             job->type == SB_DDE_JOB_POKE ? job->fmt : 0,
                             job->type == SB_DDE_JOB_POKE ? XTYP_POKE : XTYP_EXECUTE,
                             SB_DDE_TIMEOUT_MS, &result);
    if (h == 0)
        err = DdeGetLastError(c->pinst);
    if (item != 0)
        DdeFreeStringHandle(c->pinst, item);
    /* Wine returns TRUE for a negative acknowledgement too: the answer is
     * the DDE_FACK bit of the acknowledgement's status word. */
    if (h != 0 && (result & DDE_FACK))
        goto done;
    job->status = SB_EBUSY;
    if ((h != 0 && (result & DDE_FBUSY)) || err == DMLERR_BUSY) {
        snprintf(job->why, sizeof job->why, "%s %s!%s: the server answered busy (DDE_FBUSY)", what,
                 c->name, job->item ? job->item : "");
    } else if (h != 0 || err == DMLERR_NOTPROCESSED) {
        job->status = SB_EPROTO;
        snprintf(job->why, sizeof job->why,
                 "%s %s!%s: the server refused it (DDE_FNOTPROCESSED, status 0x%04lx)", what,
                 c->name, job->item ? job->item : "", (unsigned long)(result & 0xffff));
    } else if (err == DMLERR_POKEACKTIMEOUT || err == DMLERR_EXECACKTIMEOUT) {
        job->status = SB_ETIMEDOUT;
        snprintf(job->why, sizeof job->why, "%s %s!%s: no answer within %d ms", what, c->name,
                 job->item ? job->item : "", SB_DDE_TIMEOUT_MS);
    } else {
        job->status = SB_EIO;
        snprintf(job->why, sizeof job->why, "%s %s!%s failed (DMLERR 0x%04x)", what, c->name,
                 job->item ? job->item : "", err);
    }
    if (h == 0 && !alive(c->poke))
        c->lost = 1;
done:
    sb_dde__post(a, sb_dde__on_job_done, job); /* now the loop's */
    if (c->lost)
        PostMessageW(a->hwnd, SB_DDE_WM_CHECK, 0, 0);
}

/* ---- start, stop ---- */

int sb_dde__client_init(sb_dde_adapter *a, char *why, size_t n)
{
    const sb_adapter_config *cfg = a->base.cfg;
    sb_dde_client *c = sb_calloc(1, sizeof(*c));
    wchar_t *ws = sb_utf8_to_wide(SB_DDE_CFG(cfg)->dde_service), *wt = sb_utf8_to_wide(SB_DDE_CFG(cfg)->dde_topic);
    int rc = SB_ENOMEM;

    a->cli = c;
    if (c == NULL || ws == NULL || wt == NULL)
        goto out;
    snprintf(c->name, sizeof c->name, "%s|%s", SB_DDE_CFG(cfg)->dde_service, SB_DDE_CFG(cfg)->dde_topic);
    if (DdeInitializeW(&c->pinst, sb_dde__client_cb,
                       APPCMD_CLIENTONLY | CBF_SKIP_REGISTRATIONS | CBF_SKIP_UNREGISTRATIONS,
                       0) != DMLERR_NO_ERROR) {
        c->pinst = 0;
        goto out;
    }
    c->service = DdeCreateStringHandleW(a->inst, ws, CP_WINUNICODE);
    c->topic = DdeCreateStringHandleW(a->inst, wt, CP_WINUNICODE);
    c->pservice = DdeCreateStringHandleW(c->pinst, ws, CP_WINUNICODE);
    c->ptopic = DdeCreateStringHandleW(c->pinst, wt, CP_WINUNICODE);
    c->items = SB_DDE_CFG(cfg)->dde_items_count > 0 ? sb_calloc(SB_DDE_CFG(cfg)->dde_items_count, sizeof(*c->items)) : NULL;
    if (c->service == 0 || c->topic == 0 || c->pservice == 0 || c->ptopic == 0 ||
        (SB_DDE_CFG(cfg)->dde_items_count > 0 && c->items == NULL))
        goto out;
    for (size_t i = 0; i < SB_DDE_CFG(cfg)->dde_items_count; i++) {
        cli_item *it = &c->items[i];
        wchar_t *wi = sb_utf8_to_wide(SB_DDE_CFG(cfg)->dde_items[i]);
        it->hsz = wi != NULL ? DdeCreateStringHandleW(a->inst, wi, CP_WINUNICODE) : 0;
        sb_free(wi);
        it->name = sb_strdup(SB_DDE_CFG(cfg)->dde_items[i]);
        c->count++;
        if (it->hsz == 0 || it->name == NULL ||
            sb_dde_map_topic(&it->topic, &a->map, SB_DDE_CFG(cfg)->dde_topic, it->name) != 0)
            goto out;
    }
    /* Linking waits on the server: after start() has returned. */
    PostMessageW(a->hwnd, SB_DDE_WM_CHECK, 0, 0);
    rc = 0;
out:
    sb_free(ws);
    sb_free(wt);
    if (rc != 0)
        snprintf(why, n, "%s",
                 c != NULL && c->pinst == 0 ? "DdeInitialize failed for pokes" : "out of memory");
    return rc;
}

void sb_dde__client_fini(sb_dde_adapter *a)
{
    sb_dde_client *c = a->cli;
    if (c == NULL)
        return;
    KillTimer(a->hwnd, TIMER_WATCH);
    KillTimer(a->hwnd, TIMER_RECONNECT);
    if (c->link != 0)
        DdeDisconnect(c->link);
    if (c->poke != 0)
        DdeDisconnect(c->poke);
    for (size_t i = 0; i < c->count; i++) {
        if (c->items[i].hsz != 0)
            DdeFreeStringHandle(a->inst, c->items[i].hsz);
        sb_free(c->items[i].name);
        sb_free(c->items[i].topic);
    }
    sb_free(c->items);
    if (c->service != 0)
        DdeFreeStringHandle(a->inst, c->service);
    if (c->topic != 0)
        DdeFreeStringHandle(a->inst, c->topic);
    if (c->pinst != 0) {
        if (c->pservice != 0)
            DdeFreeStringHandle(c->pinst, c->pservice);
        if (c->ptopic != 0)
            DdeFreeStringHandle(c->pinst, c->ptopic);
        DdeUninitialize(c->pinst);
    }
    sb_free(c);
    a->cli = NULL;
}
