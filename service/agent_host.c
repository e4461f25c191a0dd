/*
 * The service's side of the session agents (agent_host.h, docs/agent.md):
 * an endpoint per session, the agent process in it, restarts with backoff,
 * and what an agent is told when it says hello.
 *
 * A link is one session. Its endpoint is a jsonl listener (`type: pipe`,
 * kept off the broker's adapter list like the admin endpoint) whose
 * adapter->agent points back to the link, so that jsonl.c asks here about
 * hello, log and subscriptions. The agent process is either started here
 * (uv_spawn under `switchboard run`, sb_agent_spawn_as_user under the
 * service) or by somebody else (`agent.start: false`); either way the link
 * notices its connection and its end.
 */
#include "config/adapter_keys.h"
#include "service/agent_host.h"
#include "service/agent_proc.h"
#include "service/alloc.h"
#include "service/broker_int.h"
#include "service/log.h"
#include "service/platform.h"

#include <stdio.h>
#include <string.h>

/* How long an agent asked to stop may take before it is terminated. */
#define AGENT_STOP_MS 5000
/* An agent that ran this long before it exited restarts without delay
 * built up by earlier failures. */
#define AGENT_STABLE_MS 30000
/* Endpoint settings: an agent's lines carry whole messages. */
#define AGENT_MAX_MESSAGE (64 * 1024 * 1024)
#define MAX_SESSIONS 256

typedef struct sb_agent_link link;

struct sb_agent_link {
    sb_agent_host *host;
    uint32_t session;
    char name[32];      /* "agent-<session>": the endpoint's adapter name, for logs */
    char endpoint[512]; /* its path or pipe name */
    sb_adapter *ep;     /* NULL once closed */
    int ep_closing;
    struct sb_conn *conn;  /* the agent's connection after its hello, or NULL */
    sb_agent_send_fn send; /* writes to conn */
    int64_t agent_pid;     /* from its hello */
    /* the process started here: one of these */
    uv_process_t *uvproc;
    sb_agent_proc *proc;
    int running;
    int64_t pid;
    int64_t started_ms;
    int64_t backoff_ms;
    unsigned long starts;
    int64_t last_exit;
    int have_exit;
    uv_timer_t *timer; /* restart delay, or the stop deadline */
    int restart_now;   /* asked to stop for a new config: start again at once */
    int removing;      /* logoff, host stop, no desktop adapters left */
    char **transient;  /* the agent's transient subscriptions (deleted when it goes) */
    size_t transient_count;
    struct sb_agent_link *next;
};

typedef struct binding {
    char *queue, *adapter;
} binding;

struct sb_agent_host {
    sb_broker *b;
    link *links;
    char *doc; /* the agents' YAML */
    size_t doc_len;
    binding *bindings;
    size_t binding_count;
    int as_session_user; /* the service: agents run as each session's user */
    int stopping;
};

static void link_start_agent(link *l);
static void link_check_gone(link *l);

/* ---- what agents run ---- */

static void free_plan(sb_agent_host *h)
{
    sb_free(h->doc);
    h->doc = NULL;
    for (size_t i = 0; i < h->binding_count; i++) {
        sb_free(h->bindings[i].queue);
        sb_free(h->bindings[i].adapter);
    }
    sb_free(h->bindings);
    h->bindings = NULL;
    h->binding_count = 0;
}

/* The adapters agents host (names into cfg) and the queues of the routes
 * that deliver to them; returns the count of adapters, -1 on out of memory. */
