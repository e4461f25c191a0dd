/*
 * Internals of the MS-RPC adapter (Windows), shared by its files:
 *   rpc.c        the adapter type and the process's RPC server: the
 *                interface of tools/rpc/switchboard.idl is registered once
 *                per process while an rpc adapter runs; each adapter opens
 *                its protocol sequence and endpoint, and serves the calls
 *                that come in over its protocol sequence (one adapter each);
 *   rpc_caller.c who calls: protocol sequence, loopback or not,
 *                authentication, the Windows account and whether it is an
 *                administrator; the adapter's admission rules and the
 *                interface's security callback;
 *   rpc_calls.c  the procedures of the interface, run on the RPC runtime's
 *                threads: argument checks, the hand-off to the loop and the
 *                wait for its answer;
 *   rpc_loop.c   the loop side: publishing, subscriptions (a consumer each,
 *                whose deliveries wait in a small buffer until a pull takes
 *                them), acks, statistics, dead letters.
 *
 * Threads: the RPC runtime calls the procedures on threads of its own (on
 * Windows a pool; under Wine one per request). They never touch the broker:
 * each hands the loop a job through the adapter's inbox, posted under the
 * adapter's lock after checking that it is not stopping (so nothing is posted
 * to a closed inbox), and waits on the job's condition for the answer. A
 * publish is answered from its commit callback, so SbPublish returns only
 * after the commit. What both sides touch is under the adapter's lock: the
 * job's state, a subscription's buffer of deliveries and its credit.
 *
 * Lifetimes: the adapter is counted (refs, under its lock): the adapter
 * itself until destroy, every call in progress, every subscription handle
 * and every job. A stop closes the inbox, detaches every subscription and
 * wakes every waiting pull; calls still in progress then find it stopping and
 * answer SB_RPC_ESHUTDOWN. Its last reference frees it, on whichever thread.
 * A subscription is counted the same way: its context handle, its place on
 * the loop (attached), and jobs that name it.
 */
#ifndef SB_RPC_INT_H
#define SB_RPC_INT_H

#include "service/adapter.h"
#include "service/broker.h"
#include "service/inbox.h"
#include "tools/rpc/sbrpc_alloc.h"

#include <stdint.h>

#include <windows.h>

#include "switchboard_h.h"

/* How long a call waits for the loop's answer: a publish for its commit,
 * everything else for a loop round trip. */
#define SB_RPC_COMMIT_WAIT_MS 60000
#define SB_RPC_LOOP_WAIT_MS 30000
/* The most deliveries one subscription handle may hold unacknowledged. */
#define SB_RPC_WINDOW_MAX 10000
#define SB_RPC_WINDOW_DEFAULT 100
/* Longest ACL user name kept (DOMAIN\name in UTF-8). */
#define SB_RPC_USER_MAX 512

/* An adapter's settings (its config, copied: calls may outlive the config). */
typedef struct rpc_settings {
    int tcp;             /* ncacn_ip_tcp; else ncalrpc */
    char *endpoint;      /* ncalrpc: the endpoint name; tcp: the port, in decimal */
    int remote;          /* tcp: callers from other computers may call (authenticated) */
    int anonymous;       /* callers without an identity may call (loopback only) */
    int max_calls;       /* calls in progress at once; beyond, SB_RPC_EBUSY at once */
    int max_pulls;       /* pulls waiting at once; beyond, answered at once */
    int64_t max_wait_ms; /* longest a pull waits */
    int64_t max_message; /* largest payload */
    char *security;      /* SDDL of the ncalrpc endpoint; NULL: the default */
} rpc_settings;

/* Who makes the call this thread serves. */
typedef struct rpc_caller {
    int tcp;                    /* came over ncacn_ip_tcp */
    int local;                  /* ncalrpc, or TCP from a loopback address */
    int authenticated;          /* RPC authentication at packet integrity or above */
    int anonymous;              /* no identity: the ACL's anonymous rules */
    int admin;                  /* SYSTEM, or an enabled member of Administrators */
    char user[SB_RPC_USER_MAX]; /* DOMAIN\name; "" when anonymous */
    char peer[96];              /* "ncalrpc", "ncacn_ip_tcp 127.0.0.1", for logs */
} rpc_caller;

