/*
 * gcproto: a minimal group-commit server, the ceiling `sbctl bench` is held
 * against for the jsonl fsync path (README "Performance").
 *
 *   gcproto SOCKET_PATH DB_PATH
 *   gcproto --memory SOCKET_PATH
 *
 * It speaks just enough jsonl on a Unix socket for `sbctl bench -d fsync`
 * (pub, puback, sub, msg, ack, unsub, in the shapes sbctl writes them), and
 * does the durable work a broker must do, nothing more: a publish is inserted
 * into the same `entries` table as Switchboard's (same columns, same unique
 * index, WAL, synchronous=FULL, one prepared statement per kind), an ack
 * deletes its row, and every publish is answered and delivered only after
 * the commit that holds it is on disk. One epoll thread parses and writes;
 * one commit thread takes whatever accumulated while the previous commit was
 * flushing (group commit, no timer) and hands the group back through an
 * eventfd. What it leaves out is what makes a broker: routing, ACLs, queues
 * that survive a restart, redelivery, limits, headers, expiry, errors.
 *
 * With --memory it stores nothing and has no commit thread: every publish is
 * answered and delivered in the round that read it. That is the raw Unix
 * socket round trip of the same bytes, the floor the broker's memory class
 * is held against.
 *
 * Linux only; SIGINT or SIGTERM ends it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

typedef struct msg {
    struct msg *next;
    int64_t id;
    int conn;     /* the publisher's fd, or -1 once it closed */
    unsigned gen; /* the publisher's connection generation */
    char req_id[32];
    char *topic, *payload; /* one allocation: topic\0payload\0 */
    size_t topic_len, payload_len;
} msg;

typedef struct conn {
    int fd;
    unsigned gen;
    buf in, out;
    int dirty;
    int consumer; /* attached to the subscription */
    int inflight, window;
} conn;

typedef struct group {
    msg *pubs, *pubs_tail;
    int64_t *acks;
    size_t nacks, acks_cap;
} group;

static conn *conns[MAX_CONNS];
static int epfd, efd, lfd;
static volatile sig_atomic_t stopping;
static int memory_mode; /* --memory: no store, no commit thread */

/* the one subscription */
static char sub_name[128], sub_prefix[128];
static size_t sub_prefix_len;
static int have_sub;
static msg *ready_head, *ready_tail; /* committed, not yet delivered */
static conn *consumers[MAX_CONNS];
static int nconsumers, next_consumer;
static conn *dirty[MAX_CONNS];
static int ndirty;
static group local; /* this round's publishes and acks, handed over once */

/* loop <-> commit thread */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static group pending, done;
static int64_t next_id = 1;

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "gcproto: %s: %s\n", what, detail);
    exit(1);
}

static void buf_add(buf *b, const char *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (b->p == NULL)
            die("realloc", strerror(errno));
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* ---- the commit thread ---- */

static void check(sqlite3 *db, int rc, const char *what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW)
        die(what, sqlite3_errmsg(db));
}

