/*
 * The DDE server role: a DDEML service (`service`, default SWITCHBOARD)
 * that legacy DDE clients and Excel (=SWITCHBOARD|topic!item) talk to.
 *
 * - XTYP_CONNECT: the System topic, and the topics of `dde_topics` (any
 *   topic whose name can be a topic level when it is unset or `*`).
 * - XTYP_POKE publishes the data to the item's broker topic (the `topic`
 *   template) and answers DDE_FACK only once the broker committed it;
 *   DDE_FNOTPROCESSED, logged with the reason, when the broker refused it
 *   (full queue, store refusing writes, ACL), when it cannot be converted,
 *   or for an unknown item; DDE_FBUSY while stopping.
 * - XTYP_REQUEST answers the item's last value (fed by the adapter's
 *   subscription, seeded with retained values), not processed when it has
 *   none; XTYP_ADVSTART/ADVREQ serve hot and warm links, starting with the
 *   current value; XTYP_EXECUTE publishes the command to `execute_topic`.
 * - Formats: CF_TEXT (through the code page) and CF_UNICODETEXT for text,
 *   a registered format for a value published with that `dde-format`.
 * - System topic: Topics, SysItems, Formats, Help.
 *
 * DDE names compare without case, so items are found by a folded key; a
 * poke publishes to the spelling the broker already knows for the item (a
 * value it holds, or `items`), else to the client's spelling. Transactions
 * on a known item find it by the values of their string handles first:
 * DDEML's string handles are atoms, equal for equal names while one is
 * held (each item holds its own), and reading a name back costs a round
 * trip to the atom table (under Wine, to the wineserver) per transaction.
 *
 * Wine: DdePostAdvise calls XTYP_ADVREQ for every link on an item of that
 * name whatever its topic; ADVREQ answers only links of the topic asked.
 */
#include "adapters/dde/win/dde_int.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/log.h"
#include "service/map.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

typedef struct srv_item {
    char *topic, *item; /* the spelling published to and logged */
    HSZ htopic, hitem;  /* ours: for DdePostAdvise and data handles */
    sb_dde_value v;
    int has_value;
    int warned; /* a refusal to serve this value was logged */
    int changed;
    struct srv_item *next_changed;
    struct srv_item *next_all;
} srv_item;

typedef struct sb_dde_server {
    HSZ service, system;
    sb_map items;    /* fold(topic) '\n' fold(item) -> srv_item */
    sb_map by_hsz;   /* "htopic|hitem" of the item's own handles -> srv_item */
    sb_map by_topic; /* broker topic of the values it was given -> srv_item */
    srv_item *all;
    srv_item *changed;
    int advise_posted;
    int any_topic; /* dde_topics unset or "*" */
} sb_dde_server;

static const char sys_items[] = "Topics\tSysItems\tFormats\tHelp";
static const char sys_formats[] = "TEXT\tUNICODETEXT";

/* ---- names ---- */

static char *item_key(const char *topic, const char *item)
{
    char *ft = sb_dde__fold(topic), *fi = sb_dde__fold(item), *key = NULL;
    if (ft != NULL && fi != NULL) {
        size_t n = strlen(ft) + strlen(fi) + 2;
        key = sb_malloc(n);
        if (key != NULL)
            snprintf(key, n, "%s\n%s", ft, fi);
    }
    sb_free(ft);
    sb_free(fi);
    return key;
}

/* The configured spelling of name in list (compared without case), or
 * NULL. */
static const char *in_list(char **list, size_t n, const char *name)
{
    char *f = sb_dde__fold(name);
    const char *hit = NULL;
    for (size_t i = 0; f != NULL && hit == NULL && i < n; i++) {
        char *g = sb_dde__fold(list[i]);
        if (g != NULL && strcmp(f, g) == 0)
            hit = list[i];
        sb_free(g);
    }
    sb_free(f);
    return hit;
}

/* The spelling of a topic this server serves, or NULL. */
static const char *served_topic(sb_dde_adapter *a, const char *topic)
{
    const sb_adapter_config *cfg = a->base.cfg;
    if (topic == NULL || sb_dde_name_problem(topic) != NULL)
        return NULL;
    if (a->srv->any_topic)
        return topic;
    return in_list(SB_DDE_CFG(cfg)->dde_topics, SB_DDE_CFG(cfg)->dde_topics_count, topic);
}

