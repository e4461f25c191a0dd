/*
 * DDE adapter (Windows, `type: dde`): legacy DDE programs and Excel on one
 * side, the broker on the other. A desktop type (SB_CAP_DESKTOP): DDE
 * reaches only the windows of its own desktop, so under a service it runs
 * in the session agent; `switchboard run` hosts it itself.
 *
 * `role: server` (dde_server.c) registers a DDE service; pokes publish and
 * are acknowledged after their commit, requests and hot links are served
 * from the last value of each item, which this file keeps current through
 * a subscription of the adapter's own (a transient memory queue
 * "dde/<adapter>" on the template's filters, seeded with retained values).
 * `role: client` (dde_client.c) hot-links a legacy server's items and
 * publishes their values; as a route destination it pokes deliveries into
 * the server.
 *
 * This file is the loop side: the adapter type, publishing what the DDE
 * thread (dde_thread.c) hands over, the server's value subscription, the
 * client's sink, start and stop. Messages published from DDE carry the
 * headers dde-topic, dde-item, dde-format (CF_TEXT, CF_UNICODETEXT or a
 * registered name), encoding: utf-8 for text (and dde-codepage for
 * CF_TEXT). Values served or poked are text (UTF-8) unless their
 * dde-format header names a registered format.
 */
#include "adapters/dde/win/dde_int.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/log.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

/* The server's value queue: values arrive faster than DDE clients read
 * them only while its thread is busy; then older values are dropped, not
 * producers refused. */
#define VALUE_QUEUE_DEPTH 100000
#define VALUE_WINDOW 1024

static void drop_loop_values(sb_dde_adapter *a)
{
    sb_dde_job *j;
    while ((j = a->values_head) != NULL) {
        a->values_head = j->next;
        sb_dde__job_free(j);
    }
    a->values_tail = NULL;
    sb_map_clear(&a->loop_values);
}

static void free_adapter(sb_dde_adapter *a)
{
    sb_dde_job *j;
    while ((j = a->jobs) != NULL) {
        a->jobs = j->next;
        sb_dde__job_free(j);
    }
    sb_map_clear(&a->pending_values);
    drop_loop_values(a);
    if (a->sync_init) {
        uv_cond_destroy(&a->cond);
        uv_mutex_destroy(&a->lock);
    }
    if (a->commit_event != NULL)
        CloseHandle(a->commit_event);
    sb_dde_map_free(&a->map);
    sb_free(a->source);
    sb_free(a->sub_name);
    sb_free(a);
}

/* ---- publishing what the DDE thread hands over ---- */

static void on_published(void *ctx, int status, uint64_t id, int queues, const char *why)
{
    sb_dde_pub *p = ctx;
    sb_dde_adapter *a = p->a;
    (void)id;
    (void)queues;
    a->publishing--;
    if (p->waiter != NULL) {
        sb_dde__waiter_done(a, p->waiter, status, why != NULL ? why : sb_strerror(status));
    } else if (status != 0 && !a->destroyed) {
        a->dropped++;
        sb_log(SB_LOG_ERROR, a->base.name, "value of %s!%s not committed: %s (%llu dropped so far)",
               p->dde_topic, p->item != NULL ? p->item : "",
               why != NULL ? why : sb_strerror(status), (unsigned long long)a->dropped);
    }
    sb_dde__pub_free(p);
    if (a->destroyed && a->publishing == 0)
        free_adapter(a);
}

/* Adds the DDE headers; 0 or SB_ENOMEM. */
static int add_headers(sb_message *m, const sb_dde_pub *p)
{
    char cp[16];
    if (p->dde_topic != NULL && sb_message_add_header(m, "dde-topic", p->dde_topic) != 0)
        return SB_ENOMEM;
    if (p->item != NULL && sb_message_add_header(m, "dde-item", p->item) != 0)
        return SB_ENOMEM;
    if (p->fmt_name != NULL && sb_message_add_header(m, "dde-format", p->fmt_name) != 0)
        return SB_ENOMEM;
    if (p->text && sb_message_add_header(m, "encoding", "utf-8") != 0)
        return SB_ENOMEM;
    snprintf(cp, sizeof cp, "%u", p->codepage);
    if (p->codepage != 0 && sb_message_add_header(m, "dde-codepage", cp) != 0)
        return SB_ENOMEM;
    return 0;
}

