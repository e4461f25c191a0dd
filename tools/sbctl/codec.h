/*
 * Payload encodings sbctl needs: base64 (payload_b64 in the jsonl protocol)
 * and UTF-8 validation (to choose between "payload" and "payload_b64").
 * Pure and unit-tested.
 */
#ifndef SBCTL_CODEC_H
#define SBCTL_CODEC_H

#include <stddef.h>

/* Encodes n bytes as standard base64 with padding into a new NUL-terminated
 * string (*out, sb_free). Returns 0 or SB_ENOMEM. */
int sbctl_base64_encode(char **out, const void *data, size_t n);

/* Decodes standard base64 (padding optional, no whitespace) into a new
 * buffer (*out, sb_free; NUL-terminated for convenience) and *out_len.
 * Returns 0, SB_EINVAL for malformed input, or SB_ENOMEM. */
int sbctl_base64_decode(unsigned char **out, size_t *out_len, const char *s, size_t n);

/* True if s[0..n) is valid UTF-8 without NUL bytes and can therefore be sent
 * as a JSON "payload" string. */
int sbctl_is_text(const void *s, size_t n);

#endif