/* The spelling of an item served in a topic, or NULL (why says why not). */
static const char *served_item(sb_dde_adapter *a, const char *item, const char **why)
{
    const sb_adapter_config *cfg = a->base.cfg;
    const char *hit;
    if (item == NULL || (*why = sb_dde_name_problem(item)) != NULL)
        return NULL;
    if (SB_DDE_CFG(cfg)->dde_items_count == 0)
        return item;
    hit = in_list(SB_DDE_CFG(cfg)->dde_items, SB_DDE_CFG(cfg)->dde_items_count, item);
    if (hit == NULL)
        *why = "not one of this adapter's items";
    return hit;
}

static void hsz_key(char *out, size_t n, HSZ topic, HSZ item)
{
    snprintf(out, n, "%p|%p", (void *)topic, (void *)item);
}

/* The item of a transaction's string handles, if it is known (a miss is
 * not an answer: resolve the names). */
static srv_item *item_by_hsz(sb_dde_adapter *a, HSZ topic, HSZ item)
{
    char key[64];
    hsz_key(key, sizeof key, topic, item);
    return sb_map_get(&a->srv->by_hsz, key);
}

static srv_item *find_item(sb_dde_adapter *a, const char *topic, const char *item)
{
    char *key = item_key(topic, item);
    srv_item *it = key != NULL ? sb_map_get(&a->srv->items, key) : NULL;
    sb_free(key);
    return it;
}

/* Finds or creates the item (NULL on out-of-memory). */
static srv_item *get_item(sb_dde_adapter *a, const char *topic, const char *item)
{
    sb_dde_server *s = a->srv;
    char *key = item_key(topic, item);
    srv_item *it;
    wchar_t *wt = NULL, *wi = NULL;

    if (key == NULL)
        return NULL;
    it = sb_map_get(&s->items, key);
    if (it != NULL) {
        sb_free(key);
        return it;
    }
    it = sb_calloc(1, sizeof(*it));
    wt = sb_utf8_to_wide(topic);
    wi = sb_utf8_to_wide(item);
    if (it == NULL || wt == NULL || wi == NULL || (it->topic = sb_strdup(topic)) == NULL ||
        (it->item = sb_strdup(item)) == NULL)
        goto fail;
    it->htopic = DdeCreateStringHandleW(a->inst, wt, CP_WINUNICODE);
    it->hitem = DdeCreateStringHandleW(a->inst, wi, CP_WINUNICODE);
    if (it->htopic == 0 || it->hitem == 0 || sb_map_put(&s->items, key, it, NULL) != 0)
        goto fail;
    {
        char hk[64];
        hsz_key(hk, sizeof hk, it->htopic, it->hitem);
        if (sb_map_put(&s->by_hsz, hk, it, NULL) != 0) {
            sb_map_remove(&s->items, key);
            goto fail;
        }
    }
    it->next_all = s->all;
    s->all = it;
    sb_free(key);
    sb_free(wt);
    sb_free(wi);
    return it;
fail:
    if (it != NULL) {
        if (it->htopic != 0)
            DdeFreeStringHandle(a->inst, it->htopic);
        if (it->hitem != 0)
            DdeFreeStringHandle(a->inst, it->hitem);
        sb_free(it->topic);
        sb_free(it->item);
        sb_free(it);
    }
    sb_free(key);
    sb_free(wt);
    sb_free(wi);
    return NULL;
}

static void mark_changed(sb_dde_adapter *a, srv_item *it)
{
    if (it->changed)
        return;
    it->changed = 1;
    it->next_changed = a->srv->changed;
    a->srv->changed = it;
}

/* ---- serving values ---- */

