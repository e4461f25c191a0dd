/*
 * The broker's side of COM (`type: com`, docs/com.md): the endpoint the COM
 * relays talk to. COM starts a relay (`switchboard com server`, the
 * LocalServer32 of Switchboard.Broker) as the client's account; the relay
 * speaks jsonl over this named pipe, and the broker takes the account the
 * pipe's client runs as (its token, read when its first request arrives)
 * as the connection's user: the ACL file applies to the Windows account
 * of the script or program that called Publish or Subscribe.
 *
 * The endpoint is a `type: pipe` jsonl server kept inside this adapter
 * (as the session agents' endpoints are, service/agent_host.c), with the
 * os_user flag set; its default DACL is the pipe's (SYSTEM and
 * Administrators, interactive users read/write, the broker's account). It
 * is a source only: COM clients subscribe for themselves.
 */
#include "service/adapter.h"
#include "service/alloc.h"
#include "service/log.h"

#include <stdio.h>
#include <string.h>

#define DEFAULT_ENDPOINT "switchboard-com"
#define DEFAULT_MAX_MESSAGE (16 * 1024 * 1024)
#define DEFAULT_MAX_CONNECTIONS 256
#define CONN_TIMEOUT_MS 30000

typedef struct com_adapter {
    sb_adapter base;
    sb_adapter *ep; /* the pipe endpoint, once started */
    sb_adapter_stopped_cb stopped;
    struct com_adapter *next;
} com_adapter;

/* Adapters whose endpoint is closing: the endpoint's stop callback finds
 * its owner here (an adapter carries no context pointer). Loop thread. */
static com_adapter *closing;

/* The settings this type reads (until the per-type key tables land, from
 * the common adapter fields: path, security, max_message,
 * max_connections). */
typedef struct com_settings {
    const char *endpoint;
    const char *security;
    int64_t max_message;
    int max_connections;
} com_settings;

static void settings_of(const sb_adapter_config *cfg, com_settings *out)
{
    out->endpoint = cfg->path != NULL ? cfg->path : DEFAULT_ENDPOINT;
    out->security = cfg->security;
    out->max_message = cfg->max_message > 0 ? cfg->max_message : DEFAULT_MAX_MESSAGE;
    out->max_connections = cfg->max_connections > 0 ? cfg->max_connections
                                                    : DEFAULT_MAX_CONNECTIONS;
}

static int com_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    com_adapter *ca = sb_calloc(1, sizeof(*ca));
    if (ca == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    *out = &ca->base;
    return 0;
}

static int com_start(sb_adapter *a, sb_error *err)
{
    com_adapter *ca = (com_adapter *)a;
    com_settings s;
    sb_adapter_config cfg;
    int rc;

    settings_of(a->cfg, &s);
    memset(&cfg, 0, sizeof(cfg));
    cfg.name = (char *)a->name;
    cfg.type = "pipe";
    cfg.path = (char *)s.endpoint;
    cfg.protocol = "jsonl";
    cfg.security = (char *)s.security;
    cfg.max_message = s.max_message;
    cfg.max_connections = s.max_connections;
    cfg.idle_timeout_ms = CONN_TIMEOUT_MS;
    cfg.frame_timeout_ms = CONN_TIMEOUT_MS;
    cfg.inflight = 1;
    cfg.anonymous = 1; /* a client the pipe cannot identify gets the ACL's anonymous rules */
    cfg.pos = a->cfg->pos;
    if ((rc = sb_adapter_create(&ca->ep, a->broker, a->loop, &cfg, err)) != 0)
        return rc;
    ca->ep->os_user = 1;
    if ((rc = ca->ep->type->start(ca->ep, err)) != 0) {
        sb_adapter *ep = ca->ep;
        ca->ep = NULL;
        sb_adapter_close(ep, NULL);
        return rc;
    }
    sb_info(a->name, "COM relays (Switchboard.Broker) reach the broker here; callers are "
                     "identified by their Windows account");
    return 0;
}

static void on_endpoint_closed(sb_adapter *ep)
{
    com_adapter **pp;
    for (pp = &closing; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->ep == ep) {
            com_adapter *ca = *pp;
            *pp = ca->next;
            ca->ep = NULL;
            ca->stopped(&ca->base);
            return;
        }
}

static void com_stop(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    com_adapter *ca = (com_adapter *)a;
    if (ca->ep == NULL) {
        cb(a);
        return;
    }
    ca->stopped = cb;
    ca->next = closing;
    closing = ca;
    sb_adapter_close(ca->ep, on_endpoint_closed);
}

static void com_destroy(sb_adapter *a)
{
    sb_free(a);
}

const sb_adapter_type sb_adapter_com = {
    .version = SB_ADAPTER_VERSION,
    .name = "com",
    .caps = SB_CAP_SOURCE | SB_CAP_THREAD,
    .create = com_create,
    .start = com_start,
    .stop = com_stop,
    .destroy = com_destroy,
};
