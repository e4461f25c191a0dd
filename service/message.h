/*
 * Messages: the one model every mechanism speaks.
 *
 * A message is immutable once published and reference counted, so one copy
 * can sit in many subscription queues. Headers are a small ordered key/value
 * list (content-type, encoding, source, correlation-id, dedup key, ...).
 */
#ifndef SB_MESSAGE_H
#define SB_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct sb_header {
    char *key;
    char *value;
} sb_header;

typedef struct sb_message {
    uint64_t id; /* assigned when the publish is accepted; 0 before */
    char *topic; /* UTF-8, '/'-separated levels */
    unsigned char *payload;
    size_t payload_len;
    sb_header *headers;
    size_t header_count;
    int64_t created_ms; /* Unix epoch milliseconds */
    int64_t expires_ms; /* 0 = never */
    int priority;       /* 0..9, informational for now */
    int refs;           /* owned by the loop thread once published */
    size_t topic_len;   /* strlen(topic) */
    size_t size;        /* sb_message_size, kept as headers are added */
    /* private: what of the message's own block is left for headers
     * (sb_message_new_room), and whether parts live apart from it */
    size_t header_slots;   /* headers[] in the block, used or not (0: apart) */
    char *room, *room_end; /* free header text space; room_end ends the block */
    int payload_apart;     /* payload is its own allocation (sb_message_new_owned) */
    /* private: a protocol's encoding of what all deliveries of the message
     * share (sb_message_encoded) */
    const void *enc_tag;
    char *enc;
    size_t enc_len;
    int enc_asked;
} sb_message;

/* Creates a message with copies of topic and payload, created now, refs = 1.
 * Returns NULL on out-of-memory. */
sb_message *sb_message_new(const char *topic, const void *payload, size_t payload_len);

/* Like sb_message_new, for a topic of tlen bytes (no NUL among them), with
 * room in the same allocation for `headers` headers whose keys and values
 * take header_bytes in all, counting a NUL after each: what the caller
 * knows it will add (sb_message_add_header*) then costs no allocation
 * (more may be added; they are allocated as usual). Returns NULL on
 * out-of-memory. */
sb_message *sb_message_new_room(const char *topic, size_t tlen, const void *payload,
                                size_t payload_len, size_t headers, size_t header_bytes);

/* Like sb_message_new but takes ownership of the malloc'ed payload buffer
 * (allocated with sb_malloc). On failure the buffer is freed. */
sb_message *sb_message_new_owned(const char *topic, unsigned char *payload, size_t payload_len);

/* Appends a header (copies key and value). Returns 0 or SB_ENOMEM. */
int sb_message_add_header(sb_message *m, const char *key, const char *value);

/* Same with explicit lengths (the strings need not be NUL-terminated). */
int sb_message_add_header_n(sb_message *m, const char *key, size_t klen, const char *value,
                            size_t vlen);

/* Returns the value of the first header named key, or NULL. */
const char *sb_message_header(const sb_message *m, const char *key);

sb_message *sb_message_ref(sb_message *m);
void sb_message_unref(sb_message *m);

/* Bytes the message accounts for in queue limits (payload + topic + headers:
 * each key and value with one byte more). */
static inline size_t sb_message_size(const sb_message *m)
{
    return m->size;
}

/* A protocol's encoding of the part of a delivery that is the same for
 * every subscriber (fields, payload, headers), kept with the message so a
 * message going to many subscriptions is encoded once. tag identifies the
 * protocol (any address of its own). Returns the kept bytes (*len), or
 * NULL with *keep = 1 when the caller should keep what it encodes now
 * (sb_message_keep_encoded): from the second delivery asking, so that a
 * message delivered once costs no copy. One protocol's encoding is kept
 * per message (the first to ask). Loop thread only. */
const char *sb_message_encoded(sb_message *m, const void *tag, size_t *len, int *keep);

/* Keeps a copy of data[0..len) as tag's encoding of m; nothing happens on
 * out-of-memory, or when the kept encodings of all messages would pass
 * SB_MESSAGE_ENCODED_MAX (the next delivery encodes again). The queues'
 * memory budgets do not see these copies, so their sum is bounded here:
 * a message can wait long in a queue (an offline subscriber) with its
 * copy, up to 6 times its payload when every byte needs escaping. */
#define SB_MESSAGE_ENCODED_MAX ((size_t)16 << 20)
void sb_message_keep_encoded(sb_message *m, const void *tag, const char *data, size_t len);

/* The bytes the kept encodings hold now. */
size_t sb_message_encoded_bytes(void);

/* Serialises headers as "key\0value\0..." into a new buffer (*out, *out_len).
 * *out is NULL when there are no headers. Returns 0 or SB_ENOMEM. */
int sb_message_headers_encode(const sb_message *m, unsigned char **out, size_t *out_len);

/* The same into a buffer of the caller: sb_message_headers_size bytes
 * (0: no headers), written by sb_message_headers_write. */
size_t sb_message_headers_size(const sb_message *m);
void sb_message_headers_write(const sb_message *m, unsigned char *out);

/* Parses an encoded header blob into m. Returns 0, SB_ENOMEM, or SB_ECORRUPT
 * if the blob is malformed. */
int sb_message_headers_decode(sb_message *m, const unsigned char *blob, size_t len);

/* Wall-clock time in Unix epoch milliseconds. */
int64_t sb_now_ms(void);

#endif