static void step(sqlite3 *db, sqlite3_stmt *st, const char *what)
{
    check(db, sqlite3_step(st), what);
    sqlite3_reset(st);
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void *commit_thread(void *arg)
{
    sqlite3 *db = arg;
    sqlite3_stmt *begin, *commit, *ins, *del, *sync[2];
    int cur = 1;
    check(db, sqlite3_prepare_v2(db, "PRAGMA synchronous = NORMAL", -1, &sync[0], NULL), "prepare");
    check(db, sqlite3_prepare_v2(db, "PRAGMA synchronous = FULL", -1, &sync[1], NULL), "prepare");
    check(db, sqlite3_prepare_v2(db, "BEGIN", -1, &begin, NULL), "prepare");
    check(db, sqlite3_prepare_v2(db, "COMMIT", -1, &commit, NULL), "prepare");
    check(db,
          sqlite3_prepare_v2(db,
                             "INSERT INTO entries(queue_id, msg_id, topic, payload, headers,"
                             " created_ms, expires_ms, priority) VALUES(1, ?1, ?2, ?3, NULL, ?4,"
                             " 0, 0)",
                             -1, &ins, NULL),
          "prepare");
    check(db,
          sqlite3_prepare_v2(db,
                             "DELETE FROM entries WHERE queue_id = 1 AND msg_id BETWEEN ?1 AND ?2",
                             -1, &del, NULL),
          "prepare");
    for (;;) {
        group g;
        uint64_t one = 1;
        struct timespec now;
        pthread_mutex_lock(&mu);
        while (pending.pubs == NULL && pending.nacks == 0 && !stopping)
            pthread_cond_wait(&cond, &mu);
        if (stopping) {
            pthread_mutex_unlock(&mu);
            return NULL;
        }
        g = pending;
        memset(&pending, 0, sizeof(pending));
        pthread_mutex_unlock(&mu);

        clock_gettime(CLOCK_REALTIME, &now);
        /* a group of acks alone need not wait for the disk: an ack lost
         * to a crash means a redelivery, as in Switchboard */
        if (cur != (g.pubs != NULL)) {
            cur = g.pubs != NULL;
            step(db, sync[cur], "PRAGMA synchronous");
        }
        step(db, begin, "BEGIN");
        for (msg *m = g.pubs; m != NULL; m = m->next) {
            sqlite3_bind_int64(ins, 1, m->id);
            sqlite3_bind_text(ins, 2, m->topic, (int)m->topic_len, SQLITE_STATIC);
            sqlite3_bind_blob(ins, 3, m->payload, (int)m->payload_len, SQLITE_STATIC);
            sqlite3_bind_int64(ins, 4, (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000);
            step(db, ins, "INSERT");
        }
        /* acks of consecutive ids delete one range (as Switchboard's do) */
        qsort(g.acks, g.nacks, sizeof(int64_t), cmp_id);
        for (size_t i = 0, j; i < g.nacks; i = j) {
            for (j = i + 1; j < g.nacks && g.acks[j] == g.acks[j - 1] + 1; j++)
                ;
            sqlite3_bind_int64(del, 1, g.acks[i]);
            sqlite3_bind_int64(del, 2, g.acks[j - 1]);
            step(db, del, "DELETE");
        }
        step(db, commit, "COMMIT");
        free(g.acks);

        pthread_mutex_lock(&mu);
        if (g.pubs != NULL) {
            if (done.pubs_tail != NULL)
                done.pubs_tail->next = g.pubs;
            else
                done.pubs = g.pubs;
            done.pubs_tail = g.pubs_tail;
        }
        pthread_mutex_unlock(&mu);
        if (write(efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            die("eventfd write", strerror(errno));
    }
}

/* ---- the loop ---- */

static void mark(conn *c)
{
    if (!c->dirty)
        dirty[ndirty++] = c;
    c->dirty = 1;
}

static void flush_conn(conn *c)
{
    size_t off = 0;
    while (off < c->out.len) {
        ssize_t n = write(c->fd, c->out.p + off, c->out.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = c->fd};
            if (errno == EAGAIN)
                (void)epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
            else
                c->out.len = off = 0; /* the peer went away: the read side will see */
            break;
        }
        off += (size_t)n;
    }
    memmove(c->out.p, c->out.p + off, c->out.len - off);
    c->out.len -= off;
    c->dirty = 0;
}

/* Finds "key": in line and returns where its value starts, or NULL. */
static const char *field(const char *line, size_t len, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = line; p + kl + 3 <= line + len; p++)
        if (p[0] == '"' && memcmp(p + 1, key, kl) == 0 && p[kl + 1] == '"' && p[kl + 2] == ':')
            return p + kl + 3;
    return NULL;
}

/* A string value at v (after its opening quote): its length, escapes kept. */
static size_t str_len(const char *v, const char *end)
{
    const char *p = v;
    while (p < end && *p != '"')
        p += *p == '\\' ? 2 : 1;
    return (size_t)(p - v);
}

/* The raw token of "id" (number or string), or "". */
static void copy_id(char *out, size_t cap, const char *line, size_t len)
{
    const char *v = field(line, len, "id"), *end = line + len;
    size_t n = 0;
    if (v != NULL) {
        const char *p = v;
        if (*p == '"')
            p += 1 + str_len(p + 1, end) + 1;
        else
            while (p < end && *p != ',' && *p != '}')
                p++;
        n = (size_t)(p - v);
    }
    if (n >= cap)
        n = 0;
    memcpy(out, v, n);
    out[n] = '\0';
}

static void reply(conn *c, const char *text, const char *id)
{
    char line[512];
    int n = snprintf(line, sizeof(line), "%s%s%s}\n", text, *id ? ",\"id\":" : "", id);
    buf_add(&c->out, line, (size_t)n);
    mark(c);
}

static void dispatch(void)
{
    int tries = 0;
    while (ready_head != NULL && nconsumers > 0 && tries < nconsumers) {
        conn *c = consumers[next_consumer % nconsumers];
        next_consumer = (next_consumer + 1) % nconsumers;
        if (c->inflight >= c->window) {
            tries++;
            continue;
        }
        tries = 0;
        msg *m = ready_head;
        ready_head = m->next;
        if (ready_head == NULL)
            ready_tail = NULL;
        char head[256];
        int n = snprintf(head, sizeof(head),
                         "{\"op\":\"msg\",\"sub\":\"%s\",\"msg_id\":%lld,\"topic\":\"", sub_name,
                         (long long)m->id);
        buf_add(&c->out, head, (size_t)n);
        buf_add(&c->out, m->topic, m->topic_len);
        buf_add(&c->out, "\",\"attempt\":1,\"created\":0,\"payload\":\"", 37);
        buf_add(&c->out, m->payload, m->payload_len);
        buf_add(&c->out, "\"}\n", 3);
        c->inflight++;
        mark(c);
        free(m->topic);
        free(m);
    }
}

static void consumer_remove(conn *c)
{
    for (int i = 0; i < nconsumers; i++)
        if (consumers[i] == c) {
            consumers[i] = consumers[--nconsumers];
            break;
        }
    c->consumer = 0;
}

/* Answers the publishes of a committed group (list m) and queues them for
 * delivery. */
static void complete(msg *m)
{
    msg *next;
    for (; m != NULL; m = next) {
        next = m->next;
        conn *p = m->conn >= 0 ? conns[m->conn] : NULL;
        if (p != NULL && p->gen == m->gen) {
            char text[96];
            snprintf(text, sizeof(text), "{\"op\":\"puback\",\"msg_id\":%lld,\"queues\":1",
                     (long long)m->id);
            reply(p, text, m->req_id);
        }
        m->next = NULL;
        if (ready_tail != NULL)
            ready_tail->next = m;
        else
            ready_head = m;
        ready_tail = m;
    }
    dispatch();
}

static void on_committed(void)
{
    uint64_t v;
    msg *m;
    if (read(efd, &v, sizeof(v)) < 0)
        return;
    pthread_mutex_lock(&mu);
    m = done.pubs;
    memset(&done, 0, sizeof(done));
    pthread_mutex_unlock(&mu);
    complete(m);
}

/* Queues a publish (m) or an ack for this round. */
static void submit(msg *m, int64_t ack)
{
    if (m != NULL) {
        if (local.pubs_tail != NULL)
            local.pubs_tail->next = m;
        else
            local.pubs = m;
        local.pubs_tail = m;
        return;
    }
    if (local.nacks == local.acks_cap) {
        local.acks_cap = local.acks_cap ? 2 * local.acks_cap : 1024;
        local.acks = realloc(local.acks, local.acks_cap * sizeof(int64_t));
        if (local.acks == NULL)
            die("realloc", strerror(errno));
    }
    local.acks[local.nacks++] = ack;
}

/* Hands the round's work to the commit thread: one lock, one wake-up. */
static void hand_over(void)
{
    if (local.pubs == NULL && local.nacks == 0)
        return;
    if (memory_mode) {
        msg *m = local.pubs;
        for (; m != NULL; m = m->next)
            m->id = next_id++;
        m = local.pubs;
        local.pubs = local.pubs_tail = NULL;
        local.nacks = 0;
        complete(m);
        return;
    }
    pthread_mutex_lock(&mu);
    for (msg *m = local.pubs; m != NULL; m = m->next)
        m->id = next_id++;
    if (local.pubs != NULL) {
        if (pending.pubs_tail != NULL)
            pending.pubs_tail->next = local.pubs;
        else
            pending.pubs = local.pubs;
        pending.pubs_tail = local.pubs_tail;
    }
    for (size_t i = 0; i < local.nacks; i++) {
        if (pending.nacks == pending.acks_cap) {
            pending.acks_cap = pending.acks_cap ? 2 * pending.acks_cap : 1024;
            pending.acks = realloc(pending.acks, pending.acks_cap * sizeof(int64_t));
            if (pending.acks == NULL)
                die("realloc", strerror(errno));
        }
        pending.acks[pending.nacks++] = local.acks[i];
    }
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&mu);
    local.pubs = local.pubs_tail = NULL;
    local.nacks = 0;
}

static void handle_line(conn *c, const char *line, size_t len)
{
    const char *op = field(line, len, "op"), *end = line + len, *v;
    char id[32];
    if (op == NULL || *op != '"')
        return;
    op++;
    if (memcmp(op, "pub\"", 4) == 0) {
        const char *t = field(line, len, "topic"), *p = field(line, len, "payload");
        size_t tl, pl;
        copy_id(id, sizeof(id), line, len);
        if (t == NULL || p == NULL || *t != '"' || *p != '"') {
            reply(c, "{\"op\":\"error\",\"code\":\"SB_EINVAL\",\"message\":\"pub\"", id);
            return;
        }
        tl = str_len(t + 1, end);
        pl = str_len(p + 1, end);
        if (!have_sub || tl < sub_prefix_len || memcmp(t + 1, sub_prefix, sub_prefix_len) != 0) {
            reply(c, "{\"op\":\"puback\",\"msg_id\":0,\"queues\":0", id);
            return;
        }
        msg *m = calloc(1, sizeof(*m));
        if (m == NULL || (m->topic = malloc(tl + pl + 2)) == NULL)
            die("malloc", strerror(errno));
        memcpy(m->topic, t + 1, tl);
        m->topic[tl] = '\0';
        m->payload = m->topic + tl + 1;
        memcpy(m->payload, p + 1, pl);
        m->payload[pl] = '\0';
        m->topic_len = tl;
        m->payload_len = pl;
        m->conn = c->fd;
        m->gen = c->gen;
        memcpy(m->req_id, id, sizeof(id));
        submit(m, 0);
    } else if (memcmp(op, "ack\"", 4) == 0) {
        if ((v = field(line, len, "msg_id")) == NULL)
            return;
        if (c->inflight > 0)
            c->inflight--;
        submit(NULL, strtoll(v, NULL, 10));
        dispatch();
    } else if (memcmp(op, "sub\"", 4) == 0) {
        const char *s = field(line, len, "sub"), *f = field(line, len, "filter"),
                   *w = field(line, len, "window");
        char text[256];
        size_t sl, fl;
        copy_id(id, sizeof(id), line, len);
        if (s == NULL || f == NULL || *s != '"' || *f != '"' ||
            (sl = str_len(s + 1, end)) >= sizeof(sub_name) ||
            (fl = str_len(f + 1, end)) >= sizeof(sub_prefix) || fl < 2 ||
            memcmp(f + 1 + fl - 2, "/#", 2) != 0) {
            reply(c, "{\"op\":\"error\",\"code\":\"SB_EINVAL\",\"message\":\"sub\"", id);
            return;
        }
        memcpy(sub_name, s + 1, sl);
        sub_name[sl] = '\0';
        memcpy(sub_prefix, f + 1, fl - 1); /* keeps the '/' */
        sub_prefix_len = fl - 1;
        have_sub = 1;
        if (!c->consumer)
            consumers[nconsumers++] = c;
        c->consumer = 1;
        c->window = w != NULL ? atoi(w) : 100;
        snprintf(text, sizeof(text), "{\"op\":\"subscribed\",\"sub\":\"%s\"", sub_name);
        reply(c, text, id);
        dispatch();
    } else if (memcmp(op, "unsub\"", 6) == 0) {
        copy_id(id, sizeof(id), line, len);
        if (c->consumer)
            consumer_remove(c);
        reply(c, "{\"op\":\"unsubscribed\"", id);
    } else {
        copy_id(id, sizeof(id), line, len);
        reply(c, "{\"op\":\"error\",\"code\":\"SB_EINVAL\",\"message\":\"unknown op\"", id);
    }
}

static void close_conn(conn *c)
{
    if (c->consumer)
        consumer_remove(c);
    for (int i = 0; i < ndirty; i++)
        if (dirty[i] == c)
            dirty[i] = dirty[--ndirty];
    (void)epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->in.p);
    free(c->out.p);
    free(c);
}

