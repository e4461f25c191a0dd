/*
 * The service's side of the session agents (docs/agent.md).
 *
 * When desktop adapters run in agents (`broker.desktop`), the broker serves
 * one endpoint per Windows session (a named pipe only SYSTEM and the
 * session's logon SID may open; a Unix socket on POSIX), speaking jsonl
 * with three additions: `hello` (the agent gets the YAML of the adapters it
 * hosts and the queues its sinks consume), `log` (its log lines, written
 * to the broker's log), and `stop` sent to it. It starts an agent in each
 * session where a user is logged on (the service) or in its own session
 * (`switchboard run`), restarts one that exits with exponential backoff
 * (logged), and asks agents to stop before the broker stops.
 *
 * Everything runs on the loop thread; session logons and logoffs arrive
 * through sb_broker_session_event.
 */
#ifndef SB_AGENT_HOST_H
#define SB_AGENT_HOST_H

#include "service/error.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sb_broker sb_broker;
typedef struct sb_agent_host sb_agent_host;
struct sb_agent_link; /* one session: its endpoint and agent */
struct sb_conn;

/* Makes b serve agents as its config says (b->agents): starts serving when
 * desktop adapters run in agents, updates agents after a reload (an agent
 * whose adapters changed is restarted), stops serving when none remain.
 * Returns 0, or an error (with err) if an endpoint cannot be served. */
int sb_agent_host_apply(sb_broker *b, sb_error *err);

/* Stops every agent (each gets `stop` and a few seconds to finish), then
 * closes the endpoints; frees the host and clears b->agents when done. */
void sb_agent_host_stop(sb_agent_host *h);

/* A user logged on to or off from a session. */
void sb_agent_host_session_event(sb_agent_host *h, uint32_t session, int logon);

/* Session events were lost: compare the sessions with the OS's list. */
void sb_agent_host_rescan(sb_agent_host *h);

/* The `agents` array of the broker's stats (new reference, or NULL). */
json_t *sb_agent_host_stats(sb_agent_host *h);

/* ---- for the jsonl protocol on an agent's endpoint ---- */

/* Writes a line to the agent's connection: the protocol's (jsonl.c), as the
 * core links no adapter code. */
typedef void (*sb_agent_send_fn)(struct sb_conn *conn, const char *line, size_t len);

/* An agent said hello on conn (lines to it go through send): returns the
 * welcome reply (new reference) or NULL with err set (another agent is
 * connected, wrong session, ...). */
json_t *sb_agent_link_hello(struct sb_agent_link *l, struct sb_conn *conn, sb_agent_send_fn send,
                            json_t *req, const char *peer, sb_error *err);

/* The agent's connection closed. */
void sb_agent_link_closed(struct sb_agent_link *l, struct sb_conn *conn);

/* A `log` request: written to the broker's log. */
void sb_agent_link_log(struct sb_agent_link *l, struct sb_conn *conn, json_t *req);

/* 1 if the agent may consume (`sub`) subscription `name`: a queue of its
 * adapters' routes, or one of its own (agent/<session>/...), which it may
 * create; transient (1) ones are deleted when it disconnects. With
 * transient -1 (deleting one): only its own. */
int sb_agent_link_may_sub(struct sb_agent_link *l, const char *name, int transient);

#endif
