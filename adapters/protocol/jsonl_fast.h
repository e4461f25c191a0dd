/*
 * A fast path for the two requests that make up nearly all jsonl traffic,
 * `pub` and `ack`/`nack`: a small parser for flat JSON objects whose values
 * are strings, integers, booleans or (for headers) an object of strings.
 * Anything else — other ops, nested values, floats, unknown keys, invalid
 * UTF-8 — is left to jansson, which also produces the error messages; this
 * parser accepts only what jansson accepts, with the same values, and
 * otherwise declines (tests/fuzz/fuzz_jsonl_fast.c checks exactly that).
 */
#ifndef SB_JSONL_FAST_H
#define SB_JSONL_FAST_H

#include <stddef.h>
#include <stdint.h>

#define JL_MAX_HEADERS 16

typedef struct jl_str {
    const char *p; /* not NUL-terminated; points into the line or the scratch */
    size_t n;
    int set;
} jl_str;

typedef struct jl_req {
    jl_str op, topic, payload, payload_b64, sub, reason, ttl_str;
    jl_str id_str;
    int64_t id_num, msg_id, ttl_num, priority;
    int has_id_num, has_msg_id, has_ttl_num, has_priority;
    int retain;
    jl_str hkey[JL_MAX_HEADERS], hval[JL_MAX_HEADERS];
    int header_count;
} jl_req;

/* Parses line[0..len) into req. Escaped strings are decoded into scratch,
 * which must hold at least len bytes. Returns 1 if parsed, 0 to decline
 * (use jansson). */
int jl_parse(const char *line, size_t len, char *scratch, jl_req *req);

#endif