typedef struct rpc_adapter rpc_adapter;
typedef struct rpc_sub rpc_sub;
typedef struct rpc_job rpc_job;

/* What the first field of a context handle's struct says it is. To the
 * runtime every context handle of the interface is as good as another (a
 * client may pass a subscription handle where a session is expected, and
 * widl has no type_strict_context_handle): every procedure and rundown
 * checks it before reading anything else, and it is cleared on free. */
#define RPC_SESSION_MAGIC 0x53425353u /* "SBSS" */
#define RPC_SUB_MAGIC 0x53425342u     /* "SBSB" */

/* A session (SB_RPC_SESSION): who the caller is, as SbOpen admitted it. It
 * lives from SbOpen to SbClose or its rundown; the runtime runs calls on it
 * one at a time and runs it down only when none is in progress. */
typedef struct rpc_session {
    uint32_t magic; /* RPC_SESSION_MAGIC */
    rpc_adapter *a; /* counted */
    rpc_caller caller;
} rpc_session;

/* A delivery a subscription holds: waiting in its buffer until a pull takes
 * it, then leased to the client until it is acknowledged. */
typedef struct rpc_lease {
    sb_delivery *d; /* loop thread only */
    uint64_t msg_id;
    int pulled;              /* under lock: handed to the client */
    SB_RPC_DELIVERY wire;    /* under lock, while buffered: what a pull hands out */
    struct rpc_lease *next;  /* loop thread only: the subscription's leases */
    struct rpc_lease *bnext; /* under lock: the buffer, oldest first */
} rpc_lease;

struct rpc_sub {
    uint32_t magic; /* RPC_SUB_MAGIC */
    rpc_adapter *a; /* counted */
    char *name;
    char user[SB_RPC_USER_MAX]; /* the subscriber, whose reads the ACL checks */
    int anonymous, admin;
    int refs; /* under a->lock */
    /* under a->lock */
    rpc_lease *bhead, *btail; /* buffered, not yet pulled */
    int buffered;
    int credit;  /* deliveries the consumer may still take into the buffer */
    int closed;  /* detached: unsubscribed, run down, or the adapter stopped */
    int pulling; /* a pull is in progress on this handle */
    uv_cond_t cond;
    /* loop thread only */
    sb_consumer consumer;
    int attached;
    rpc_lease *leases;    /* every delivery it holds */
    char who[160];        /* the consumer's name in logs */
    rpc_sub *next, *prev; /* the adapter's attached subscriptions */
};

/* The kinds of job. */
typedef enum {
    RPC_JOB_PUBLISH,
    RPC_JOB_SUBSCRIBE,
    RPC_JOB_READY,
    RPC_JOB_ACK,
    RPC_JOB_CLOSE,
    RPC_JOB_STATS,
    RPC_JOB_DLQ_LIST,
    RPC_JOB_DLQ_REDRIVE,
    RPC_JOB_DLQ_PURGE
} rpc_job_kind;

/* Work a call hands the loop, and the answer. Inputs are set by the call
 * before posting and read by the loop; outputs the other way, once done. */
struct rpc_job {
    rpc_job_kind kind;
    rpc_adapter *a; /* counted */
    int refs;       /* under a->lock: the call and the loop */
    int done;       /* under a->lock */
    int abandoned;  /* under a->lock: the call stopped waiting for the answer */
    /* The call's own: the loop had answered when sb_rpc__job_run returned.
     * Only then may the call read status, why and the outputs: after a
     * timeout the loop may be writing them. */
    int answered;
    uv_cond_t cond;
    int status;
    char why[320];
    rpc_caller caller;
    /* in */
    sb_message *msg; /* publish: owned by the loop once posted */
    int retain;
    char *name, *filter, *retained, *reason; /* sb_malloc'ed */
    sb_sub_settings settings;
    int window;
    rpc_sub *sub; /* counted; subscribe: the new one (out) */
    uint64_t *ids;
    unsigned long count;
    int ack, delete_sub, failed;
    int64_t after;
    int limit;
    /* out */
    uint64_t msg_id;
    int queues;
    char *text; /* subscribe: the filters; stats: the JSON */
    unsigned long done_count;
    int64_t total; /* dead letters redriven or purged */
    SB_RPC_DEAD_LETTER *items;
    unsigned long nitems;
    int64_t next;
};