static int make_plan(sb_broker *b, char **doc, size_t *doc_len, binding **out, size_t *nout)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", "off"};
    const sb_config *cfg = b->cfg;
    const char **names = NULL;
    size_t n = 0, nb = 0;
    binding *bs = NULL;
    int rc = -1;

    *doc = NULL;
    *out = NULL;
    *nout = 0;
    names = sb_calloc(cfg->adapter_count + 1, sizeof(*names));
    if (names == NULL)
        return -1;
    for (size_t i = 0; i < cfg->adapter_count; i++)
        if (!sb_broker_hosts(b, &cfg->adapters[i]))
            names[n++] = cfg->adapters[i].name;
    if (n == 0) {
        rc = 0;
        goto done;
    }
    for (size_t i = 0; i < cfg->route_count; i++)
        for (size_t d = 0; d < cfg->routes[i].to_count; d++) {
            const sb_route_config *r = &cfg->routes[i];
            const sb_adapter_config *a = sb_config_adapter(cfg, r->to[d]);
            binding *more;
            size_t len;
            if (a == NULL || sb_broker_hosts(b, a))
                continue;
            more = sb_realloc(bs, (nb + 1) * sizeof(*bs));
            if (more == NULL)
                goto done;
            bs = more;
            len = strlen(r->name) + strlen(r->to[d]) + 2;
            bs[nb].queue = sb_malloc(len);
            bs[nb].adapter = sb_strdup(r->to[d]);
            if (bs[nb].queue != NULL)
                snprintf(bs[nb].queue, len, "%s:%s", r->name, r->to[d]);
            nb++;
            if (bs[nb - 1].queue == NULL || bs[nb - 1].adapter == NULL)
                goto done;
        }
    if (sb_config_agent_doc(doc, doc_len, cfg, levels[cfg->broker.log_level], names, n) != 0)
        goto done;
    rc = (int)n;
done:
    if (rc < 0) {
        for (size_t i = 0; i < nb; i++) {
            sb_free(bs[i].queue);
            sb_free(bs[i].adapter);
        }
        sb_free(bs);
    } else {
        *out = bs;
        *nout = nb;
    }
    sb_free(names);
    return rc;
}

static int same_plan(const sb_agent_host *h, const char *doc, const binding *bs, size_t nb)
{
    if (h->doc == NULL || strcmp(h->doc, doc) != 0 || nb != h->binding_count)
        return 0;
    for (size_t i = 0; i < nb; i++)
        if (strcmp(bs[i].queue, h->bindings[i].queue) != 0 ||
            strcmp(bs[i].adapter, h->bindings[i].adapter) != 0)
            return 0;
    return 1;
}

/* ---- links ---- */

static void endpoint_name(char *out, size_t n, const sb_broker *b, uint32_t session)
{
    char tmpl[512];
    const char *at;
    if (b->cfg->broker.agent_endpoint != NULL)
        snprintf(tmpl, sizeof(tmpl), "%s", b->cfg->broker.agent_endpoint);
    else
        sb_agent_default_endpoint(tmpl, sizeof(tmpl), b->cfg->broker.data_dir);
    at = strstr(tmpl, "{session}");
    if (at == NULL)
        snprintf(out, n, "%s", tmpl);
    else
        snprintf(out, n, "%.*s%lu%s", (int)(at - tmpl), tmpl, (unsigned long)session,
                 at + strlen("{session}"));
}

static link *find_link(sb_agent_host *h, uint32_t session)
{
    for (link *l = h->links; l != NULL; l = l->next)
        if (l->session == session)
            return l;
    return NULL;
}

static void send_stop(link *l)
{
    static const char line[] = "{\"op\":\"stop\"}\n";
    if (l->conn != NULL)
        l->send(l->conn, line, sizeof(line) - 1);
}

static void drop_transient(link *l)
{
    for (size_t i = 0; i < l->transient_count; i++) {
        sb_error err;
        if (sb_broker_unsubscribe(l->host->b, l->transient[i], &err) != 0 &&
            err.code != SB_ENOTFOUND)
            sb_warn(l->name, "cannot delete the agent's subscription %s: %s", l->transient[i],
                    err.msg);
        sb_free(l->transient[i]);
    }
    sb_free(l->transient);
    l->transient = NULL;
    l->transient_count = 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    link *l = h->data;
    sb_free(h);
    l->timer = NULL;
    link_check_gone(l);
}

static void on_endpoint_closed(sb_adapter *a)
{
    link *l = a->agent;
    l->ep = NULL;
    l->ep_closing = 0;
    link_check_gone(l);
}

static void link_free(link *l)
{
    sb_agent_host *h = l->host;
    link **p;
    for (p = &h->links; *p != NULL; p = &(*p)->next)
        if (*p == l) {
            *p = l->next;
            break;
        }
    drop_transient(l);
    sb_free(l);
    if (h->stopping && h->links == NULL) {
        h->b->agents = NULL;
        free_plan(h);
        sb_free(h);
    }
}

