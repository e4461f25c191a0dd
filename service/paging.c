/*
 * Paging: queues whose backlog is bounded by disk, not memory.
 *
 * A durable queue keeps a window of its oldest entries in memory (the next
 * to deliver and those in flight, at most broker.store.queue_window of them,
 * and all windows together within broker.store.queue_memory bytes). A
 * committed message that does not fit, or that has stored entries before it,
 * stays in the store only and is counted (disk_depth); every such entry has
 * an id above the queue's paged_to, so "the stored part" is always "the
 * entries after paged_to", in id (= delivery) order.
 *
 * At start, once the broker listens, each queue's first window is read
 * (while the budget lasts); then, while a consumer is attached and the
 * window runs below half its target, the store thread reads the next batch
 * (SB_OP_PAGE_IN) and the loop appends it; the loop never waits for SQLite.
 * The target is sized by the consumers (sb_paging__target): what they may
 * hold in flight plus what they acknowledge in READ_AHEAD_MS at their
 * measured rate, within queue_window. A slow consumer's queue keeps a few
 * entries in memory, leaving the budget to those that drain fast.
 * A page-in reserves the bytes it may read from the budget until it
 * completes (page_reserved), so that several under way stay within it.
 * Without consumers nothing more is read: TTL expiry and drop-oldest act on
 * the stored part in the store (SB_OP_TRIM), on its head, without bringing
 * payloads into memory. A stored entry that does not decode is named by
 * the page-in that meets it and moved to the dead-letter queue in the
 * store (move_aside), so that its queue goes on.
 *
 * Ops complete in submission order, which keeps the counts right:
 * - a drop submitted while a page-in is out deletes rows that page-in has
 *   read (both take "the first rows after paged_to"): they are skipped when
 *   it returns (page_skip);
 * - a page-in that read fewer rows than asked saw the whole stored part;
 *   what is stored now is what was committed after it left (ids above
 *   page_snap, counted in snap_depth);
 * - an expiry is not submitted while a page-in is out (it deletes rows at
 *   the same place); a page-in submitted after an expiry reads after it.
 * Ops carry the queue's id, not a pointer: a queue deleted meanwhile is not
 * found when they complete.
 */
#include "service/alloc.h"
#include "service/broker_int.h"
#include "service/log.h"
#include "service/platform.h"

#include <stdio.h>
#include <string.h>

/* While the windows are over the memory budget, a queue with a consumer
 * still fills its window up to this many entries, so that it always moves;
 * and a window holds at least this many ahead (sb_paging__target). */
#define FLOOR_ROWS 16
/* A window holds what its consumers take in this long, at their rate. */
#define READ_AHEAD_MS 1000
/* Stored entries an expiry looks at per housekeeping tick and queue. */
#define EXPIRE_SCAN_ROWS 512
/* Without a TTL, how often stored entries are looked at for their own expiry. */
#define EXPIRE_RECHECK_MS 60000
/* After a failed expiry in the store, the next try waits this long. */
#define RETRY_MS 5000
/* The windows shrank by this much since the heap was last trimmed: give
 * the memory back (a drained backlog, a deleted queue). */
#define TRIM_AFTER_BYTES (32 * 1024 * 1024)

typedef struct page_req {
    sb_store_op op;
    sb_broker *b;
    int64_t estimate; /* drop: the bytes subtracted when it was decided */
    int64_t reserved; /* page-in: its share of the budget (b->page_reserved) */
} page_req;

int sb_paging__window(const sb_queue *q)
{
    return q->broker->cfg->broker.queue_window;
}

int sb_paging__target(int64_t credit, double rate, int window)
{
    double want = (double)credit + rate * READ_AHEAD_MS / 1000.0;
    if (want < FLOOR_ROWS)
        want = FLOOR_ROWS;
    return want < (double)window ? (int)want : window;
}

/* q's target: its consumers' windows and their rate of acknowledgements. */
static int queue_target(const sb_queue *q)
{
    int64_t credit = 0;
    for (const sb_consumer *c = q->consumers; c != NULL; c = c->next)
        credit += c->window;
    return sb_paging__target(
        credit, sb_rate__per_sec(&q->out_rate, (int64_t)(uv_now(&q->broker->loop) / 1000)),
        sb_paging__window(q));
}

int sb_paging__room(const sb_queue *q, int64_t size)
{
    /* page-ins under way hold their share (page_reserved) */
    return q->broker->resident_bytes + q->broker->page_reserved + size <=
           q->broker->cfg->broker.queue_memory;
}