void sb_dde__on_pub(void *arg)
{
    sb_dde_pub *p = arg;
    sb_dde_adapter *a = p->a;
    sb_publish_opts opts = {a->source, 0, NULL};
    sb_message *msg;
    sb_error err;
    const char *why = NULL;

    msg = sb_message_new_owned(p->topic, p->payload, p->len);
    p->payload = NULL; /* now the message's (freed on failure) */
    if (msg == NULL || add_headers(msg, p) != 0) {
        why = "out of memory";
    } else if (a->is_server && !sb_auth_allowed(sb_broker_auth(a->base.broker), NULL, NULL,
                                                p->topic, SB_ACL_WRITE)) {
        why = "denied by the ACL (DDE clients publish as anonymous)";
    } else if (sb_broker_publish(a->base.broker, msg, &opts, on_published, p, &err) == 0) {
        a->publishing++;
        sb_message_unref(msg);
        return; /* p is on_published's */
    } else {
        why = err.msg;
    }
    if (p->waiter != NULL) {
        sb_dde__waiter_done(a, p->waiter, SB_EINVAL, why);
    } else {
        a->dropped++;
        sb_log(SB_LOG_ERROR, a->base.name, "value of %s!%s dropped: %s (%llu dropped so far)",
               p->dde_topic, p->item != NULL ? p->item : "", why, (unsigned long long)a->dropped);
    }
    if (msg != NULL)
        sb_message_unref(msg);
    sb_dde__pub_free(p);
}

/* ---- server: the values the adapter serves ---- */

/* Hands the values gathered since the last batch to the thread, unless
 * it still works on that one. */
static void hand_values(sb_dde_adapter *a)
{
    if (a->values_out && atomic_exchange(&a->values_done, 0))
        a->values_out = 0;
    if (a->values_out || a->values_head == NULL || !a->thread_started)
        return;
    sb_map_clear(&a->loop_values);
    a->values_out = 1;
    sb_dde__push_batch(a, a->values_head, a->values_tail);
    a->values_head = a->values_tail = NULL;
}

void sb_dde__on_values_done(void *arg)
{
    sb_dde_adapter *a = arg;
    if (!a->base.stopping)
        hand_values(a);
}

static int on_value(sb_consumer *c, sb_delivery *d)
{
    sb_dde_adapter *a = c->ctx;
    const sb_message *msg = d->msg;
    char *topic = NULL, *item = NULL;
    sb_dde_job *job = sb_map_get(&a->loop_values, msg->topic);
    sb_dde_value v;

    if (sb_dde_map_match(&a->map, msg->topic, &topic, &item) != 0)
        goto done; /* cannot happen: the filters come from the template */
    if (msg->payload_len > (size_t)SB_DDE_CFG(a->base.cfg)->max_message) {
        sb_log(SB_LOG_WARN, a->base.name,
               "value on %s (%zu bytes) is larger than max_message (%lld bytes): not served",
               msg->topic, msg->payload_len, (long long)SB_DDE_CFG(a->base.cfg)->max_message);
        goto done;
    }
    if (job != NULL) {
        /* not handed over yet: the newer value replaces it */
        if (sb_dde__value_from_msg(&v, msg) != 0) {
            sb_log(SB_LOG_ERROR, a->base.name, "value on %s dropped: out of memory", msg->topic);
            goto done;
        }
        sb_dde__value_clear(&job->value);
        job->value = v;
        hand_values(a);
        goto done;
    }
    job = sb_calloc(1, sizeof(*job));
    if (job == NULL || (job->key = sb_strdup(msg->topic)) == NULL ||
        sb_dde__value_from_msg(&job->value, msg) != 0) {
        sb_log(SB_LOG_ERROR, a->base.name, "value on %s dropped: out of memory", msg->topic);
        sb_dde__job_free(job);
        goto done;
    }
    job->type = SB_DDE_JOB_VALUE;
    job->dde_topic = topic; /* now the job's */
    job->item = item;
    topic = item = NULL;
    /* out of memory here only costs the coalescing */
    (void)sb_map_put(&a->loop_values, job->key, job, NULL);
    if (a->values_tail != NULL)
        a->values_tail->next = job;
    else
        a->values_head = job;
    a->values_tail = job;
    hand_values(a);
done:
    sb_free(topic);
    sb_free(item);
    /* The value is the thread's now: nothing to redeliver. */
    sb_delivery_done(d, 0, NULL);
    return 0;
}