/* A removed link goes once its agent has gone (or was terminated), its
 * endpoint is closed and its timer too. */
static void link_check_gone(link *l)
{
    if (!l->removing || l->running)
        return;
    /* an agent started by somebody else: until it disconnects or the
     * deadline passes (the endpoint's close then ends its connection) */
    if (l->conn != NULL && l->timer != NULL && uv_is_active((uv_handle_t *)l->timer))
        return;
    if (l->timer != NULL) {
        if (!uv_is_closing((uv_handle_t *)l->timer))
            uv_close((uv_handle_t *)l->timer, on_timer_closed);
        return;
    }
    if (l->ep != NULL) {
        if (!l->ep_closing) {
            l->ep_closing = 1;
            sb_adapter_close(l->ep, on_endpoint_closed);
        }
        return;
    }
    if (l->uvproc != NULL || l->proc != NULL)
        return; /* handles still closing */
    link_free(l);
}

static void on_stop_deadline(uv_timer_t *t)
{
    link *l = t->data;
    if (l->running) {
        sb_warn(l->name, "the agent (pid %lld) did not stop within %d ms: terminating it",
                (long long)l->pid, AGENT_STOP_MS);
        if (l->uvproc != NULL)
            uv_process_kill(l->uvproc, SIGKILL);
        else if (l->proc != NULL)
            sb_agent_proc_kill(l->proc);
    }
    if (l->removing)
        link_check_gone(l);
}

/* Stops the link's agent and endpoint; the link goes when both are gone. */
static void link_remove(link *l, const char *why)
{
    if (l->removing)
        return;
    l->removing = 1;
    sb_info(l->name, "stopping the agent of session %lu (%s)", (unsigned long)l->session, why);
    send_stop(l);
    if (l->timer != NULL) {
        uv_timer_stop(l->timer);
        if (l->running || l->conn != NULL) {
            uv_timer_start(l->timer, on_stop_deadline, AGENT_STOP_MS, 0);
            return;
        }
    }
    link_check_gone(l);
}

static void on_restart_timer(uv_timer_t *t)
{
    link_start_agent(t->data);
}

/* The agent process ended: restart it unless the link is going. */
static void agent_exited(link *l, int64_t code)
{
    int64_t now = sb_now_ms();
    l->running = 0;
    l->have_exit = 1;
    l->last_exit = code;
    if (l->removing || l->host->stopping || l->host->b->stopping) {
        sb_info(l->name, "the agent (pid %lld) exited with code %lld", (long long)l->pid,
                (long long)code);
        if (l->timer != NULL)
            uv_timer_stop(l->timer);
        link_check_gone(l);
        return;
    }
    if (l->restart_now || now - l->started_ms >= AGENT_STABLE_MS)
        l->backoff_ms = 0;
    if (l->restart_now) {
        l->restart_now = 0;
        sb_info(l->name,
                "the agent (pid %lld) stopped for the new configuration; starting it again",
                (long long)l->pid);
        link_start_agent(l);
        return;
    }
    l->backoff_ms = sb_backoff_next(l->backoff_ms, l->host->b->cfg->broker.agent_restart_backoff_ms,
                                    l->host->b->cfg->broker.agent_restart_max_backoff_ms);
    sb_warn(l->name,
            "the agent of session %lu (pid %lld) exited with code %lld; restarting it in %lld ms",
            (unsigned long)l->session, (long long)l->pid, (long long)code,
            (long long)l->backoff_ms);
    uv_timer_start(l->timer, on_restart_timer, (uint64_t)l->backoff_ms, 0);
}

static void on_uvproc_closed(uv_handle_t *h)
{
    link *l = h->data;
    sb_free(h);
    l->uvproc = NULL;
    link_check_gone(l);
}

static void on_uvproc_exit(uv_process_t *p, int64_t status, int signal)
{
    link *l = p->data;
    uv_close((uv_handle_t *)p, on_uvproc_closed);
    agent_exited(l, signal != 0 ? 128 + signal : status);
}