/* A data handle for text in fmt (CF_TEXT or CF_UNICODETEXT), or 0 (why). */
static HDDEDATA text_handle(sb_dde_adapter *a, const char *utf8, size_t len, HSZ hitem, UINT fmt,
                            char *why, size_t n)
{
    unsigned char *out;
    size_t out_len;
    HDDEDATA h;
    if (sb_dde__encode(&out, &out_len, (const unsigned char *)utf8, len, fmt, a->codepage, why,
                       n) != 0)
        return 0;
    h = DdeCreateDataHandle(a->inst, out, (DWORD)out_len, 0, hitem, fmt, 0);
    sb_free(out);
    if (h == 0)
        snprintf(why, n, "DdeCreateDataHandle failed (DMLERR 0x%04x)", DdeGetLastError(a->inst));
    return h;
}

/* The item's value in fmt, or 0 (logged once per value when it cannot be
 * served in that format). */
static HDDEDATA render(sb_dde_adapter *a, srv_item *it, UINT fmt, const char *what)
{
    char why[320] = "", name[128];
    HDDEDATA h = 0;

    if (!it->has_value)
        return 0;
    if (!sb_dde__servable(&it->v, fmt)) {
        if (it->v.kind == SB_DDE_VAL_BAD)
            snprintf(why, sizeof why, "%s", it->v.bad);
        else if (it->v.kind == SB_DDE_VAL_TEXT)
            snprintf(why, sizeof why, "the value is text: ask for CF_TEXT or CF_UNICODETEXT");
        else
            snprintf(why, sizeof why, "the value is in format %s: ask for it", it->v.fmt_name);
    } else if (it->v.kind == SB_DDE_VAL_TEXT) {
        h = text_handle(a, (const char *)it->v.data, it->v.len, it->hitem, fmt, why, sizeof why);
    } else {
        h = DdeCreateDataHandle(a->inst, it->v.data, (DWORD)it->v.len, 0, it->hitem, fmt, 0);
    }
    if (h == 0 && !it->warned) {
        it->warned = 1;
        sb_log(SB_LOG_WARN, a->base.name, "%s %s!%s as %s refused: %s", what, it->topic, it->item,
               sb_dde__format_name(fmt, name, sizeof name), why);
    }
    return h;
}

/* ---- the System topic ---- */

static HDDEDATA system_item(sb_dde_adapter *a, const char *item, HSZ hitem, UINT fmt)
{
    const sb_adapter_config *cfg = a->base.cfg;
    char why[200], *buf = NULL;
    size_t len = 0, cap = 0;
    HDDEDATA h = 0;
    const char *text = NULL;
    int ok = 1;

    if (fmt != CF_TEXT && fmt != CF_UNICODETEXT)
        return 0;
#define APPEND(s)                                                                                  \
    do {                                                                                           \
        size_t n_ = strlen(s);                                                                     \
        if (len + n_ + 2 > cap) {                                                                  \
            char *nb_ = sb_realloc(buf, cap = (len + n_ + 2) * 2);                                 \
            if (nb_ == NULL) {                                                                     \
                ok = 0;                                                                            \
                break;                                                                             \
            }                                                                                      \
            buf = nb_;                                                                             \
        }                                                                                          \
        if (len > 0)                                                                               \
            buf[len++] = '\t';                                                                     \
        memcpy(buf + len, s, n_ + 1);                                                              \
        len += n_;                                                                                 \
    } while (0)
    if (_stricmp(item, "Topics") == 0) {
        APPEND("System");
        if (!a->srv->any_topic) {
            for (size_t i = 0; ok && i < SB_DDE_CFG(cfg)->dde_topics_count; i++)
                APPEND(SB_DDE_CFG(cfg)->dde_topics[i]);
        } else {
            /* any topic: those the broker has values for */
            sb_map seen = {0};
            for (srv_item *it = a->srv->all; ok && it != NULL; it = it->next_all) {
                char *f = sb_dde__fold(it->topic);
                if (it->has_value && f != NULL && sb_map_get(&seen, f) == NULL) {
                    if (sb_map_put(&seen, f, it, NULL) != 0)
                        ok = 0;
                    else
                        APPEND(it->topic);
                }
                sb_free(f);
            }
            sb_map_clear(&seen);
        }
        text = buf;
    } else if (_stricmp(item, "SysItems") == 0) {
        text = sys_items;
    } else if (_stricmp(item, "Formats") == 0) {
        text = sys_formats;
    } else if (_stricmp(item, "Help") == 0) {
        char help[1024];
        snprintf(help, sizeof help,
                 "Switchboard DDE server %s. An item of a topic is the broker topic %s "
                 "(Excel: =%s|topic!item). POKE publishes (acknowledged once committed), "
                 "REQUEST and ADVISE serve the last value published%s%s.",
                 SB_DDE_CFG(cfg)->dde_service, SB_DDE_CFG(cfg)->topic, SB_DDE_CFG(cfg)->dde_service,
                 SB_DDE_CFG(cfg)->dde_execute_topic != NULL ? ", EXECUTE publishes to " : "",
                 SB_DDE_CFG(cfg)->dde_execute_topic != NULL ? SB_DDE_CFG(cfg)->dde_execute_topic : "");
        APPEND(help);
        text = buf;
    }
#undef APPEND
    if (text != NULL && ok) {
        h = text_handle(a, text, strlen(text), hitem, fmt, why, sizeof why);
        if (h == 0)
            sb_log(SB_LOG_WARN, a->base.name, "System!%s: %s", item, why);
    }
    sb_free(buf);
    return h;
}