/* Subscribes to the template's topics: one filter per DDE topic served. */
static int subscribe_values(sb_dde_adapter *a, sb_error *err)
{
    const sb_adapter_config *cfg = a->base.cfg;
    int any = SB_DDE_CFG(cfg)->dde_topics_count == 0 ||
              (SB_DDE_CFG(cfg)->dde_topics_count == 1 && strcmp(SB_DDE_CFG(cfg)->dde_topics[0], "*") == 0);
    size_t n = any || a->map.topic_level < 0 ? 1 : SB_DDE_CFG(cfg)->dde_topics_count, made = 0;
    sb_sub_filter *filters = sb_calloc(n, sizeof(*filters));
    sb_sub_settings st;
    sb_sub_def def;
    int rc = 0;

    if (filters == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->base.name);
    for (; made < n; made++) {
        filters[made].filter = sb_dde_map_filter(
            &a->map, any || a->map.topic_level < 0 ? NULL : SB_DDE_CFG(cfg)->dde_topics[made]);
        filters[made].qos = SB_QOS_NONE;
        if (filters[made].filter == NULL) {
            rc = sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->base.name);
            break;
        }
    }
    sb_sub_settings_default(&st);
    st.durability = SB_DURABILITY_MEMORY;
    st.transient = 1;
    st.max_depth = VALUE_QUEUE_DEPTH;
    st.overflow = SB_OVERFLOW_DROP_OLDEST;
    def.filters = filters;
    def.filter_count = n;
    def.protocol = "dde";
    def.owner = NULL;
    /* the current values of every topic it serves, also when it existed */
    if (rc == 0)
        rc = sb_broker_sub_define(a->base.broker, a->sub_name, &def, &st, filters, n, err);
    for (size_t i = 0; i < made; i++)
        sb_free((char *)filters[i].filter);
    sb_free(filters);
    if (rc != 0)
        return rc;
    a->consumer.deliver = on_value;
    a->consumer.ctx = a;
    a->consumer.name = a->base.name;
    a->consumer.window = VALUE_WINDOW;
    if ((rc = sb_broker_attach(a->base.broker, a->sub_name, &a->consumer, err)) != 0)
        return rc;
    a->attached = 1;
    return 0;
}

/* ---- client: the sink ---- */

void sb_dde__on_job_done(void *arg)
{
    sb_dde_job *job = arg;
    sb_dde_adapter *a = job->a;
    if (job->status != 0)
        sb_log(SB_LOG_WARN, a->base.name, "message %llu on %s not delivered (attempt %d): %s",
               (unsigned long long)job->d->msg->id, job->d->sub, job->d->attempt, job->why);
    sb_delivery_done(job->d, job->status, job->status != 0 ? job->why : NULL);
    sb_dde__job_free(job);
}

void sb_dde__on_link_up(void *arg)
{
    sb_dde_adapter *a = arg;
    a->link_up = 1;
    if (a->sink_waiting && !a->base.stopping) {
        a->sink_waiting = 0;
        sb_adapter_sink_ready(&a->base);
    }
}

void sb_dde__on_link_down(void *arg)
{
    sb_dde_adapter *a = arg;
    a->link_up = 0;
}

static void refuse(sb_dde_adapter *a, sb_delivery *d, int status, const char *why)
{
    sb_log(SB_LOG_WARN, a->base.name, "message %llu on %s refused (attempt %d): %s",
           (unsigned long long)d->msg->id, d->sub, d->attempt, why);
    sb_delivery_done(d, status, why);
}

/* The item a delivery is poked into: its dde-item header, else from its
 * topic through the template. NULL with why set if there is none. */
static char *delivery_item(sb_dde_adapter *a, const sb_message *msg, char *why, size_t n)
{
    const char *h = sb_message_header(msg, "dde-item");
    char *t = NULL, *i = NULL;

    if (h != NULL) {
        if (h[0] == '\0') {
            snprintf(why, n, "header dde-item is empty");
            return NULL;
        }
        return sb_strdup(h);
    }
    if (sb_dde_map_match(&a->map, msg->topic, &t, &i) != 0) {
        snprintf(why, n, "topic %s does not fit the template %s, and there is no dde-item header",
                 msg->topic, SB_DDE_CFG(a->base.cfg)->topic);
        return NULL;
    }
    if (t != NULL) {
        char *ft = sb_dde__fold(t), *fc = sb_dde__fold(SB_DDE_CFG(a->base.cfg)->dde_topic);
        int same = ft != NULL && fc != NULL && strcmp(ft, fc) == 0;
        sb_free(ft);
        sb_free(fc);
        if (!same) {
            snprintf(why, n, "topic %s is for DDE topic %s; this adapter is linked to %s",
                     msg->topic, t, SB_DDE_CFG(a->base.cfg)->dde_topic);
            sb_free(t);
            sb_free(i);
            return NULL;
        }
    }
    sb_free(t);
    return i;
}