static void on_proc_exit(sb_agent_proc *p, int64_t code, void *ctx)
{
    link *l = ctx;
    sb_agent_proc_free(p);
    l->proc = NULL;
    agent_exited(l, code);
}

static void link_start_agent(link *l)
{
    sb_broker *b = l->host->b;
    char exe[1024], level[16];
    size_t exe_len = sizeof(exe);
    char *argv[] = {exe, "agent", "--endpoint", l->endpoint, "--log-level", level, NULL};
    static const char *const levels[] = {"debug", "info", "warn", "error", "off"};
    sb_error err;
    int rc;

    if (l->removing || l->running || !b->cfg->broker.agent_start)
        return;
    snprintf(level, sizeof(level), "%s", levels[b->cfg->broker.log_level]);
    if ((rc = uv_exepath(exe, &exe_len)) != 0) {
        sb_errlog(l->name, "cannot find this program to start the agent: %s", uv_strerror(rc));
        return;
    }
    l->started_ms = sb_now_ms();
    l->starts++;
    if (l->host->as_session_user) {
        rc = sb_agent_spawn_as_user(&l->proc, &b->loop, l->session, argv, on_proc_exit, l, &err);
        if (rc == 0)
            l->pid = sb_agent_proc_pid(l->proc);
    } else {
        uv_process_options_t o;
        uv_stdio_container_t stdio[3];
        l->uvproc = sb_calloc(1, sizeof(*l->uvproc));
        if (l->uvproc == NULL) {
            rc = sb_error_set(&err, SB_ENOMEM, 0, "out of memory");
        } else {
            memset(&o, 0, sizeof(o));
            stdio[0].flags = UV_IGNORE;
            stdio[1].flags = UV_INHERIT_FD;
            stdio[1].data.fd = 1;
            stdio[2].flags = UV_INHERIT_FD;
            stdio[2].data.fd = 2;
            o.file = exe;
            o.args = argv;
            o.exit_cb = on_uvproc_exit;
            o.stdio = stdio;
            o.stdio_count = 3;
            o.flags = UV_PROCESS_WINDOWS_HIDE;
            l->uvproc->data = l;
            rc = uv_spawn(&b->loop, l->uvproc, &o);
            if (rc != 0) {
                sb_error_set(&err, SB_EIO, 0, "cannot start %s: %s", exe, uv_strerror(rc));
                /* a failed spawn still needs its handle closed */
                uv_close((uv_handle_t *)l->uvproc, on_uvproc_closed);
                rc = SB_EIO;
            } else {
                l->pid = l->uvproc->pid;
            }
        }
    }
    if (rc != 0) {
        l->backoff_ms = sb_backoff_next(l->backoff_ms, b->cfg->broker.agent_restart_backoff_ms,
                                        b->cfg->broker.agent_restart_max_backoff_ms);
        sb_errlog(l->name, "cannot start the agent of session %lu: %s; trying again in %lld ms",
                  (unsigned long)l->session, err.msg, (long long)l->backoff_ms);
        uv_timer_start(l->timer, on_restart_timer, (uint64_t)l->backoff_ms, 0);
        return;
    }
    l->running = 1;
    sb_info(l->name, "started the agent of session %lu (pid %lld)", (unsigned long)l->session,
            (long long)l->pid);
}