static void on_readable(conn *c)
{
    char tmp[65536];
    size_t start = 0;
    ssize_t n = read(c->fd, tmp, sizeof(tmp));
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        close_conn(c);
        return;
    }
    if (n < 0)
        return;
    buf_add(&c->in, tmp, (size_t)n);
    for (;;) {
        char *nl = memchr(c->in.p + start, '\n', c->in.len - start);
        if (nl == NULL)
            break;
        handle_line(c, c->in.p + start, (size_t)(nl - (c->in.p + start)));
        start = (size_t)(nl - c->in.p) + 1;
    }
    memmove(c->in.p, c->in.p + start, c->in.len - start);
    c->in.len -= start;
}

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

/* Opens the database at path with the broker's entries table, emptied. */
static sqlite3 *open_store(const char *path)
{
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        die(path, sqlite3_errmsg(db));
    check(db,
          sqlite3_exec(db,
                       "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL;"
                       " PRAGMA synchronous = FULL; PRAGMA secure_delete = FAST;"
                       " PRAGMA journal_size_limit = 16777216;"
                       "CREATE TABLE IF NOT EXISTS entries(queue_id INTEGER NOT NULL,"
                       " msg_id INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB, headers BLOB,"
                       " created_ms INTEGER, expires_ms INTEGER, priority INTEGER,"
                       " attempts INTEGER NOT NULL DEFAULT 0);"
                       "CREATE UNIQUE INDEX IF NOT EXISTS entries_queue_msg"
                       " ON entries(queue_id, msg_id);"
                       "DELETE FROM entries;",
                       NULL, NULL, NULL),
          "schema");
    return db;
}