/* ---- transactions ---- */

static int is_system(sb_dde_adapter *a, HSZ topic)
{
    return topic == a->srv->system || DdeCmpStringHandles(topic, a->srv->system) == 0;
}

static HDDEDATA on_poke(sb_dde_adapter *a, UINT fmt, HSZ htopic, HSZ hitem, HDDEDATA data)
{
    srv_item *it = item_by_hsz(a, htopic, hitem);
    char *topic = it != NULL ? NULL : sb_dde__hsz_utf8(a->inst, htopic);
    char *item = it != NULL ? NULL : sb_dde__hsz_utf8(a->inst, hitem);
    const char *t, *i, *why = NULL;
    char reason[320] = "", name[128];
    unsigned char *payload = NULL;
    size_t payload_len = 0;
    int text = 0;
    HDDEDATA answer = (HDDEDATA)DDE_FNOTPROCESSED;
    sb_dde_pub *p = NULL;

    if (it != NULL) {
        t = it->topic;
        i = it->item;
    } else {
        t = topic != NULL && !is_system(a, htopic) ? served_topic(a, topic) : NULL;
        i = t != NULL ? served_item(a, item, &why) : NULL;
    }
    if (t == NULL) {
        snprintf(reason, sizeof reason, "topic %s takes no pokes", topic ? topic : "?");
        goto refuse;
    }
    if (i == NULL) {
        snprintf(reason, sizeof reason, "item %s: %s", item ? item : "?", why ? why : "invalid");
        goto refuse;
    }
    if (sb_dde__read(&payload, &payload_len, &text, data, fmt, a->codepage,
                     SB_DDE_CFG(a->base.cfg)->max_message, reason, sizeof reason) != 0)
        goto refuse;
    /* the spelling the broker already knows for this item (and the item,
     * to be found by its handles next time) */
    if (it == NULL && (it = get_item(a, t, i)) != NULL && it->has_value) {
        t = it->topic;
        i = it->item;
    }
    p = sb_calloc(1, sizeof(*p));
    if (p == NULL || sb_dde_map_topic(&p->topic, &a->map, t, i) != 0 ||
        (p->dde_topic = sb_strdup(t)) == NULL || (p->item = sb_strdup(i)) == NULL ||
        (p->fmt_name = sb_strdup(sb_dde__format_name(fmt, name, sizeof name))) == NULL) {
        sb_dde__pub_free(p);
        snprintf(reason, sizeof reason, "out of memory");
        goto refuse;
    }
    p->a = a;
    p->payload = payload; /* now owned by p */
    payload = NULL;
    p->len = payload_len;
    p->text = text;
    p->codepage = fmt == CF_TEXT ? a->codepage : 0;
    answer = sb_dde__publish_wait(a, p, 1);
    goto done;

refuse:
    sb_log(SB_LOG_WARN, a->base.name, "poke %s!%s refused (DDE_FNOTPROCESSED): %s",
           it != NULL ? it->topic
           : topic    ? topic
                      : "?",
           it != NULL ? it->item
           : item     ? item
                      : "?",
           reason);
done:
    sb_free(payload);
    sb_free(topic);
    sb_free(item);
    return answer;
}