static int dde_deliver(sb_adapter *base, sb_delivery *d)
{
    sb_dde_adapter *a = (sb_dde_adapter *)base;
    const sb_adapter_config *cfg = base->cfg;
    const sb_message *msg = d->msg;
    char why[320] = "";
    sb_dde_job *job;
    int exec;

    if (a->is_server || !a->thread_started || base->stopping)
        return SB_EBUSY;
    if (!a->link_up) {
        a->sink_waiting = 1; /* the queue keeps it until the link is up */
        return SB_EBUSY;
    }
    if (msg->payload_len > (size_t)SB_DDE_CFG(cfg)->max_message) {
        snprintf(why, sizeof why, "payload of %zu bytes is larger than max_message (%lld bytes)",
                 msg->payload_len, (long long)SB_DDE_CFG(cfg)->max_message);
        refuse(a, d, SB_ETOOBIG, why);
        return 0;
    }
    job = sb_calloc(1, sizeof(*job));
    if (job == NULL) {
        sb_delivery_done(d, SB_ENOMEM, "out of memory");
        return 0;
    }
    exec = SB_DDE_CFG(cfg)->dde_execute_topic != NULL && strcmp(msg->topic, SB_DDE_CFG(cfg)->dde_execute_topic) == 0;
    job->type = exec ? SB_DDE_JOB_EXECUTE : SB_DDE_JOB_POKE;
    job->d = d;
    if (!exec && (job->item = delivery_item(a, msg, why, sizeof why)) == NULL)
        goto refused;
    if (sb_dde__value_from_msg(&job->value, msg) != 0) {
        snprintf(why, sizeof why, "out of memory");
        goto refused;
    }
    if (job->value.kind == SB_DDE_VAL_BAD) {
        snprintf(why, sizeof why, "%s", job->value.bad);
        goto refused;
    }
    if (job->value.kind == SB_DDE_VAL_FORMAT) {
        wchar_t *w = sb_utf8_to_wide(job->value.fmt_name);
        job->fmt = w != NULL ? RegisterClipboardFormatW(w) : 0;
        sb_free(w);
        if (job->fmt == 0 || exec) {
            snprintf(why, sizeof why, "%s",
                     exec ? "a DDE execute carries text only"
                          : "cannot register the clipboard format");
            goto refused;
        }
    } else {
        /* Text: CF_TEXT in the code page, as legacy servers expect; an
         * execute as UTF-16 (DDEML converts it for an ANSI server). */
        unsigned char *out;
        size_t out_len;
        job->fmt = exec ? CF_UNICODETEXT : CF_TEXT;
        if (sb_dde__encode(&out, &out_len, job->value.data, job->value.len, job->fmt, a->codepage,
                           why, sizeof why) != 0)
            goto refused;
        sb_free(job->value.data);
        job->value.data = out;
        job->value.len = out_len;
    }
    sb_dde__push(a, job);
    return 0;
refused:
    job->d = NULL;
    sb_dde__job_free(job);
    refuse(a, d, SB_EINVAL, why);
    return 0;
}

/* ---- lifecycle ---- */

static int dde_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    const sb_dde_settings *ds = SB_DDE_CFG(cfg);
    sb_dde_adapter *a;
    /* The config pass checked the rest (dde_keys.c); only this system can
     * tell which code pages it has. */
    if (ds->dde_codepage != 0 && !IsValidCodePage((UINT)ds->dde_codepage))
        return sb_error_set(err, SB_ECONFIG, 0, "adapter %s: codepage %d is not installed on this system",
                            cfg->name, ds->dde_codepage);
    a = sb_calloc(1, sizeof(*a));
    if (a == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    a->is_server = SB_DDE_CFG(cfg)->dde_role == SB_DDE_SERVER;
    *out = &a->base;
    return 0;
}

