/* Reference-counted messages and header encoding. */
#include "service/message.h"
#include "service/alloc.h"
#include "service/error.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

int64_t sb_now_ms(void)
{
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* A message is one allocation: the struct, room for the headers the
 * publisher said it would add (sb_message_new_room), the topic, the payload
 * copy (sb_message_new) and the headers' text. A publish so costs one
 * malloc where it cost five (message, topic, payload, header array, each
 * header). Parts added past that room are allocated apart, and
 * sb_message_unref frees only those. */
static sb_message *message_alloc(const char *topic, size_t tlen, size_t extra, size_t headers,
                                 size_t header_bytes)
{
    size_t n = sizeof(sb_message) + tlen + 1;
    sb_message *m;
    if (headers > SIZE_MAX / 4 / sizeof(sb_header) || tlen > SIZE_MAX / 4)
        return NULL;
    n += headers * sizeof(sb_header);
    if (extra > SIZE_MAX - n || header_bytes > SIZE_MAX - n - extra)
        return NULL;
    n += extra + header_bytes;
    m = sb_malloc(n);
    if (m == NULL)
        return NULL;
    memset(m, 0, sizeof(*m));
    m->header_slots = headers;
    m->headers = headers > 0 ? (sb_header *)(m + 1) : NULL;
    m->topic = (char *)(m + 1) + headers * sizeof(sb_header);
    if (tlen > 0)
        memcpy(m->topic, topic, tlen);
    m->topic[tlen] = '\0';
    m->topic_len = tlen;
    m->size = tlen;
    m->room = m->topic + tlen + 1 + extra;
    m->room_end = (char *)m + n;
    m->created_ms = sb_now_ms();
    m->refs = 1;
    return m;
}

/* Whether p lies in m's own block. */
static int in_block(const sb_message *m, const void *p)
{
    return (uintptr_t)p >= (uintptr_t)m && (uintptr_t)p < (uintptr_t)m->room_end;
}

sb_message *sb_message_new_owned(const char *topic, unsigned char *payload, size_t payload_len)
{
    const char *t = topic != NULL ? topic : "";
    sb_message *m = message_alloc(t, strlen(t), 0, 0, 0);
    if (m == NULL) {
        sb_free(payload);
        return NULL;
    }
    m->payload = payload;
    m->payload_len = payload_len;
    m->payload_apart = 1;
    m->size += payload_len;
    return m;
}

sb_message *sb_message_new_room(const char *topic, size_t tlen, const void *payload,
                                size_t payload_len, size_t headers, size_t header_bytes)
{
    sb_message *m = message_alloc(topic != NULL ? topic : "", topic != NULL ? tlen : 0, payload_len,
                                  headers, header_bytes);
    if (m == NULL)
        return NULL;
    m->payload = (unsigned char *)m->topic + m->topic_len + 1;
    if (payload_len > 0)
        memcpy(m->payload, payload, payload_len);
    m->payload_len = payload_len;
    m->size += payload_len;
    return m;
}

sb_message *sb_message_new(const char *topic, const void *payload, size_t payload_len)
{
    return sb_message_new_room(topic, topic != NULL ? strlen(topic) : 0, payload, payload_len, 0,
                               0);
}

int sb_message_add_header(sb_message *m, const char *key, const char *value)
{
    return sb_message_add_header_n(m, key, strlen(key), value, strlen(value));
}

int sb_message_add_header_n(sb_message *m, const char *key, size_t klen, const char *value,
                            size_t vlen)
{
    size_t need;
    char *kv;
    /* Keys and values are C strings wherever they go (the store's encoding,
     * every protocol): a NUL ends them here too, so m->size stays true. */
    klen = strnlen(key, klen);
    vlen = strnlen(value, vlen);
    need = klen + 1 + vlen + 1;
    if (m->header_count >= m->header_slots) {
        /* past the block's slots: the array lives apart from now on */
        sb_header *h;
        if (m->headers != NULL && in_block(m, m->headers)) {
            h = sb_malloc((m->header_count + 1) * sizeof(*h));
            if (h != NULL)
                memcpy(h, m->headers, m->header_count * sizeof(*h));
        } else {
            h = sb_realloc(m->headers, (m->header_count + 1) * sizeof(*h));
        }
        if (h == NULL)
            return SB_ENOMEM;
        m->headers = h;
        m->header_slots = 0;
    }
    if ((size_t)(m->room_end - m->room) >= need) {
        kv = m->room;
        m->room += need;
    } else if ((kv = sb_malloc(need)) == NULL) { /* key and value, freed through the key */
        return SB_ENOMEM;
    }
    memcpy(kv, key, klen);
    kv[klen] = '\0';
    memcpy(kv + klen + 1, value, vlen);
    kv[klen + 1 + vlen] = '\0';
    m->headers[m->header_count].key = kv;
    m->headers[m->header_count].value = kv + klen + 1;
    m->header_count++;
    m->size += klen + vlen + 2;
    return 0;
}

const char *sb_message_header(const sb_message *m, const char *key)
{
    for (size_t i = 0; i < m->header_count; i++)
        if (strcmp(m->headers[i].key, key) == 0)
            return m->headers[i].value;
    return NULL;
}

/* What every message's kept encoding holds (SB_MESSAGE_ENCODED_MAX). */
static atomic_size_t encoded_bytes;

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
        if (!in_block(m, m->headers[i].key))
            sb_free(m->headers[i].key); /* and the value (add_header_n) */
    if (m->headers != NULL && !in_block(m, m->headers))
        sb_free(m->headers);
    if (m->payload_apart)
        sb_free(m->payload);
    if (m->enc != NULL) {
        atomic_fetch_sub(&encoded_bytes, m->enc_len);
        sb_free(m->enc);
    }
    sb_free(m);
}

const char *sb_message_encoded(sb_message *m, const void *tag, size_t *len, int *keep)
{
    *keep = 0;
    if (m->enc_tag == NULL)
        m->enc_tag = tag;
    if (m->enc_tag != tag)
        return NULL; /* another protocol's */
    if (m->enc != NULL) {
        *len = m->enc_len;
        return m->enc;
    }
    *keep = ++m->enc_asked >= 2;
    return NULL;
}

void sb_message_keep_encoded(sb_message *m, const void *tag, const char *data, size_t len)
{
    if (m->enc_tag != tag || m->enc != NULL ||
        atomic_load(&encoded_bytes) + len > SB_MESSAGE_ENCODED_MAX ||
        (m->enc = sb_malloc(len > 0 ? len : 1)) == NULL)
        return;
    memcpy(m->enc, data, len);
    m->enc_len = len;
    atomic_fetch_add(&encoded_bytes, len);
}

size_t sb_message_encoded_bytes(void)
{
    return atomic_load(&encoded_bytes);
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