static HDDEDATA on_execute(sb_dde_adapter *a, HSZ htopic, HDDEDATA data)
{
    const char *exec_topic = SB_DDE_CFG(a->base.cfg)->dde_execute_topic;
    char *topic = sb_dde__hsz_utf8(a->inst, htopic);
    char reason[320] = "";
    unsigned char *raw = NULL, *cmd = NULL;
    size_t cmd_len = 0;
    DWORD len = DdeGetData(data, NULL, 0, 0);
    UINT fmt = CF_UNICODETEXT;
    HDDEDATA answer = (HDDEDATA)DDE_FNOTPROCESSED;
    sb_dde_pub *p;
    int text;

    if (exec_topic == NULL) {
        snprintf(reason, sizeof reason, "no execute_topic is configured");
        goto refuse;
    }
    if (len > (DWORD)SB_DDE_CFG(a->base.cfg)->max_message * 2 + 2) {
        snprintf(reason, sizeof reason, "%lu bytes is larger than max_message", (unsigned long)len);
        goto refuse;
    }
    raw = sb_malloc(len + 2);
    if (raw == NULL) {
        snprintf(reason, sizeof reason, "out of memory");
        goto refuse;
    }
    DdeGetData(data, raw, len, 0);
    /* A server made with DdeInitializeW gets the command as UTF-16. Wine's
     * DDEML decides by the windows of both sides and may hand over an ANSI
     * client's bytes as they are: there, a command whose second byte is not
     * NUL is taken as ANSI (commands start with a printable character). */
    if (a->wine && len >= 2 && raw[1] != 0)
        fmt = CF_TEXT;
    if (sb_dde__decode(&cmd, &cmd_len, &text, raw, len, fmt, a->codepage, reason, sizeof reason) !=
        0)
        goto refuse;
    p = sb_calloc(1, sizeof(*p));
    if (p == NULL || (p->topic = sb_strdup(exec_topic)) == NULL ||
        (topic != NULL && (p->dde_topic = sb_strdup(topic)) == NULL)) {
        sb_dde__pub_free(p);
        snprintf(reason, sizeof reason, "out of memory");
        goto refuse;
    }
    p->a = a;
    p->payload = cmd; /* now owned by p */
    cmd = NULL;
    p->len = cmd_len;
    p->text = 1;
    answer = sb_dde__publish_wait(a, p, 1);
    goto done;
refuse:
    sb_log(SB_LOG_WARN, a->base.name, "execute on topic %s refused (DDE_FNOTPROCESSED): %s",
           topic ? topic : "?", reason);
done:
    sb_free(raw);
    sb_free(cmd);
    sb_free(topic);
    return answer;
}

/* XTYP_REQUEST, XTYP_ADVREQ: the item's value. */
static HDDEDATA on_request(sb_dde_adapter *a, UINT type, UINT fmt, HCONV conv, HSZ htopic,
                           HSZ hitem)
{
    char *topic, *item;
    const char *t, *i, *why = NULL;
    HDDEDATA h = 0;
    srv_item *it;

    if (type == XTYP_ADVREQ) {
        /* Wine asks for every link on an item of this name, whatever its
         * topic: answer only the topic this advise is for. */
        CONVINFO ci;
        memset(&ci, 0, sizeof ci);
        ci.cb = sizeof ci;
        if (DdeQueryConvInfo(conv, QID_SYNC, &ci) == 0 ||
            (ci.hszTopic != htopic && DdeCmpStringHandles(ci.hszTopic, htopic) != 0))
            return 0;
    }
    if ((it = item_by_hsz(a, htopic, hitem)) != NULL) {
        h = render(a, it, fmt, type == XTYP_REQUEST ? "REQUEST" : "ADVISE");
        if (h == 0 && type == XTYP_REQUEST && !it->has_value)
            sb_log(SB_LOG_DEBUG, a->base.name, "REQUEST %s!%s: no value yet", it->topic, it->item);
        return h;
    }
    topic = sb_dde__hsz_utf8(a->inst, htopic);
    item = sb_dde__hsz_utf8(a->inst, hitem);
    if (topic != NULL && item != NULL && is_system(a, htopic)) {
        h = type == XTYP_REQUEST ? system_item(a, item, hitem, fmt) : 0;
        if (h == 0 && type == XTYP_REQUEST)
            sb_log(SB_LOG_DEBUG, a->base.name, "REQUEST System!%s: no such item", item);
        goto done;
    }
    t = served_topic(a, topic);
    i = t != NULL ? served_item(a, item, &why) : NULL;
    it = i != NULL ? find_item(a, t, i) : NULL;
    if (it != NULL)
        h = render(a, it, fmt, type == XTYP_REQUEST ? "REQUEST" : "ADVISE");
    if (h == 0 && type == XTYP_REQUEST && (it == NULL || !it->has_value))
        sb_log(SB_LOG_DEBUG, a->base.name, "REQUEST %s!%s: %s", topic ? topic : "?",
               item ? item : "?", i == NULL ? (why ? why : "unknown item") : "no value yet");
done:
    sb_free(topic);
    sb_free(item);
    return h;
}

