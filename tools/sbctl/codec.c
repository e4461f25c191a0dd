/* base64 and UTF-8 checks (see codec.h). */
#include "tools/sbctl/codec.h"

#include "service/alloc.h"
#include "service/base64.h"
#include "service/error.h"
#include "service/topic.h"

#include <stdint.h>
#include <string.h>

/* The broker's codecs (service/base64.h, service/topic.h), under the names
 * sbctl's commands use. */
int sbctl_base64_encode(char **out, const void *data, size_t n)
{
    *out = sb_base64_encode(data, n);
    return *out != NULL ? 0 : SB_ENOMEM;
}

int sbctl_base64_decode(unsigned char **out, size_t *out_len, const char *s, size_t n)
{
    return sb_base64_decode(s, n, out, out_len);
}

int sbctl_is_text(const void *data, size_t n)
{
    return memchr(data, '\0', n) == NULL && sb_utf8_valid(data, n);
}
