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
#include "adapters/com/com_keys.h"
#include "service/adapter.h"
#include "service/alloc.h"
#include "service/log.h"

#include <stdio.h>
#include <string.h>


typedef struct com_adapter {
    sb_adapter base;
    sb_adapter *ep; /* the pipe endpoint, once started */
    sb_adapter_stopped_cb stopped;
    struct com_adapter *next;
} com_adapter;

/* Adapters whose endpoint is closing: the endpoint's stop callback finds
 * its owner here (an adapter carries no context pointer). Loop thread. */
static com_adapter *closing;

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
    const sb_com_settings *s = SB_SETTINGS(const sb_com_settings, a->cfg);
    sb_adapter_config cfg;
    char max_message[32], max_connections[32];
    int rc;

    snprintf(max_message, sizeof max_message, "%lld", (long long)s->max_message);
    snprintf(max_connections, sizeof max_connections, "%d", s->max_connections);
    {
        /* a client the pipe cannot identify gets the ACL's anonymous rules */
        const char *const keys[] = {"path",          s->endpoint, "protocol",     "jsonl",
                                    "security",      s->security, "max_message",  max_message,
                                    "max_connections", max_connections, "idle_timeout", "30s",
                                    "frame_timeout", "30s",       "anonymous",    "true",
                                    NULL};
        rc = sb_adapter_config_build(&cfg, a->name, "pipe", keys, err);
    }
    if (rc != 0)
        return rc;
    rc = sb_adapter_create(&ca->ep, a->broker, a->loop, &cfg, err);
    sb_adapter_config_free(&cfg);
    if (rc != 0)
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