int main(int argc, char **argv)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct epoll_event ev, evs[64];
    sqlite3 *db = NULL;
    pthread_t th;
    unsigned gen = 0;

    memory_mode = argc == 3 && strcmp(argv[1], "--memory") == 0;
    if (argc != 3) {
        fprintf(stderr, "usage: gcproto SOCKET_PATH DB_PATH | gcproto --memory SOCKET_PATH\n");
        return 2;
    }
    if (memory_mode)
        argv++;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (!memory_mode)
        db = open_store(argv[2]);
    if (strlen(argv[1]) >= sizeof(sa.sun_path))
        die(argv[1], "path too long");
    strcpy(sa.sun_path, argv[1]);
    unlink(argv[1]);
    if ((lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0)) < 0 ||
        bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 64) != 0)
        die(argv[1], strerror(errno));
    if ((epfd = epoll_create1(0)) < 0 || (efd = eventfd(0, EFD_NONBLOCK)) < 0)
        die("epoll/eventfd", strerror(errno));
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.fd = efd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev);
    if (!memory_mode && pthread_create(&th, NULL, commit_thread, db) != 0)
        die("pthread_create", "failed");
    printf("gcproto: listening on %s\n", argv[1]);
    fflush(stdout);

    while (!stopping) {
        int n = epoll_wait(epfd, evs, 64, 500);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (cfd < 0 || cfd >= MAX_CONNS) {
                    if (cfd >= 0)
                        close(cfd);
                    continue;
                }
                conn *c = calloc(1, sizeof(*c));
                if (c == NULL)
                    die("calloc", strerror(errno));
                c->fd = cfd;
                c->gen = ++gen;
                conns[cfd] = c;
                ev.events = EPOLLIN;
                ev.data.fd = cfd;
                epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &ev);
            } else if (fd == efd) {
                on_committed();
            } else if (conns[fd] != NULL) {
                if (evs[i].events & EPOLLOUT) {
                    ev.events = EPOLLIN;
                    ev.data.fd = fd;
                    epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
                    mark(conns[fd]);
                }
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    on_readable(conns[fd]);
            }
        }
        hand_over();
        /* one write per connection per round */
        while (ndirty > 0)
            flush_conn(dirty[--ndirty]);
    }
    if (!memory_mode) {
        pthread_mutex_lock(&mu);
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&mu);
        pthread_join(th, NULL);
        sqlite3_close(db);
    }
    unlink(argv[1]);
    return 0;
}