static HDDEDATA on_advstart(sb_dde_adapter *a, UINT fmt, HSZ htopic, HSZ hitem)
{
    srv_item *it = item_by_hsz(a, htopic, hitem);
    char *topic = it != NULL ? NULL : sb_dde__hsz_utf8(a->inst, htopic);
    char *item = it != NULL ? NULL : sb_dde__hsz_utf8(a->inst, hitem);
    const char *t = NULL, *i = NULL, *why = NULL;
    char name[128];
    int ok = 0;

    if (it == NULL && topic != NULL && item != NULL && !is_system(a, htopic)) {
        t = served_topic(a, topic);
        i = t != NULL ? served_item(a, item, &why) : NULL;
        if (i != NULL)
            it = get_item(a, t, i);
    }
    if (!(fmt == CF_TEXT || fmt == CF_UNICODETEXT || fmt >= 0xC000))
        it = NULL;
    if (it != NULL) {
        ok = 1;
        if (it->has_value) {
            /* Start with the current value: once this callback has
             * returned and DDEML has made the link. */
            mark_changed(a, it);
            if (!a->srv->advise_posted && PostMessageW(a->hwnd, SB_DDE_WM_ADVISE, 0, 0))
                a->srv->advise_posted = 1;
        }
    } else {
        sb_log(SB_LOG_DEBUG, a->base.name, "ADVSTART %s!%s as %s refused: %s", topic ? topic : "?",
               item ? item : "?", sb_dde__format_name(fmt, name, sizeof name),
               why != NULL ? why : "unknown topic, item or format");
    }
    sb_free(topic);
    sb_free(item);
    return (HDDEDATA)(UINT_PTR)ok;
}

static HDDEDATA on_wildconnect(sb_dde_adapter *a, HSZ htopic, HSZ hservice)
{
    const sb_adapter_config *cfg = a->base.cfg;
    HSZPAIR pairs[66];
    HSZ made[64];
    size_t n = 0, nmade = 0;
    HDDEDATA h;

    if (hservice != 0 && DdeCmpStringHandles(hservice, a->srv->service) != 0)
        return 0;
    if (htopic == 0 || is_system(a, htopic)) {
        pairs[n].hszSvc = a->srv->service;
        pairs[n++].hszTopic = a->srv->system;
    }
    for (size_t i = 0; !a->srv->any_topic && i < SB_DDE_CFG(cfg)->dde_topics_count && nmade < 64; i++) {
        wchar_t *w = sb_utf8_to_wide(SB_DDE_CFG(cfg)->dde_topics[i]);
        HSZ hs = w != NULL ? DdeCreateStringHandleW(a->inst, w, CP_WINUNICODE) : 0;
        sb_free(w);
        if (hs == 0)
            continue;
        made[nmade++] = hs;
        if (htopic == 0 || DdeCmpStringHandles(htopic, hs) == 0) {
            pairs[n].hszSvc = a->srv->service;
            pairs[n++].hszTopic = hs;
        }
    }
    if (a->srv->any_topic && htopic != 0 && !is_system(a, htopic)) {
        char *t = sb_dde__hsz_utf8(a->inst, htopic);
        if (served_topic(a, t) != NULL) {
            pairs[n].hszSvc = a->srv->service;
            pairs[n++].hszTopic = htopic;
        }
        sb_free(t);
    }
    pairs[n].hszSvc = pairs[n].hszTopic = 0;
    h = n > 0 ? DdeCreateDataHandle(a->inst, (LPBYTE)pairs, (DWORD)((n + 1) * sizeof(HSZPAIR)), 0,
                                    0, CF_TEXT, 0)
              : 0;
    for (size_t i = 0; i < nmade; i++)
        DdeFreeStringHandle(a->inst, made[i]);
    return h;
}

