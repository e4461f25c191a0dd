/*
 * Internal API of the COM relay (`switchboard com server`, docs/com.md):
 * the process COM starts (LocalServer32) when a client creates
 * Switchboard.Broker, running as that client's account, serving the COM
 * objects and talking to the running broker over its com endpoint (a named
 * pipe speaking jsonl, served by the `type: com` adapter, com.c), which
 * reads the relay's account from the pipe and applies the ACL to it.
 *
 *   com_server.c  the process: COM initialisation, the class factory, the
 *                 type library, lifetime, the clients it watches
 *   sb_com_link.c    a connection with a reader thread: requests matched to
 *                 replies by id, deliveries routed to its subscription,
 *                 reconnection, a housekeeping tick (one per Subscription,
 *                 and the process's, which only runs the tick)
 *   sb_com_pool.c    connections Broker objects publish on, each request read
 *                 on the calling thread
 *   com_broker.c  the Broker object (Publish, Subscribe, Stats)
 *   sb_com_sub.c     the Subscription object: a bounded buffer fed by a jsonl
 *                 consumer, Pull/Wait/Ack/Nack, the connection point and
 *                 the thread that raises OnMessage
 *   com_message.c the Message object, and parsing a delivery
 *   com_variant.c VARIANT conversions (payloads, headers, ids) and errors
 *
 * Threads. COM calls arrive on RPC threads of the multithreaded apartment
 * (the relay never enters a single-threaded one), so any method may run
 * concurrently with any other. Each link has a reader thread, which also
 * runs the housekeeping tick (idle subscriptions, OnMessage timeouts,
 * clients that exited); each subscription with an event sink has a thread
 * of its own that makes the OnMessage calls. Locks: the link's lock is
 * never held while calling into a subscription, and a subscription's lock
 * is never held while waiting for the broker.
 */
#ifndef SB_COM_INT_H
#define SB_COM_INT_H

#define COBJMACROS
#include <windows.h>
#include <ole2.h>
#include <olectl.h>

#include <jansson.h>
#include <stdint.h>

#include "adapters/com/switchboard_h.h" /* generated from switchboard.idl */
#include "service/error.h"

/* The default endpoint: the pipe `type: com` serves without `endpoint`. */
#define SB_COM_DEFAULT_ENDPOINT "switchboard-com"
/* How long a Subscription keeps its consumer attached with nobody pulling,
 * no event sink and nothing taken but unacknowledged: then it detaches,
 * and what it held returns to the queue without counting as an attempt
 * (well inside the default 30 s lease, which would count). */
#define SB_COM_HOLD_MS 5000
#define SB_COM_DEFAULT_TIMEOUT_MS 30000
#define SB_COM_DEFAULT_EVENT_TIMEOUT_MS 10000
#define SB_COM_MAX_BUFFER 10000

/* HRESULTs for SB_E* codes: FACILITY_ITF, 0x200 + the code's magnitude
 * (SB_EFULL, -9: 0x80040209); docs/com.md lists them. */
HRESULT sb_com_hresult(int sb_code);

/* ---- sb_com_link.c ---- */

typedef struct sb_com_link sb_com_link;
typedef struct sb_com_sub sb_com_sub;

/* An asynchronous request's answer, on the reader thread: reply is the
 * broker's answer (also an error reply), or NULL with err set when the
 * connection went away first. */
typedef void (*sb_com_reply_fn)(void *ctx, json_t *reply, const sb_error *err);

/* Starts the link to endpoint (a pipe name, or \\.\pipe\NAME): its reader
 * thread, which connects when first asked to. */
int sb_com__link_start(sb_com_link **out, const char *endpoint, sb_error *err);

/* Stops the reader thread, closes the connection and frees l (called on
 * l's own reader thread, the reader frees l when it returns to it). */
void sb_com__link_stop(sb_com_link *l);

/* Sends req (the link sets its "id") and waits up to timeout_ms for the
 * reply, connecting first if needed. Returns 0 with *out (new reference);
 * for an error reply its SB_E* code with err holding the broker's message;
 * SB_ECLOSED / SB_ECONNREFUSED / SB_ETIMEDOUT / SB_ETOOBIG with err saying
 * what happened. *out_gen (may be NULL) gets the connection the reply came
 * on. */
int sb_com__link_request(sb_com_link *l, json_t *req, int timeout_ms, json_t **out, uint64_t *out_gen,
                     sb_error *err);

/* Sends req on connection gen (0: the current one) without waiting; fn (may
 * be NULL) gets the reply. Returns 0, or SB_ECLOSED if gen is not up (fn is
 * then not called). */