void sb_paging__resident(sb_queue *q, int64_t delta)
{
    sb_broker *b = q->broker;
    b->resident_bytes += delta;
    if (b->resident_bytes > b->resident_peak)
        b->resident_peak = b->resident_bytes;
}

static void trim_work(uv_work_t *req)
{
    (void)req;
    sb_platform_trim_memory();
}

static void trim_done(uv_work_t *req, int status)
{
    sb_broker *b = req->data;
    (void)status;
    b->trimming = 0;
}

/* A read of q's stored part met a damaged database page: said once, and
 * that part is left alone (retrying would fail the same way); the queue's
 * window, the other queues and new publishes go on. */
static void stored_corrupt(sb_queue *q)
{
    if (q->stored_corrupt)
        return;
    q->stored_corrupt = 1;
    sb_errlog(q->name,
              "the database pages holding this queue's %lld stored messages are corrupt: they "
              "are not read (`sbctl check` shows the damage; restore the data directory from a "
              "backup to get them back)",
              (long long)q->disk_depth);
}

/* After a failed page-in, the queues that wait for their stored entries
 * are offered them again (a scan, only then): after a read error
 * (RETRY_MS later, every queue: the store is in trouble), and at the next
 * tick those that found no memory (only them: a queue whose window is
 * empty may see no other event to try at). */
static void retry_page_ins(sb_broker *b)
{
    int errors = b->page_retry_ms != 0 && sb_now_ms() >= b->page_retry_ms;
    int nomem = b->page_nomem;
    if (!errors && !nomem)
        return;
    if (errors)
        b->page_retry_ms = 0;
    b->page_nomem = 0;
    for (sb_queue *q = b->queues; q != NULL; q = q->next) {
        int again = errors || q->page_nomem;
        q->page_nomem = 0;
        if (again && q->disk_depth > 0 && q->page_op == NULL && q->consumers != NULL)
            sb_queue__dispatch(q);
    }
}

void sb_paging__housekeeping(sb_broker *b)
{
    retry_page_ins(b);
    /* nothing published since the last tick: what the free lists keep for
     * the next burst goes back */
    if (b->published == b->pools_published)
        sb_broker__pools_drain(b);
    b->pools_published = b->published;
    if (b->trimming || b->resident_peak - b->resident_bytes < TRIM_AFTER_BYTES)
        return;
    b->resident_peak = b->resident_bytes;
    sb_broker__pools_drain(b); /* what they kept goes back with the rest */
    b->trim_req.data = b;
    if (uv_queue_work(&b->loop, &b->trim_req, trim_work, trim_done) == 0)
        b->trimming = 1;
}

static page_req *new_req(sb_broker *b, sb_store_op_type type, sb_store_cb cb)
{
    page_req *r = sb_calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->b = b;
    r->op.type = type;
    r->op.cb = cb;
    r->op.ctx = r;
    return r;
}

static void disk_clamp(sb_queue *q)
{
    if (q->disk_depth <= 0) {
        q->disk_depth = 0;
        q->disk_bytes = 0;
    } else if (q->disk_bytes < 0) {
        q->disk_bytes = 0;
    }
}

/* ---- a stored entry that does not decode ---- */

typedef struct bad_req {
    sb_store_op op;
    sb_broker *b;
    char *queue_name, *reason;
} bad_req;

static void bad_req_free(bad_req *r)
{
    sb_free(r->queue_name);
    sb_free(r->reason);
    sb_free(r);
}

static void on_bad_deleted(sb_store_op *op, void *ctx)
{
    bad_req *r = ctx;
    if (op->status != 0)
        sb_errlog(r->queue_name, "cannot delete stored message %llu either: %s",
                  (unsigned long long)op->u.ack.first_id, sb_strerror(op->status));
    bad_req_free(r);
}

static void on_bad_dead(sb_store_op *op, void *ctx)
{
    bad_req *r = ctx;
    uint32_t queue_id = op->u.deadletter.queue_id; /* op is r->op, reused below */
    sb_queue *q = sb_broker__queue_by_id(r->b, queue_id);
    uint64_t id = op->u.deadletter.msg_id;

    if (op->status == 0) {
        if (q != NULL) {
            q->dead++;
            sb_broker__queue_changed(q);
        }
    } else if (op->status != SB_ENOTFOUND) { /* not found: gone meanwhile */
        /* It cannot even be dead-lettered: it goes, so the queue moves. */
        sb_errlog(r->queue_name,
                  "cannot move stored message %llu to the dead-letter queue (%s): "
                  "deleting it",
                  (unsigned long long)id, sb_strerror(op->status));
        memset(&r->op, 0, sizeof(r->op));
        r->op.type = SB_OP_ACK;
        r->op.cb = on_bad_deleted;
        r->op.ctx = r;
        r->op.u.ack.queue_id = queue_id;
        r->op.u.ack.first_id = r->op.u.ack.last_id = id;
        if (sb_store_submit(r->b->store, &r->op) == 0)
            return; /* r is freed when it completes */
    }
    bad_req_free(r);
}