static int dde_start(sb_adapter *base, sb_error *err)
{
    sb_dde_adapter *a = (sb_dde_adapter *)base;
    const sb_adapter_config *cfg = base->cfg;
    size_t n;
    int rc;

    a->codepage = SB_DDE_CFG(cfg)->dde_codepage != 0 ? (UINT)SB_DDE_CFG(cfg)->dde_codepage : GetACP();
    a->wine = sb_dde__under_wine();
    if (sb_dde_map_init(&a->map, SB_DDE_CFG(cfg)->topic, base->name, SB_DDE_CFG(cfg)->dde_service) != 0)
        return sb_error_set(err, SB_ECONFIG, 0, "adapter %s: invalid topic template %s", base->name,
                            SB_DDE_CFG(cfg)->topic);
    n = strlen(base->name) + strlen(SB_DDE_CFG(cfg)->dde_service) +
        (SB_DDE_CFG(cfg)->dde_topic != NULL ? strlen(SB_DDE_CFG(cfg)->dde_topic) : 0) + 16;
    a->source = sb_malloc(n);
    a->sub_name = sb_malloc(strlen(base->name) + 5);
    if (a->source == NULL || a->sub_name == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", base->name);
    snprintf(a->source, n, "%s dde:%s%s%s", base->name, SB_DDE_CFG(cfg)->dde_service, a->is_server ? "" : "|",
             a->is_server ? "" : SB_DDE_CFG(cfg)->dde_topic);
    snprintf(a->sub_name, strlen(base->name) + 5, "dde/%s", base->name);
    if ((rc = sb_dde__thread_start(a, err)) != 0)
        return rc;
    if (a->is_server) {
        if ((rc = subscribe_values(a, err)) != 0)
            return rc;
        sb_log(SB_LOG_INFO, base->name,
               "DDE server %s: topics %s, items as %s, CF_TEXT in code page %u", SB_DDE_CFG(cfg)->dde_service,
               SB_DDE_CFG(cfg)->dde_topics_count == 0 ? "*" : SB_DDE_CFG(cfg)->dde_topics[0], SB_DDE_CFG(cfg)->topic, a->codepage);
    } else {
        sb_log(SB_LOG_INFO, base->name,
               "DDE client of %s|%s: %zu items hot-linked as %s, CF_TEXT in code page %u",
               SB_DDE_CFG(cfg)->dde_service, SB_DDE_CFG(cfg)->dde_topic, SB_DDE_CFG(cfg)->dde_items_count, SB_DDE_CFG(cfg)->topic, a->codepage);
    }
    return 0;
}

/* Loop: the thread is gone (its exit was its last post). */
void sb_dde__on_thread_exit(sb_dde_adapter *a)
{
    sb_dde_job *j;
    uv_thread_join(&a->thread);
    a->thread_started = 0;
    /* Deliveries the thread never took are left to the broker: once the
     * adapter has stopped it detaches them, and they return to their queue
     * without counting as a failed attempt. */
    while ((j = a->jobs) != NULL) {
        a->jobs = j->next;
        j->d = NULL;
        sb_dde__job_free(j);
    }
    a->jobs_tail = NULL;
    sb_map_clear(&a->pending_values);
    drop_loop_values(a);
    sb_inbox_close(a->inbox); /* runs what the thread posted before its exit */
    a->inbox = NULL;
    a->stopped_cb(&a->base);
}

static void dde_stop(sb_adapter *base, sb_adapter_stopped_cb cb)
{
    sb_dde_adapter *a = (sb_dde_adapter *)base;
    sb_error err;
    a->stopped_cb = cb;
    if (a->attached) {
        sb_broker_detach(base->broker, &a->consumer, 0);
        a->attached = 0;
        if (sb_broker_unsubscribe(base->broker, a->sub_name, &err) != 0)
            sb_log(SB_LOG_DEBUG, base->name, "%s", err.msg);
    }
    if (a->thread_started) {
        sb_dde__thread_quit(a); /* sb_dde__on_thread_exit completes the stop */
        return;
    }
    if (a->inbox != NULL) {
        sb_inbox_close(a->inbox);
        a->inbox = NULL;
    }
    cb(base);
}

static void dde_destroy(sb_adapter *base)
{
    sb_dde_adapter *a = (sb_dde_adapter *)base;
    if (a->publishing > 0) {
        a->destroyed = 1; /* the last publish callback frees it */
        return;
    }
    free_adapter(a);
}

static unsigned dde_caps_of(const sb_adapter_config *cfg)
{
    return SB_CAP_SOURCE | SB_CAP_DESKTOP | SB_CAP_THREAD |
           (SB_DDE_CFG(cfg)->dde_role == SB_DDE_CLIENT ? SB_CAP_SINK : 0);
}

const sb_adapter_type sb_adapter_dde = {
    .version = SB_ADAPTER_VERSION,
    .name = "dde",
    .caps = SB_CAP_SOURCE | SB_CAP_SINK | SB_CAP_DESKTOP | SB_CAP_THREAD,
    .caps_of = dde_caps_of,
    .create = dde_create,
    .start = dde_start,
    .deliver = dde_deliver,
    .stop = dde_stop,
    .destroy = dde_destroy,
};
