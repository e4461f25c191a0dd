/*
 * sbrpc: a small C client library for Switchboard's MS-RPC interface
 * (switchboard.idl), Windows only. It owns the binding, authenticates as
 * the interface asks, converts what the broker returns into plain structs,
 * and turns the RPC runtime's exceptions (broker not running, call cut,
 * argument out of range, unknown handle) into error codes: no call of this
 * library raises.
 *
 * Endpoints:
 *   NAME           ncalrpc, endpoint NAME on this computer ("switchboard" is
 *                  the broker's default)
 *   HOST:PORT      ncacn_ip_tcp (HOST a name, an IPv4 or a [bracketed] IPv6
 *                  address)
 * optionally prefixed with "rpc:" (sbctl's spelling), e.g. rpc:switchboard,
 * rpc:127.0.0.1:4750.
 *
 * Every function returns 0 or a negative SB_E* code (service/error.h) and,
 * on failure, fills err (may be NULL) with the code, the RPC status or
 * broker code in err->sys, and one line of text: the broker's reason for a
 * refusal, or the runtime's message. A binding may be used by several
 * threads at once; a subscription by one thread at a time.
 */
#ifndef SB_RPC_CLIENT_H
#define SB_RPC_CLIENT_H

#include "service/error.h"

#include <stddef.h>
#include <stdint.h>

typedef struct sb_rpc sb_rpc;         /* a binding to a broker */
typedef struct sb_rpc_sub sb_rpc_sub; /* an open subscription */

/* The default endpoint: ncalrpc "switchboard". */
#define SB_RPC_DEFAULT_ENDPOINT "switchboard"

typedef struct sb_rpc_options {
    /* TCP: do not authenticate. Only a broker whose adapter says
     * anonymous: true takes such callers, from its own computer only. */
    int anonymous;
} sb_rpc_options;

/* Binds to endpoint (NULL or "": the default). Nothing is sent yet: a
 * broker that is not running shows with the first call (SB_ECONNREFUSED).
 * Over TCP the binding authenticates as the current user (NTLM) unless
 * opts->anonymous; over ncalrpc Windows passes the caller's identity
 * itself. Returns 0, SB_EINVAL (a malformed endpoint), SB_EAUTH (the
 * security package is not available: under Wine NTLM needs Samba's
 * ntlm_auth) or SB_ENOMEM. */
int sb_rpc_connect(sb_rpc **out, const char *endpoint, const sb_rpc_options *opts, sb_error *err);

/* Frees the binding (open subscriptions must be closed first). NULL is ok. */
void sb_rpc_free(sb_rpc *c);

/* The endpoint in canonical form: "rpc:NAME" or "rpc:HOST:PORT". */
const char *sb_rpc_endpoint(const sb_rpc *c);

typedef struct sb_rpc_header {
    const char *key;
    const char *value;
} sb_rpc_header;

typedef struct sb_rpc_pub_opts {
    int retain;     /* also the topic's retained value */
    int priority;   /* 0..9 */
    int64_t ttl_ms; /* 0: never expires */
} sb_rpc_pub_opts;

/* Publishes; returns once the broker committed the message. *out_id (may be
 * NULL) gets its id, *out_queues (may be NULL) how many queues took it.
 * headers/opts may be NULL. */
int sb_rpc_publish(sb_rpc *c, const char *topic, const void *payload, size_t len,
                   const sb_rpc_header *headers, size_t nheaders, const sb_rpc_pub_opts *opts,
                   uint64_t *out_id, int *out_queues, sb_error *err);

typedef struct sb_rpc_sub_opts {
    int window;       /* unacknowledged deliveries at once, 0: 100 */
    int durability;   /* SB_RPC_DURABILITY_* of switchboard.idl, 0: default */
    int max_attempts; /* 0: default */
    int transient;
    int64_t lease_ms, ttl_ms, max_depth, expire_ms; /* 0: default */
    const char *retained; /* a filter of retained values to queue, or NULL */
} sb_rpc_sub_opts;

