/* Reference-counted messages and header encoding. */
#include "service/message.h"
#include "service/alloc.h"
#include "service/error.h"

#include <string.h>
#include <uv.h>

int64_t sb_now_ms(void)
{
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* A message and its topic are one allocation, and sb_message_new puts the
 * payload copy in it too: a publish costs one malloc instead of three.
 * sb_message_unref frees topic and payload only when they point elsewhere. */
static sb_message *message_alloc(const char *topic, size_t extra)
{
    size_t tlen = strlen(topic != NULL ? topic : "");
    sb_message *m = sb_malloc(sizeof(*m) + tlen + 1 + extra);
    if (m == NULL)
        return NULL;
    memset(m, 0, sizeof(*m));
    m->topic = (char *)(m + 1);
    memcpy(m->topic, topic != NULL ? topic : "", tlen + 1);
    m->created_ms = sb_now_ms();
    m->refs = 1;
    return m;
}

sb_message *sb_message_new_owned(const char *topic, unsigned char *payload, size_t payload_len)
{
    sb_message *m = message_alloc(topic, 0);
    if (m == NULL) {
        sb_free(payload);
        return NULL;
    }
    m->payload = payload;
    m->payload_len = payload_len;
    return m;
}

sb_message *sb_message_new(const char *topic, const void *payload, size_t payload_len)
{
    sb_message *m = message_alloc(topic, payload_len);
    if (m == NULL)
        return NULL;
    m->payload = (unsigned char *)m->topic + strlen(m->topic) + 1;
    if (payload_len > 0)
        memcpy(m->payload, payload, payload_len);
    m->payload_len = payload_len;
    return m;
}

int sb_message_add_header(sb_message *m, const char *key, const char *value)
{
    return sb_message_add_header_n(m, key, strlen(key), value, strlen(value));
}

int sb_message_add_header_n(sb_message *m, const char *key, size_t klen, const char *value,
                            size_t vlen)
{
    sb_header *h = sb_realloc(m->headers, (m->header_count + 1) * sizeof(*h));
    char *kv;
    if (h == NULL)
        return SB_ENOMEM;
    m->headers = h;
    /* key and value in one allocation (freed through the key) */
    kv = sb_malloc(klen + 1 + vlen + 1);
    if (kv == NULL)
        return SB_ENOMEM;
    memcpy(kv, key, klen);
    kv[klen] = '\0';
    memcpy(kv + klen + 1, value, vlen);
    kv[klen + 1 + vlen] = '\0';
    h[m->header_count].key = kv;
    h[m->header_count].value = kv + klen + 1;
    m->header_count++;
    return 0;
}

const char *sb_message_header(const sb_message *m, const char *key)
{
    for (size_t i = 0; i < m->header_count; i++)
        if (strcmp(m->headers[i].key, key) == 0)
            return m->headers[i].value;
    return NULL;
}

sb_message *sb_message_ref(sb_message *m)
{
    m->refs++;
    return m;
}

void sb_message_unref(sb_message *m)
{
    if (m == NULL || --m->refs > 0)
        return;
    for (size_t i = 0; i < m->header_count; i++)
        sb_free(m->headers[i].key); /* and the value (add_header_n) */
    sb_free(m->headers);
    if (m->topic != (char *)(m + 1))
        sb_free(m->topic);
    if (m->payload != (unsigned char *)(m + 1) + strlen(m->topic) + 1)
        sb_free(m->payload);
    sb_free(m);
}

size_t sb_message_size(const sb_message *m)
{
    size_t n = m->payload_len + strlen(m->topic);
    for (size_t i = 0; i < m->header_count; i++)
        n += strlen(m->headers[i].key) + strlen(m->headers[i].value) + 2;
    return n;
}

size_t sb_message_headers_size(const sb_message *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->header_count; i++)
        n += strlen(m->headers[i].key) + strlen(m->headers[i].value) + 2;
    return n;
}

void sb_message_headers_write(const sb_message *m, unsigned char *out)
{
    size_t off = 0;
    for (size_t i = 0; i < m->header_count; i++) {
        size_t kl = strlen(m->headers[i].key) + 1, vl = strlen(m->headers[i].value) + 1;
        memcpy(out + off, m->headers[i].key, kl);
        off += kl;
        memcpy(out + off, m->headers[i].value, vl);
        off += vl;
    }
}

int sb_message_headers_encode(const sb_message *m, unsigned char **out, size_t *out_len)
{
    size_t n = sb_message_headers_size(m);
    unsigned char *buf;
    *out = NULL;
    *out_len = 0;
    if (n == 0)
        return 0;
    buf = sb_malloc(n);
    if (buf == NULL)
        return SB_ENOMEM;
    sb_message_headers_write(m, buf);
    *out = buf;
    *out_len = n;
    return 0;
}

int sb_message_headers_decode(sb_message *m, const unsigned char *blob, size_t len)
{
    size_t off = 0;
    while (off < len) {
        const char *key = (const char *)blob + off;
        const unsigned char *kend = memchr(blob + off, '\0', len - off);
        const unsigned char *vend;
        int rc;
        if (kend == NULL)
            return SB_ECORRUPT;
        off = (size_t)(kend - blob) + 1;
        vend = off < len ? memchr(blob + off, '\0', len - off) : NULL;
        if (vend == NULL)
            return SB_ECORRUPT;
        rc = sb_message_add_header(m, key, (const char *)blob + off);
        if (rc != 0)
            return rc;
        off = (size_t)(vend - blob) + 1;
    }
    return 0;
}
