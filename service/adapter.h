/*
 * The adapter interface: how a mechanism (TCP, UDP, Unix socket, exec, and
 * on Windows named pipes, mailslots, DDE, ...) plugs into the broker.
 *
 * An adapter type is a versioned struct of function pointers plus capability
 * flags, registered once in the registry (service/registry.c), which rejects
 * duplicate names. The interface and the registry belong to the broker's
 * core; the types themselves live in adapters/ and are registered by the
 * program that links them (service/main.c registers adapters/builtin.h).
 *
 * An adapter instance is created from its config, started on the loop
 * thread, and may act as a source (it publishes with sb_broker_publish)
 * and/or a sink (routes deliver to it through the consumer it attaches with
 * sb_broker_attach). Adapters that need their own thread talk to the loop
 * only through the thread-safe calls in service/broker.h.
 */
#ifndef SB_ADAPTER_H
#define SB_ADAPTER_H

#include "config/config.h"
#include "service/error.h"

#include <stdint.h>
#include <uv.h>

#define SB_ADAPTER_VERSION 1

enum {
    SB_CAP_SOURCE = 1 << 0,  /* can publish what it receives */
    SB_CAP_SINK = 1 << 1,    /* can be a route destination */
    SB_CAP_DESKTOP = 1 << 2, /* needs an interactive session (runs in the agent) */
    SB_CAP_THREAD = 1 << 3   /* runs its own thread */
};

typedef struct sb_broker sb_broker;
typedef struct sb_adapter sb_adapter;
typedef struct sb_adapter_type sb_adapter_type;
typedef struct sb_delivery sb_delivery;
typedef void (*sb_adapter_stopped_cb)(sb_adapter *a);

/* Common head of every adapter instance (embed as the first member). */
struct sb_adapter {
    const sb_adapter_type *type;
    sb_broker *broker;
    uv_loop_t *loop;
    sb_adapter_config *cfg; /* the adapter's own deep copy */
    const char *name;       /* == cfg->name */
    int stopping;
    int trusted;                 /* the local admin endpoint: no anonymous refusal, no ACLs */
    /* Named pipe servers (Windows): each client's account (DOMAIN\name,
     * from its token) is its connection's user, for the ACL file. Set by
     * the type that owns the endpoint (com). */
    int os_user;
    struct sb_agent_link *agent; /* a session agent's endpoint (service/agent_host.c), or NULL */
    sb_adapter *next;            /* private: the broker's list */
    sb_adapter_stopped_cb on_closed; /* private */
};

struct sb_adapter_type {
    int version;      /* SB_ADAPTER_VERSION */
    const char *name; /* the config `type` */
    unsigned caps;
    /* Optional: the capabilities of one configured instance, when they depend
     * on its settings (a UDP listener is only a source, a UDP client only a
     * sink). NULL: `caps`. */
    unsigned (*caps_of)(const sb_adapter_config *cfg);
    /* Allocates the instance (nothing is opened yet). Its settings were
     * checked by its keys' validate hook in the config pass
     * (config/adapter_keys.h); create refuses only what this system alone
     * can tell (a code page not installed). */
    int (*create)(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err);
    /* Opens listeners / connects / spawns. Logs where it listens. */
    int (*start)(sb_adapter *a, sb_error *err);
    /* Sink: takes one delivery (the payload to write is d->msg). Returns 0
     * if taken (call sb_delivery_done when written / acknowledged), or
     * SB_EBUSY if it cannot take one now (then call sb_adapter_sink_ready
     * when it can). NULL for source-only types. */
    int (*deliver)(sb_adapter *a, sb_delivery *d);
    /* Closes everything; calls cb once all handles are closed. */
    void (*stop)(sb_adapter *a, sb_adapter_stopped_cb cb);
    /* Frees the instance after stop completed. */
    void (*destroy)(sb_adapter *a);
    /* Optional: a config reload kept this running adapter (its config is
     * unchanged). Re-reads what start() loaded from files that may have
     * been renewed in place (TLS certificates and keys); on an error it
     * keeps what it had and logs why. NULL: nothing to re-read. */
    void (*refresh)(sb_adapter *a);
    /* Optional: the instance's own counters, shown by the stats (`sbctl
     * stats --json`: "adapters": {NAME: {...}}) as a new jansson object
     * (json_t *), or NULL on out-of-memory. Loop thread. NULL: none. */
    void *(*stats)(sb_adapter *a);
    /* Optional: whether a reload may start an instance with cfg in this
     * process (a new adapter, or one whose config changed), asked before
     * the reload stops or starts anything. 0, or SB_ECONFIG with err naming
     * the adapter and key: then the whole reload is refused and the running
     * configuration kept. Loop thread. NULL: always. */
    int (*reload_check)(const sb_adapter_config *cfg, sb_error *err);
};

/* The next delay of an exponential backoff (reconnects, restarts): `first`
 * when current is 0, else double, capped at max. */
static inline int64_t sb_backoff_next(int64_t current, int64_t first, int64_t max)
{
    if (current <= 0)
        return first;
    return current >= max / 2 ? max : current * 2;
}

/* How many types the registry holds. */
#define SB_ADAPTER_TYPES_MAX 32

/* Registers a type (the registry keeps the pointer: type must outlive every
 * broker). Returns 0, or with err naming the type: SB_EVERSION (type->version
 * is not SB_ADAPTER_VERSION), SB_EEXIST (a type of that name is registered
 * already), SB_EFULL (SB_ADAPTER_TYPES_MAX types are registered). */
int sb_adapter_register(const sb_adapter_type *type, sb_error *err);

/* Registers each type of the NULL-terminated list, stopping at the first
 * failure (its code, err as sb_adapter_register sets it). */
int sb_adapter_register_all(const sb_adapter_type *const *types, sb_error *err);

/* Finds a registered type by name, or NULL. */
const sb_adapter_type *sb_adapter_find(const char *name);

/* 1 if the adapter cfg describes needs an interactive session: its type has
 * SB_CAP_DESKTOP (under the service, session agents host it: docs/agent.md). */
int sb_adapter_is_desktop(const sb_adapter_config *cfg);

/* Creates an instance through its type, filling the common head (deep-copies
 * cfg). */
int sb_adapter_create(sb_adapter **out, sb_broker *broker, uv_loop_t *loop,
                      const sb_adapter_config *cfg, sb_error *err);

/* A sink adapter can take deliveries again (a client connected, a write
 * completed, a child restarted). */
void sb_adapter_sink_ready(sb_adapter *a);

/* Stops (if started) and destroys; cb (may be NULL) runs just before destroy. */
void sb_adapter_close(sb_adapter *a, sb_adapter_stopped_cb cb);

#endif