/* The entry after what a page-in read (op) does not decode: it leaves the
 * stored part (paged_to passes it) and is moved to the dead-letter queue
 * in the store, without its headers, so that the queue goes on. */
static void move_aside(sb_broker *b, sb_queue *q, const sb_store_op *op)
{
    uint64_t id = op->u.page_in.bad_id;
    bad_req *r;

    sb_errlog(q->name,
              "stored message %llu does not decode (%s): moving it to the dead-letter "
              "queue without its headers",
              (unsigned long long)id, op->u.page_in.bad_reason);
    r = sb_calloc(1, sizeof(*r));
    if (r != NULL) {
        r->b = b;
        r->queue_name = sb_strdup(q->name);
        r->reason = sb_malloc(sizeof(op->u.page_in.bad_reason) + 64);
    }
    if (r == NULL || r->queue_name == NULL || r->reason == NULL) {
        /* it stays in the store, after paged_to: read again by the next page-in */
        sb_errlog(q->name, "out of memory dead-lettering stored message %llu; left in the store",
                  (unsigned long long)id);
        if (r != NULL)
            bad_req_free(r);
        return;
    }
    snprintf(r->reason, sizeof(op->u.page_in.bad_reason) + 64,
             "corrupt in the store: %s (dead-lettered without them)", op->u.page_in.bad_reason);
    r->op.type = SB_OP_DEADLETTER;
    r->op.cb = on_bad_dead;
    r->op.ctx = r;
    r->op.u.deadletter.queue_id = q->id;
    r->op.u.deadletter.msg_id = id;
    r->op.u.deadletter.no_headers = 1;
    r->op.u.deadletter.queue_name = r->queue_name;
    r->op.u.deadletter.reason = r->reason;
    if (sb_store_submit(b->store, &r->op) != 0) {
        bad_req_free(r); /* stopping: read again after the restart */
        return;
    }
    /* Only now does it leave the stored part: an ack range must never
     * span a row that was neither dead-lettered nor deleted. */
    q->paged_to = id;
    q->disk_depth--;
    q->disk_bytes -= op->u.page_in.bad_size;
    disk_clamp(q);
}

/* ---- page-in ---- */

/* Appends what a page-in read (op, q's page_op) to q's window. */
static void take_rows(sb_broker *b, sb_queue *q, sb_store_op *op)
{
    sb_store_entry *rows = op->u.page_in.rows;
    size_t n = op->u.page_in.row_count, i, skip;

    q->page_op = NULL;
    skip = q->page_skip < (int64_t)n ? (size_t)q->page_skip : n;
    for (i = skip; i < n; i++) {
        sb_entry *e = sb_broker__entry_get(b);
        if (e == NULL) {
            sb_errlog(q->name, "out of memory reading queued messages; retried later");
            break; /* the rest stay stored, after paged_to */
        }
        /* stored before this run started: it may have been delivered */
        sb_queue__append_paged(q, e, rows[i].msg, rows[i].attempts,
                               rows[i].msg->id <= b->boot_msg_id || rows[i].attempts > 0);
        q->disk_depth--;
        q->disk_bytes -= rows[i].size;
    }
    if (i > 0 && rows[i - 1].msg->id > q->paged_to)
        q->paged_to = rows[i - 1].msg->id; /* past the skipped ones too */
    if (i == n && op->u.page_in.exhausted) {
        /* It read the whole stored part: what is stored now came later,
         * less what drops removed beyond what it read. */
        int64_t beyond = q->page_skip > (int64_t)n ? q->page_skip - (int64_t)n : 0;
        int64_t mean = q->snap_depth > 0 ? q->snap_bytes / q->snap_depth : 0;
        q->disk_depth = q->snap_depth - beyond;
        q->disk_bytes = q->snap_bytes - beyond * mean;
    }
    /* (a drop under way past the rows read removed it already) */
    if (i == n && op->u.page_in.bad_id != 0 && q->page_skip <= (int64_t)n)
        move_aside(b, q, op);
    q->page_skip = 0;
    disk_clamp(q);
    if (q->disk_depth == 0)
        sb_queue__watch_expiry(q);
    sb_broker__queue_changed(q);
}