int sb_com__link_post(sb_com_link *l, uint64_t gen, json_t *req, sb_com_reply_fn fn, void *ctx,
                  sb_error *err);

/* The current connection (0: none). */
uint64_t sb_com__link_gen(sb_com_link *l);

/* Subscriptions get deliveries, connection changes and ticks. */
void sb_com__link_add_sub(sb_com_link *l, sb_com_sub *s);
void sb_com__link_remove_sub(sb_com_link *l, sb_com_sub *s);

/* Keeps connecting while some subscription wants to be attached. */
void sb_com__link_want(sb_com_link *l, int on);

/* Runs the housekeeping tick soon (on the reader thread). */
void sb_com__link_wake(sb_com_link *l);

/* Asks the housekeeping tick to run at `at_ms` (sb_com_now_ms) at the
 * latest. */
void sb_com__link_tick_at(sb_com_link *l, int64_t at_ms);

int64_t sb_com_now_ms(void);

/* Connecting found no pipe of the endpoint's name (ERROR_FILE_NOT_FOUND):
 * 1 (after a short pause) to try again, for up to a second from the first
 * such answer (*since, 0 at first), else 0. The broker's pipe server can
 * be between instances for a moment under load (seen under Wine); a
 * broker that is not running costs the caller that second. */
int sb_com_not_found_retry(int64_t *since);

/* ---- sb_com_pool.c ---- */

/* Connections for requests that wait for their reply on the calling
 * thread (Broker objects: Publish, Stats, User). */
typedef struct sb_com_pool sb_com_pool;

int sb_com__pool_new(sb_com_pool **out, const char *endpoint, sb_error *err);
void sb_com__pool_free(sb_com_pool *p);

/* Sends req (its "id" is set here) on an idle connection, or a new one,
 * and waits up to timeout_ms for the reply (*out, new reference). A
 * payload_len over the broker's max_message is refused before anything is
 * sent (SB_ETOOBIG). Returns as sb_com__link_request. */
int sb_com__pool_request(sb_com_pool *p, json_t *req, size_t payload_len, int timeout_ms, json_t **out,
                     sb_error *err);

/* The account the broker sees for this process (sb_free it; NULL when it
 * could not tell). */
int sb_com__pool_user(sb_com_pool *p, int timeout_ms, char **out_user, sb_error *err);

/* ---- com_message.c ---- */

/* A delivery as the relay keeps it. Immutable once parsed; shared by
 * reference between a subscription's buffer, Message objects and event
 * calls. */
typedef struct sb_com_msg {
    LONG refs;
    uint64_t id;
    uint64_t gen; /* the connection it came on: acks go back on it */
    char *sub;
    char *topic;
    unsigned char *payload;
    size_t payload_len;
    int attempt;
    json_t *headers; /* an object, or NULL */
    struct sb_com_msg *next;
} sb_com_msg;

/* Parses a jsonl "msg" line's object. Returns NULL on a malformed one. */
sb_com_msg *sb_com__msg_parse(json_t *o, uint64_t gen);
sb_com_msg *sb_com__msg_ref(sb_com_msg *m);
void sb_com__msg_unref(sb_com_msg *m);

/* A new Message object for m (takes a reference on m). */
HRESULT sb_com__message_new(sb_com_msg *m, DWORD client_pid, IMessage **out);

/* ---- com_variant.c ---- */

/* A VARIANT argument that was left out (VT_ERROR DISP_E_PARAMNOTFOUND,
 * VT_EMPTY). */
int sb_com__var_missing(const VARIANT *v);

/* Sets the IErrorInfo of this call (description `why`, source
 * Switchboard.<what>) and returns hr. */
HRESULT sb_com__fail(HRESULT hr, REFIID iid, const char *what, const char *fmt, ...) SB_PRINTF(4, 5);

/* The same for an SB_E* code with err's message. */
HRESULT sb_com__fail_sb(const sb_error *err, REFIID iid, const char *what);

/* A BSTR as UTF-8 (sb_free it): NULL BSTRs are "". Returns 0, SB_EINVAL for
 * text that is not valid UTF-16, SB_ENOMEM. */
int sb_com__bstr_utf8(BSTR b, char **out, size_t *out_len);

/* UTF-8 bytes as a new BSTR; NULL if they are not valid UTF-8 or on
 * out-of-memory. */
BSTR sb_com__utf8_bstr(const char *s, size_t len);