/* Opens subscription `name`, creating it with filter if it does not exist.
 * *out_filters (may be NULL; sb_free it) gets its filters, '\n' between. */
int sb_rpc_subscribe(sb_rpc_sub **out, sb_rpc *c, const char *name, const char *filter,
                     const sb_rpc_sub_opts *opts, char **out_filters, sb_error *err);

/* The subscription's name. */
const char *sb_rpc_sub_name(const sb_rpc_sub *s);

typedef struct sb_rpc_delivery {
    uint64_t msg_id;
    int attempt; /* 1 + failed attempts */
    int64_t created_ms;
    const char *topic;
    const unsigned char *payload;
    size_t payload_len;
    const sb_rpc_header *headers;
    size_t header_count;
} sb_rpc_delivery;

typedef struct sb_rpc_batch {
    size_t count;
    sb_rpc_delivery *items;
    void *priv; /* the memory the items point into */
} sb_rpc_batch;

/* Pulls up to max (1..1000) deliveries, waiting up to wait_ms (0: not at
 * all; the broker caps it) when none is waiting. *out (sb_rpc_batch_free
 * it) may hold none. */
int sb_rpc_pull(sb_rpc_sub *s, sb_rpc_batch **out, size_t max, int wait_ms, sb_error *err);

void sb_rpc_batch_free(sb_rpc_batch *b);

/* Acknowledges / refuses n (1..1000) pulled deliveries by id. *out_done (may
 * be NULL) counts those that were outstanding; SB_ENOTFOUND if some were
 * not. reason may be NULL. */
int sb_rpc_ack(sb_rpc_sub *s, const uint64_t *ids, size_t n, size_t *out_done, sb_error *err);
int sb_rpc_nack(sb_rpc_sub *s, const uint64_t *ids, size_t n, const char *reason, size_t *out_done,
                sb_error *err);

/* Closes the subscription (what was not acknowledged goes back to the queue)
 * and frees s, whatever the result; with delete_sub also deletes it. */
int sb_rpc_unsubscribe(sb_rpc_sub *s, int delete_sub, sb_error *err);

/* The broker's statistics as JSON text (*out, sb_free it). */
int sb_rpc_stats(sb_rpc *c, char **out, sb_error *err);

typedef struct sb_rpc_dead_letter {
    int64_t dlq_id;
    const char *sub;
    uint64_t msg_id;
    const char *topic;
    const unsigned char *payload;
    size_t payload_len;
    const sb_rpc_header *headers;
    size_t header_count;
    const char *reason; /* may be NULL */
    const char *source; /* may be NULL */
    int attempts;
    int64_t dead_at_ms;
} sb_rpc_dead_letter;

typedef struct sb_rpc_dead_letters {
    size_t count;
    sb_rpc_dead_letter *items;
    int64_t next; /* pass as `after` for the next page; 0: this was the last */
    void *priv;
} sb_rpc_dead_letters;

/* Dead letters of sub (NULL: all) after dlq_id `after`, at most limit
 * (0: 100). Administrators only (SB_EACCES). */
int sb_rpc_dlq_list(sb_rpc *c, const char *sub, int64_t after, int limit, sb_rpc_dead_letters **out,
                    sb_error *err);
void sb_rpc_dead_letters_free(sb_rpc_dead_letters *d);

/* Re-drives / purges the dead letters of sub (NULL: all); *out_count how
 * many. Administrators only. */
int sb_rpc_dlq_redrive(sb_rpc *c, const char *sub, int64_t *out_count, sb_error *err);
int sb_rpc_dlq_purge(sb_rpc *c, const char *sub, int64_t *out_count, sb_error *err);

/* Who the broker takes the caller for: *out_user (sb_free it; NULL when
 * anonymous) and *out_flags (SB_RPC_CALLER_* of switchboard.idl). Both may
 * be NULL. */
int sb_rpc_whoami(sb_rpc *c, char **out_user, int *out_flags, sb_error *err);

/* The SB_E* code for an RPC status (a runtime exception's code). */
int sb_rpc_status_code(unsigned long status);

#endif