static void on_page_in(sb_store_op *op, void *ctx)
{
    page_req *r = ctx;
    sb_broker *b = r->b;
    sb_queue *q = sb_broker__queue_by_id(b, op->u.page_in.queue_id);

    b->page_reserved -= r->reserved;
    if (q == NULL || q->page_op != op)
        goto out; /* deleted, or cleared, meanwhile */
    if (op->status == SB_ECORRUPT) {
        stored_corrupt(q);
        q->page_op = NULL;
        q->page_skip = 0;
        goto out;
    }
    if (op->status != 0) {
        sb_errlog(q->name, "cannot read queued messages from the store: %s (trying again in %d s)",
                  sb_strerror(op->status), RETRY_MS / 1000);
        q->page_op = NULL;
        q->page_skip = 0;
        if (b->page_retry_ms == 0)
            b->page_retry_ms = sb_now_ms() + RETRY_MS;
        goto out;
    }
    take_rows(b, q, op);
    sb_queue__dispatch(q);
out:
    sb_store_page_rows_free(op->u.page_in.rows, op->u.page_in.row_count);
    sb_free(r);
}

/* The budget the windows have left, less what page-ins under way may read. */
static int64_t room(const sb_broker *b)
{
    return b->cfg->broker.queue_memory - b->resident_bytes - b->page_reserved;
}

/* Sets up a page-in of q's next stored entries, up to `target` in the
 * window (0: no room for any). Its bytes are reserved until it completes,
 * so that page-ins of several queues at once stay within the budget. */
static int prepare(sb_queue *q, page_req *r, int target)
{
    sb_broker *b = q->broker;
    sb_store_op *op = &r->op;
    int limit = target - (int)q->depth;
    int64_t left = room(b), mean = q->disk_bytes / q->disk_depth, want;
    if (left <= 0) /* over budget: only what keeps the queue moving */
        limit = FLOOR_ROWS - (int)q->depth < limit ? FLOOR_ROWS - (int)q->depth : limit;
    if (limit <= 0)
        return 0;
    want = mean > 0 ? mean * limit : left; /* (no bytes counted: whatever is left) */
    r->reserved = left <= 0 ? 0 : want < left ? want : left;
    op->type = SB_OP_PAGE_IN;
    op->u.page_in.queue_id = q->id;
    op->u.page_in.after_id = q->paged_to;
    op->u.page_in.limit = limit;
    op->u.page_in.max_bytes = r->reserved; /* 0 (over budget): the floor's rows */
    q->page_op = op;
    q->page_snap = b->last_msg_id;
    q->page_skip = q->snap_depth = q->snap_bytes = 0;
    b->page_reserved += r->reserved;
    return 1;
}

/* Submits a page-in of q's next stored entries, up to target in the window. */
static void page_in(sb_queue *q, int target)
{
    sb_broker *b = q->broker;
    page_req *r;

    if ((r = new_req(b, SB_OP_PAGE_IN, on_page_in)) == NULL) {
        /* Tried again at its next dispatch, or at the next housekeeping
         * tick: a queue whose window is empty may see no other event. */
        q->page_nomem = 1;
        b->page_nomem = 1;
        return;
    }
    if (!prepare(q, r, target)) {
        sb_free(r);
        return;
    }
    if (sb_store_submit(b->store, &r->op) != 0) {
        q->page_op = NULL;
        b->page_reserved -= r->reserved;
        sb_free(r);
    }
}

/* Whether q may read from the store now. */
static int can_page_in(const sb_queue *q)
{
    const sb_broker *b = q->broker;
    return q->disk_depth > 0 && q->page_op == NULL && q->copy_rows == 0 && q->live &&
           !b->stopping && b->store != NULL && !q->stored_corrupt &&
           b->page_retry_ms == 0; /* a read failed: housekeeping tries again */
}

void sb_paging__start(sb_broker *b)
{
    for (sb_queue *q = b->queues; q != NULL; q = q->next)
        /* the others are read when a consumer comes */
        if (can_page_in(q) && room(b) >= q->disk_bytes / q->disk_depth)
            page_in(q, queue_target(q)); /* no consumer yet: a few */
}

void sb_paging__fill(sb_queue *q)
{
    int target;
    if (!can_page_in(q) || q->consumers == NULL)
        return;
    target = queue_target(q);
    if (q->depth <= target / 2)
        page_in(q, target);
}

/* ---- drop-oldest and expiry in the store ---- */

static void on_dropped(sb_store_op *op, void *ctx)
{
    page_req *r = ctx;
    sb_queue *q = sb_broker__queue_by_id(r->b, op->u.trim.queue_id);
    if (op->status != 0)
        sb_errlog(q != NULL ? q->name : "store", "cannot drop stored messages: %s",
                  sb_strerror(op->status));
    else if (q != NULL && q->disk_depth > 0) {
        q->disk_bytes += r->estimate - op->u.trim.removed_bytes; /* now exact */
        disk_clamp(q);
    }
    sb_free(r);
}