/* A payload argument: a String (its UTF-8), a Byte array (its bytes),
 * Empty/Null (nothing), a number, Date or Boolean (its text), by reference
 * or not. *out is sb_malloc'ed (may be NULL when *out_len is 0); *out_text
 * tells whether it is text. Returns S_OK or an HRESULT with the reason in
 * why. */
HRESULT sb_com__payload_in(const VARIANT *v, unsigned char **out, size_t *out_len, int *out_text,
                       char *why, size_t why_n);

/* A payload for a client: a String if it is valid UTF-8, else (or with
 * as_bytes) a Byte array. */
HRESULT sb_com__payload_out(const unsigned char *p, size_t len, int as_bytes, VARIANT *out);

/* Headers argument: missing/Empty/Null (none), an array of name, value,
 * name, value, ... or an object with Keys() and Item(key) (a
 * Scripting.Dictionary). Fills obj (a JSON object of strings). */
HRESULT sb_com__headers_in(const VARIANT *v, json_t *obj, char *why, size_t why_n);

/* A message id argument: a number or a decimal string. */
HRESULT sb_com__id_in(const VARIANT *v, uint64_t *out, char *why, size_t why_n);

/* An integer argument with a default when missing. */
HRESULT sb_com__long_in(const VARIANT *v, long def, long *out, char *why, size_t why_n);

/* ---- com_server.c ---- */

/* Appends a line to the file named by the environment variable
 * SB_COM_LOG (the relay has no console; COM starts it with the client's
 * environment under Wine, the service's on Windows). Nothing when unset. */
void sb_com__log(const char *fmt, ...) SB_PRINTF(1, 2);

/* The AppID of the relay (com_register.c): its launch and access
 * permissions. */
extern const GUID APPID_Switchboard;

/* Releases a reference on the process (CoReleaseServerProcess); the last
 * one ends it. */
void sb_com__server_release(void);

/* The type information of an interface or coclass of the embedded type
 * library (no new reference). */
ITypeInfo *sb_com__typeinfo(REFGUID guid);

/* The process's link: never connected, its thread runs the housekeeping
 * (clients that exited). Subscriptions have links of their own (one jsonl
 * connection attaches one consumer per subscription name). */
sb_com_link *sb_com__server_link(void);

/* The connections Broker objects publish on. */
sb_com_pool *sb_com__server_pool(void);

/* The endpoint the relay was started for. */
const char *sb_com__server_endpoint(void);

/* Objects keep the process alive; tracked per client process so that a
 * client that exits without releasing them (COM's own garbage collection
 * takes minutes on Windows and does not exist under Wine) is cleaned up
 * at once. */
typedef struct sb_com_obj {
    IUnknown *unk;
    LONG *refs; /* the object's count: the server takes a reference only while it is > 0 */
    LONG server_ref; /* 1 while the object keeps the process alive */
    DWORD pid; /* the client process, 0: unknown */
    void (*client_gone)(struct sb_com_obj *o); /* NULL: only disconnected */
    struct sb_com_obj *prev, *next;
} sb_com_obj;

/* The process id of the caller of the current COM call, or 0. */
DWORD sb_com__caller_pid(void);

/* Registers o (a new object): it keeps the process alive
 * (CoAddRefServerProcess) and its client is watched. */
void sb_com__server_track(sb_com_obj *o);
/* The object is being freed: the process may end if it was the last. An
 * object whose client exited stopped counting already (COM may never
 * release it: Wine's stubs do not always let go of a dead client's
 * references). */
void sb_com__server_untrack(sb_com_obj *o);
/* From the housekeeping tick: clients that exited are cleaned up. */
void sb_com__server_reap(void);

/* ---- com_broker.c / sb_com_sub.c ---- */

HRESULT sb_com__broker_new(DWORD client_pid, REFIID iid, void **out);

/* Creates the subscription `name` (with filter, if not NULL) and attaches
 * it; on failure returns the COM error (IErrorInfo set). */
HRESULT sb_com__sub_new(const char *name, const char *filter, DWORD client_pid, long timeout_ms,
                    ISubscription **out);

/* Called by the link (reader thread). */
void sb_com__sub_on_msg(sb_com_sub *s, sb_com_msg *m);
void sb_com__sub_on_link(sb_com_sub *s, uint64_t gen);
void sb_com__sub_tick(sb_com_sub *s, int64_t now);
const char *sb_com__sub_name(const sb_com_sub *s);
/* A reference for the link's reader, unless the object is being freed. */
int sb_com__sub_try_ref(sb_com_sub *s);
void sb_com__sub_unref(sb_com_sub *s);

#endif