HDDEDATA CALLBACK sb_dde__server_cb(UINT type, UINT fmt, HCONV conv, HSZ hsz1, HSZ hsz2,
                                    HDDEDATA data, ULONG_PTR d1, ULONG_PTR d2)
{
    sb_dde_adapter *a = sb_dde__current();
    (void)d1;
    (void)d2;
    if (a == NULL || a->srv == NULL)
        return 0;
    /* Clipboard formats are 16 bits; Wine passes a poke's sign-extended */
    fmt &= 0xFFFF;
    switch (type) {
    case XTYP_CONNECT: {
        char *t;
        int ok;
        if (is_system(a, hsz1))
            return (HDDEDATA)TRUE;
        t = sb_dde__hsz_utf8(a->inst, hsz1);
        ok = served_topic(a, t) != NULL;
        if (!ok)
            sb_log(SB_LOG_DEBUG, a->base.name, "connection to topic %s refused (not served)",
                   t ? t : "?");
        sb_free(t);
        return (HDDEDATA)(UINT_PTR)ok;
    }
    case XTYP_WILDCONNECT:
        return on_wildconnect(a, hsz1, hsz2);
    case XTYP_CONNECT_CONFIRM:
    case XTYP_DISCONNECT:
        return 0;
    case XTYP_POKE:
        return on_poke(a, fmt, hsz1, hsz2, data);
    case XTYP_EXECUTE:
        return on_execute(a, hsz1, data);
    case XTYP_REQUEST:
    case XTYP_ADVREQ:
        return on_request(a, type, fmt, conv, hsz1, hsz2);
    case XTYP_ADVSTART:
        return on_advstart(a, fmt, hsz1, hsz2);
    case XTYP_ADVSTOP:
        return 0;
    default:
        return 0;
    }
}

/* ---- values from the loop ---- */

void sb_dde__server_job(sb_dde_adapter *a, sb_dde_job *job)
{
    const char *topic = job->dde_topic;
    const char *why = NULL, *item;
    srv_item *it = job->key != NULL ? sb_map_get(&a->srv->by_topic, job->key) : NULL;

    if (it != NULL)
        goto set; /* a topic seen before: checked, and spelled as the broker does */
    if (topic == NULL && SB_DDE_CFG(a->base.cfg)->dde_topics_count == 1)
        topic = SB_DDE_CFG(a->base.cfg)->dde_topics[0];
    item = topic != NULL && served_topic(a, topic) != NULL ? served_item(a, job->item, &why) : NULL;
    if (item == NULL) {
        sb_log(SB_LOG_DEBUG, a->base.name, "value of %s!%s not served: %s", topic ? topic : "?",
               job->item, why ? why : "topic not served");
        sb_dde__job_free(job);
        return;
    }
    it = get_item(a, topic, job->item);
    if (it == NULL) {
        sb_log(SB_LOG_ERROR, a->base.name, "value of %s!%s dropped: out of memory", topic,
               job->item);
        sb_dde__job_free(job);
        return;
    }
    /* the broker's spelling wins */
    if (strcmp(it->topic, topic) != 0 || strcmp(it->item, job->item) != 0) {
        char *nt = sb_strdup(topic), *ni = sb_strdup(job->item);
        if (nt != NULL && ni != NULL) {
            sb_free(it->topic);
            sb_free(it->item);
            it->topic = nt;
            it->item = ni;
        } else {
            sb_free(nt);
            sb_free(ni);
        }
    }
    if (job->key != NULL)
        (void)sb_map_put(&a->srv->by_topic, job->key, it, NULL); /* a cache: may fail */
set:
    sb_dde__value_clear(&it->v);
    it->v = job->value; /* now owned by the item */
    memset(&job->value, 0, sizeof job->value);
    it->has_value = 1;
    it->warned = 0;
    mark_changed(a, it);
    sb_dde__job_free(job);
}

