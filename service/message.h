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
} sb_message;

/* Creates a message with copies of topic and payload, created now, refs = 1.
 * Returns NULL on out-of-memory. */
sb_message *sb_message_new(const char *topic, const void *payload, size_t payload_len);

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

/* Bytes the message accounts for in queue limits (payload + topic + headers). */
size_t sb_message_size(const sb_message *m);

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
