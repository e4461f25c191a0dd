/* Base64 (RFC 4648, standard alphabet, padded) for binary payloads in JSON. */
#ifndef SB_BASE64_H
#define SB_BASE64_H

#include <stddef.h>

/* Returns a new NUL-terminated encoding (sb_free it), or NULL on out-of-memory. */
char *sb_base64_encode(const unsigned char *in, size_t len);

/* Decodes in[0..len) (padding optional, no whitespace) into a new buffer
 * (*out, sb_free it; NUL-terminated for convenience). Returns 0, SB_EINVAL
 * for a character outside the alphabet or a malformed length/padding, or
 * SB_ENOMEM. */
int sb_base64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len);

#endif