void sb_dde__server_advise(sb_dde_adapter *a)
{
    sb_dde_server *s = a->srv;
    srv_item *list = s->changed;
    s->changed = NULL;
    s->advise_posted = 0;
    while (list != NULL) {
        srv_item *next = list->next_changed;
        list->changed = 0;
        list->next_changed = NULL;
        DdePostAdvise(a->inst, list->htopic, list->hitem);
        list = next;
    }
}

/* ---- start, stop ---- */

int sb_dde__server_init(sb_dde_adapter *a, char *why, size_t n)
{
    const sb_adapter_config *cfg = a->base.cfg;
    sb_dde_server *s = sb_calloc(1, sizeof(*s));
    wchar_t *ws = sb_utf8_to_wide(SB_DDE_CFG(cfg)->dde_service);

    if (s == NULL || ws == NULL) {
        sb_free(s);
        sb_free(ws);
        snprintf(why, n, "out of memory");
        return SB_ENOMEM;
    }
    a->srv = s;
    s->any_topic = SB_DDE_CFG(cfg)->dde_topics_count == 0 ||
                   (SB_DDE_CFG(cfg)->dde_topics_count == 1 && strcmp(SB_DDE_CFG(cfg)->dde_topics[0], "*") == 0);
    s->service = DdeCreateStringHandleW(a->inst, ws, CP_WINUNICODE);
    s->system = DdeCreateStringHandleW(a->inst, L"System", CP_WINUNICODE);
    sb_free(ws);
    if (s->service == 0 || s->system == 0) {
        snprintf(why, n, "DdeCreateStringHandle failed (DMLERR 0x%04x)", DdeGetLastError(a->inst));
        return SB_EIO;
    }
    if (DdeNameService(a->inst, s->service, 0, DNS_REGISTER) == 0) {
        snprintf(why, n, "cannot register DDE service %s (DMLERR 0x%04x)", SB_DDE_CFG(cfg)->dde_service,
                 DdeGetLastError(a->inst));
        return SB_EIO;
    }
    /* after start() has returned: a probe waits on other programs */
    PostMessageW(a->hwnd, SB_DDE_WM_PROBE, 0, 0);
    return 0;
}

void sb_dde__server_probe(sb_dde_adapter *a)
{
    /* DDEML lets two servers register one name (clients then reach either)
     * and refuses our own connections (CBF_FAIL_SELFCONNECTIONS): a
     * conversation here is with another server. Say so rather than fight. */
    HCONV probe = DdeConnect(a->inst, a->srv->service, a->srv->system, NULL);
    if (probe != 0) {
        sb_log(SB_LOG_WARN, a->base.name,
               "another DDE server also answers service %s: clients may reach either",
               SB_DDE_CFG(a->base.cfg)->dde_service);
        DdeDisconnect(probe);
    }
}

void sb_dde__server_fini(sb_dde_adapter *a)
{
    sb_dde_server *s = a->srv;
    if (s == NULL)
        return;
    DdeNameService(a->inst, s->service, 0, DNS_UNREGISTER);
    while (s->all != NULL) {
        srv_item *it = s->all;
        s->all = it->next_all;
        DdeFreeStringHandle(a->inst, it->htopic);
        DdeFreeStringHandle(a->inst, it->hitem);
        sb_dde__value_clear(&it->v);
        sb_free(it->topic);
        sb_free(it->item);
        sb_free(it);
    }
    sb_map_clear(&s->items);
    sb_map_clear(&s->by_hsz);
    sb_map_clear(&s->by_topic);
    DdeFreeStringHandle(a->inst, s->service);
    DdeFreeStringHandle(a->inst, s->system);
    sb_free(s);
    a->srv = NULL;
}