struct rpc_adapter {
    sb_adapter base;
    char *name; /* own copy: calls may outlive base.cfg */
    rpc_settings set;
    wchar_t *wprotseq, *wendpoint;
    PSECURITY_DESCRIPTOR sd;
    sb_inbox *inbox;
    uv_mutex_t lock;
    int registered; /* holds its protocol sequence's slot in the registry */
    /* under lock */
    int refs;
    int stopping;
    int calls;                /* procedure calls in progress */
    ULONGLONG refusal_logged; /* GetTickCount64 of the last refusal logged */
    int pulls;                /* pulls waiting */
    uint64_t refused;         /* calls refused: busy, unauthenticated, not allowed */
    /* loop thread only */
    rpc_sub *subs; /* attached subscriptions */
};

/* ---- rpc.c ---- */

/* The adapter serving calls over ncacn_ip_tcp (tcp) or ncalrpc, counted
 * (sb_rpc__release it), or NULL when none runs. */
rpc_adapter *sb_rpc__find(int tcp);

/* Takes / drops a reference on a; the last one frees it. */
void sb_rpc__retain(rpc_adapter *a);
void sb_rpc__release(rpc_adapter *a);

/* Any thread: the UTF-8 "why" text of an SB_RPC_TEXT (MIDL_user_allocate'd
 * copy of s, NULL when s is NULL or out of memory). */
char *sb_rpc__text(const char *s);

/* ---- rpc_caller.c ---- */

/* RPC thread: fills c for the call this thread serves. */
void sb_rpc__caller_inspect(rpc_caller *c);

/* The adapter's rules for c: 0, or SB_EAUTH with a one-line reason in why. */
int sb_rpc__caller_admit(const rpc_settings *s, const rpc_caller *c, char *why, size_t n);

/* The interface's security callback: Windows calls it before a call's
 * arguments are unmarshalled (Wine never does, hence the same check in each
 * procedure). RPC_S_OK or ERROR_ACCESS_DENIED. */
RPC_STATUS CALLBACK sb_rpc__security_callback(RPC_IF_HANDLE ifh, void *ctx);

/* ---- rpc_calls.c ---- */

/* RPC thread: a new job of a kind for adapter a (counted), or NULL. */
rpc_job *sb_rpc__job_new(rpc_adapter *a, rpc_job_kind kind, const rpc_caller *caller);

/* RPC thread: posts j to the loop and waits for its answer at most
 * timeout_ms. Returns its status, SB_ESHUTDOWN (the adapter is stopping:
 * not posted), SB_ETIMEDOUT (the job may still be done) or SB_ENOMEM. The
 * call keeps its reference: read the outputs if j->answered, then
 * sb_rpc__job_release. */
int sb_rpc__job_run(rpc_job *j, int64_t timeout_ms);

/* Any thread: posts j without waiting; its reference goes to the loop.
 * Returns 0, or SB_ESHUTDOWN / SB_ENOMEM (then j is released). */
int sb_rpc__job_post(rpc_job *j);

/* Any thread: drops a reference on j; the last one frees it. */
void sb_rpc__job_release(rpc_job *j);

/* Drops a reference on s (under no lock); the last one frees it. */
void sb_rpc__sub_release(rpc_sub *s);

/* ---- rpc_loop.c ---- */

/* Loop thread: runs a posted job (the inbox function). */
void sb_rpc__job_exec(void *arg);

/* Loop thread: the answer to j: status and why (may be NULL). Wakes the
 * call waiting for it and drops the loop's reference. */
void sb_rpc__job_done(rpc_job *j, int status, const char *why);

/* Loop thread: the adapter stops: detaches every subscription and wakes
 * every pull waiting on one. */
void sb_rpc__close_all(rpc_adapter *a);

#endif