int sb_paging__drop(sb_queue *q, int64_t n)
{
    sb_broker *b = q->broker;
    int64_t estimate;
    page_req *r;

    if (n > q->disk_depth)
        n = q->disk_depth;
    if (n <= 0 || b->store == NULL)
        return 0;
    estimate = n == q->disk_depth ? q->disk_bytes : q->disk_bytes / q->disk_depth * n;
    if ((r = new_req(b, SB_OP_TRIM, on_dropped)) == NULL) {
        sb_errlog(q->name, "out of memory dropping %lld stored messages", (long long)n);
        return 0;
    }
    r->estimate = estimate;
    r->op.u.trim.queue_id = q->id;
    r->op.u.trim.after_id = q->paged_to;
    r->op.u.trim.limit = n > 0x7fffffff ? 0x7fffffff : (int)n;
    if (sb_store_submit(b->store, &r->op) != 0) {
        sb_free(r); /* stopping: the limit is enforced again after the restart */
        return 0;
    }
    q->disk_depth -= n;
    q->disk_bytes -= estimate;
    q->dropped += (uint64_t)n;
    if (q->page_op != NULL)
        q->page_skip += n; /* it read them: skipped when it returns */
    disk_clamp(q);
    if (q->disk_depth == 0)
        sb_queue__watch_expiry(q);
    sb_broker__queue_changed(q);
    return 1;
}

static void on_expired(sb_store_op *op, void *ctx)
{
    page_req *r = ctx;
    sb_queue *q = sb_broker__queue_by_id(r->b, op->u.trim.queue_id);
    int64_t now = sb_now_ms(), removed = op->u.trim.removed;

    if (q == NULL || q->trim_op != op)
        goto out;
    q->trim_op = NULL;
    if (op->status == SB_ECORRUPT) {
        stored_corrupt(q);
        goto out;
    }
    if (op->status != 0) {
        sb_errlog(q->name, "cannot expire stored messages: %s", sb_strerror(op->status));
        q->disk_check_ms = now + RETRY_MS;
        goto out;
    }
    if (removed > 0) {
        sb_log(SB_LOG_WARN, q->name,
               "%lld stored messages (up to id %llu) moved to the dead-letter queue: expired (ttl)",
               (long long)removed, (unsigned long long)op->u.trim.last_id);
        q->disk_depth -= removed;
        q->disk_bytes -= op->u.trim.removed_bytes;
        q->dead += (uint64_t)removed;
        q->expired += (uint64_t)removed;
        disk_clamp(q);
        sb_broker__queue_changed(q);
    }
    if (removed == op->u.trim.limit)
        q->disk_check_ms = 0; /* more may have expired: next tick */
    else if (op->u.trim.next_expiry_ms > 0)
        q->disk_check_ms = op->u.trim.next_expiry_ms;
    else
        q->disk_check_ms = now + EXPIRE_RECHECK_MS;
    sb_queue__watch_expiry(q);
out:
    sb_free((char *)op->u.trim.queue_name);
    sb_free(r);
}

void sb_paging__expire(sb_queue *q, int64_t now_ms)
{
    sb_broker *b = q->broker;
    page_req *r;

    /* With a consumer attached, entries are expired as they are read in. */
    if (q->disk_depth <= 0 || q->consumers != NULL || q->page_op != NULL || q->trim_op != NULL ||
        q->copy_rows > 0 || q->stored_corrupt || !q->live || b->stopping || b->store == NULL ||
        now_ms < q->disk_check_ms || (q->ttl_ms <= 0 && !q->disk_expiring))
        return;
    if ((r = new_req(b, SB_OP_TRIM, on_expired)) == NULL ||
        (r->op.u.trim.queue_name = sb_strdup(q->name)) == NULL) {
        sb_free(r);
        return; /* next tick */
    }
    r->op.u.trim.queue_id = q->id;
    r->op.u.trim.after_id = q->paged_to;
    r->op.u.trim.expire = 1;
    r->op.u.trim.limit = EXPIRE_SCAN_ROWS;
    r->op.u.trim.now_ms = now_ms;
    r->op.u.trim.ttl_ms = q->ttl_ms;
    r->op.u.trim.reason = "expired (ttl)";
    q->trim_op = &r->op;
    if (sb_store_submit(b->store, &r->op) != 0) {
        q->trim_op = NULL;
        sb_free((char *)r->op.u.trim.queue_name);
        sb_free(r);
    }
}