/* Serves session's endpoint and starts its agent. */
static int link_open(sb_agent_host *h, uint32_t session, sb_error *err)
{
    sb_broker *b = h->b;
    sb_adapter_config cfg;
    char *sddl = NULL, max_message[32];
    link *l;
    int rc;

    if (find_link(h, session) != NULL)
        return 0;
    l = sb_calloc(1, sizeof(*l));
    if (l == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    l->host = h;
    l->session = session;
    snprintf(l->name, sizeof(l->name), "agent-%lu", (unsigned long)session);
    endpoint_name(l->endpoint, sizeof(l->endpoint), b, session);
    if ((rc = sb_agent_endpoint_sddl(&sddl, session, h->as_session_user, err)) != 0) {
        sb_free(l);
        return rc;
    }
    snprintf(max_message, sizeof(max_message), "%d", AGENT_MAX_MESSAGE);
    {
        const char *const keys[] = {"path",           l->endpoint, "protocol",  "jsonl",
                                    "security",       sddl,        "max_message", max_message,
                                    /* one agent; the others are told so */
                                    "max_connections", "4",        "idle_timeout", "30s",
                                    "frame_timeout",  "30s",       "anonymous",  "true",
                                    NULL};
        rc = sb_adapter_config_build(&cfg, l->name, "pipe", keys, err);
    }
    if (rc != 0) {
        sb_free(sddl);
        sb_free(l);
        return rc;
    }
    rc = sb_adapter_create(&l->ep, b, &b->loop, &cfg, err);
    sb_adapter_config_free(&cfg);
    sb_free(sddl);
    if (rc != 0) {
        sb_free(l);
        return rc;
    }
    l->ep->agent = l;
    if ((rc = l->ep->type->start(l->ep, err)) != 0) {
        sb_adapter *ep = l->ep;
        ep->agent = NULL;
        sb_adapter_close(ep, NULL);
        sb_free(l);
        return rc;
    }
    l->timer = sb_malloc(sizeof(*l->timer));
    if (l->timer == NULL) {
        /* the endpoint closes through the usual path */
        l->next = h->links;
        h->links = l;
        l->removing = 1;
        link_check_gone(l);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    uv_timer_init(&b->loop, l->timer);
    l->timer->data = l;
    l->next = h->links;
    h->links = l;
    sb_info(l->name, "serving the agent of session %lu on %s", (unsigned long)session, l->endpoint);
    link_start_agent(l);
    return 0;
}

/* ---- the host ---- */

int sb_agent_host_apply(sb_broker *b, sb_error *err)
{
    sb_agent_host *h = b->agents;
    char *doc;
    size_t doc_len, nb;
    binding *bs;
    int n = make_plan(b, &doc, &doc_len, &bs, &nb), rc = 0;

    if (n < 0)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory planning the session agents");
    if (n == 0) {
        if (h != NULL && !h->stopping) {
            sb_info(NULL, "no adapters left for session agents: stopping them");
            sb_agent_host_stop(h);
        }
        return 0;
    }
    if (h != NULL && h->stopping) {
        /* still stopping after an earlier reload: agents come back next reload */
        sb_warn(NULL, "the session agents are still stopping; reload again to start them");
        sb_free(doc);
        h = NULL;
        goto free_bs;
    }
    if (h != NULL) {
        if (same_plan(h, doc, bs, nb)) {
            sb_free(doc);
            goto free_bs;
        }
        free_plan(h);
        h->doc = doc;
        h->doc_len = doc_len;
        h->bindings = bs;
        h->binding_count = nb;
        for (link *l = h->links; l != NULL; l = l->next)
            if (l->conn != NULL && !l->removing) {
                sb_info(l->name, "desktop adapters changed: restarting the agent of session %lu",
                        (unsigned long)l->session);
                l->restart_now = l->running;
                send_stop(l);
            }
        return 0;
    }
    h = sb_calloc(1, sizeof(*h));
    if (h == NULL) {
        sb_free(doc);
        rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        goto free_bs;
    }
    h->b = b;
    h->doc = doc;
    h->doc_len = doc_len;
    h->bindings = bs;
    h->binding_count = nb;
    h->as_session_user = b->service;
    b->agents = h;
    sb_info(NULL, "%d adapter%s run%s in session agents", n, n == 1 ? "" : "s", n == 1 ? "s" : "");
    if (h->as_session_user) {
        uint32_t ids[MAX_SESSIONS];
        size_t count = sb_agent_sessions(ids, MAX_SESSIONS);
        if (count > MAX_SESSIONS)
            count = MAX_SESSIONS;
        if (count == 0)
            sb_info(NULL, "no user is logged on: agents start at the next logon");
        for (size_t i = 0; i < count; i++) {
            sb_error lerr;
            if (link_open(h, ids[i], &lerr) != 0)
                sb_errlog(NULL, "session %lu: %s", (unsigned long)ids[i], lerr.msg);
        }
        return 0;
    }
    return link_open(h, sb_agent_current_session(), err);
free_bs:
    for (size_t i = 0; i < nb; i++) {
        sb_free(bs[i].queue);
        sb_free(bs[i].adapter);
    }
    sb_free(bs);
    return rc;
}

void sb_agent_host_stop(sb_agent_host *h)
{
    if (h->stopping)
        return;
    h->stopping = 1;
    if (h->links == NULL) {
        h->b->agents = NULL;
        free_plan(h);
        sb_free(h);
        return;
    }
    for (link *l = h->links, *next; l != NULL; l = next) {
        next = l->next; /* l may go at once */
        link_remove(l, "the broker stops");
    }
}

void sb_agent_host_session_event(sb_agent_host *h, uint32_t session, int logon)
{
    link *l = find_link(h, session);
    sb_error err;
    if (h->stopping || !h->as_session_user || session == 0)
        return;
    if (logon) {
        if (l != NULL && !l->removing)
            return;
        if (l != NULL) {
            sb_warn(NULL,
                    "session %lu: logged on again while its agent still stops; "
                    "its agent starts at the next rescan",
                    (unsigned long)session);
            return;
        }
        sb_info(NULL, "session %lu: a user logged on", (unsigned long)session);
        if (link_open(h, session, &err) != 0)
            sb_errlog(NULL, "session %lu: %s", (unsigned long)session, err.msg);
    } else if (l != NULL) {
        link_remove(l, "the user logged off");
    }
}

void sb_agent_host_rescan(sb_agent_host *h)
{
    uint32_t ids[MAX_SESSIONS];
    size_t count;
    if (h->stopping || !h->as_session_user)
        return;
    count = sb_agent_sessions(ids, MAX_SESSIONS);
    if (count > MAX_SESSIONS)
        count = MAX_SESSIONS;
    for (link *l = h->links, *next; l != NULL; l = next) {
        int present = 0;
        next = l->next;
        for (size_t i = 0; i < count; i++)
            present |= ids[i] == l->session;
        if (!present)
            link_remove(l, "the session has no user any more");
    }
    for (size_t i = 0; i < count; i++)
        if (find_link(h, ids[i]) == NULL)
            sb_agent_host_session_event(h, ids[i], 1);
}

json_t *sb_agent_host_stats(sb_agent_host *h)
{
    json_t *a = json_array();
    for (link *l = h->links; a != NULL && l != NULL; l = l->next) {
        json_t *o = json_pack("{s:I, s:s, s:b, s:I, s:I, s:I}", "session", (json_int_t)l->session,
                              "endpoint", l->endpoint, "connected", l->conn != NULL, "pid",
                              (json_int_t)(l->conn != NULL ? l->agent_pid
                                           : l->running    ? l->pid
                                                           : 0),
                              "starts", (json_int_t)l->starts, "restarts",
                              (json_int_t)(l->starts > 0 ? l->starts - 1 : 0));
        if (o != NULL && l->have_exit)
            json_object_set_new(o, "last_exit", json_integer((json_int_t)l->last_exit));
        if (o == NULL || json_array_append_new(a, o) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* ---- the endpoint's protocol ---- */

json_t *sb_agent_link_hello(struct sb_agent_link *l, struct sb_conn *conn, sb_agent_send_fn send,
                            json_t *req, const char *peer, sb_error *err)
{
    sb_agent_host *h = l->host;
    json_t *session = json_object_get(req, "session"), *version = json_object_get(req, "version");
    json_t *o, *bs;
    char prefix[64];

    if (h->stopping || l->removing)
        return sb_error_set(err, SB_ESHUTDOWN, 0, "the broker is stopping its agents"), NULL;
    if (!json_is_integer(session) || json_integer_value(session) != (json_int_t)l->session) {
        sb_warn(l->name,
                "peer %s: refused: an agent of session %lld on the endpoint of session %lu", peer,
                json_is_integer(session) ? (long long)json_integer_value(session) : -1LL,
                (unsigned long)l->session);
        sb_error_set(err, SB_EACCES, 0, "this endpoint serves the agent of session %lu",
                     (unsigned long)l->session);
        return NULL;
    }
    if (!json_is_string(version) || strcmp(json_string_value(version), SB_VERSION_STRING) != 0) {
        sb_warn(l->name, "peer %s: refused: agent version %s, broker version %s", peer,
                json_is_string(version) ? json_string_value(version) : "(none)", SB_VERSION_STRING);
        sb_error_set(err, SB_EVERSION, 0, "the broker is version %s", SB_VERSION_STRING);
        return NULL;
    }
    if (l->conn != NULL) {
        sb_warn(l->name, "peer %s: refused: session %lu has an agent already (pid %lld)", peer,
                (unsigned long)l->session, (long long)l->agent_pid);
        sb_error_set(err, SB_EEXIST, 0, "session %lu has an agent already (pid %lld)",
                     (unsigned long)l->session, (long long)l->agent_pid);
        return NULL;
    }
    snprintf(prefix, sizeof(prefix), "agent/%lu/", (unsigned long)l->session);
    o = json_pack("{s:s, s:I, s:s, s:s}", "op", "welcome", "session", (json_int_t)l->session,
                  "prefix", prefix, "config", h->doc);
    bs = json_array();
    for (size_t i = 0; o != NULL && bs != NULL && i < h->binding_count; i++)
        if (json_array_append_new(bs, json_pack("{s:s, s:s}", "sub", h->bindings[i].queue,
                                                "adapter", h->bindings[i].adapter)) != 0) {
            json_decref(bs);
            bs = NULL;
        }
    if (o == NULL || bs == NULL || json_object_set_new(o, "bindings", bs) != 0) {
        json_decref(o);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory"), NULL;
    }
    l->conn = conn;
    l->send = send;
    l->agent_pid = json_integer_value(json_object_get(req, "pid"));
    sb_info(l->name, "the agent of session %lu connected (pid %lld)", (unsigned long)l->session,
            (long long)l->agent_pid);
    return o;
}

void sb_agent_link_closed(struct sb_agent_link *l, struct sb_conn *conn)
{
    if (l->conn != conn)
        return;
    l->conn = NULL;
    drop_transient(l);
    if (l->removing || l->host->stopping)
        sb_info(l->name, "the agent of session %lu disconnected", (unsigned long)l->session);
    else
        sb_warn(l->name,
                "the agent of session %lu (pid %lld) disconnected; its deliveries "
                "return to their queues",
                (unsigned long)l->session, (long long)l->agent_pid);
    if (l->removing && !l->running)
        link_check_gone(l);
}

void sb_agent_link_log(struct sb_agent_link *l, struct sb_conn *conn, json_t *req)
{
    const char *level = json_string_value(json_object_get(req, "level"));
    const char *who = json_string_value(json_object_get(req, "who"));
    const char *text = json_string_value(json_object_get(req, "message"));
    int lvl = level != NULL ? sb_log_level_parse(level) : -1;
    (void)conn;
    if (text == NULL)
        return;
    if (lvl < 0 || lvl >= SB_LOG_OFF)
        lvl = SB_LOG_INFO;
    sb_log((sb_log_level)lvl, who != NULL ? who : l->name, "(agent of session %lu) %s",
           (unsigned long)l->session, text);
}

int sb_agent_link_may_sub(struct sb_agent_link *l, const char *name, int transient)
{
    char prefix[64];
    int n = snprintf(prefix, sizeof(prefix), "agent/%lu/", (unsigned long)l->session);
    if (strncmp(name, prefix, (size_t)n) == 0 && name[n] != '\0') {
        if (transient == 1) {
            char **more, *copy;
            for (size_t i = 0; i < l->transient_count; i++)
                if (strcmp(l->transient[i], name) == 0)
                    return 1;
            more = sb_realloc(l->transient, (l->transient_count + 1) * sizeof(*more));
            copy = sb_strdup(name);
            if (more == NULL || copy == NULL) {
                if (more != NULL)
                    l->transient = more;
                sb_free(copy);
                return 1; /* kept after the agent goes: no worse than durable */
            }
            l->transient = more;
            l->transient[l->transient_count++] = copy;
        }
        return 1;
    }
    if (transient == -1)
        return 0;
    for (size_t i = 0; i < l->host->binding_count; i++)
        if (strcmp(l->host->bindings[i].queue, name) == 0)
            return 1;
    return 0;
}
