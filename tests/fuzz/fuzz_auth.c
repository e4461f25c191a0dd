/*
 * Fuzz target for the password and ACL file parsers (service/auth.h): any
 * bytes, parsed as either file, give an sb_auth or SB_ECONFIG / SB_ENOMEM
 * with a message, never a crash or a leak. An ACL that loads is then asked
 * about every line of the input as a topic and as a filter, for several
 * identities; a topic used as a filter must get the same answer as reading
 * it (a filter without wildcards matches that one topic), and a filter
 * wholly readable must be granted.
 */
#include "service/alloc.h"
#include "service/auth.h"
#include "service/error.h"
#include "service/topic.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const users[] = {NULL, "alice", "bob", "+", "a/b", "$SYS", ""};
static const char *const clients[] = {NULL, "c1", "#", ""};

static void ask(const sb_auth *a, const char *subject)
{
    int is_topic = sb_topic_validate(subject, strlen(subject), NULL) == 0;
    for (size_t u = 0; u < sizeof(users) / sizeof(users[0]); u++) {
        for (size_t c = 0; c < sizeof(clients) / sizeof(clients[0]); c++) {
            int r = sb_auth_allowed(a, users[u], clients[c], subject, SB_ACL_READ);
            int w = sb_auth_allowed(a, users[u], clients[c], subject, SB_ACL_WRITE);
            int rw = sb_auth_allowed(a, users[u], clients[c], subject, SB_ACL_READ | SB_ACL_WRITE);
            int f = sb_auth_filter_allowed(a, users[u], clients[c], subject);
            int all = sb_auth_filter_readable(a, users[u], clients[c], subject);
            if ((r != 0 && r != 1) || (rw && !(r && w)) || (f != 0 && f != 1))
                abort();
            if (is_topic && (f != r || all != r))
                abort();
            if (all && !f) /* wholly readable is partly readable */
                abort();
            if (!is_topic && (r || w))
                abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    sb_auth *a = NULL;
    sb_error err;
    int rc;

    sb_error_clear(&err);
    rc = sb_auth_parse(&a, "pw", text, size, NULL, NULL, 0, &err);
    if ((rc == 0) != (a != NULL) || (rc != 0 && (rc != err.code || err.msg[0] == '\0')))
        abort();
    if (rc != 0 && rc != SB_ECONFIG && rc != SB_ENOMEM)
        abort();
    /* No password checks: the file chooses the iteration count. */
    sb_auth_free(a);

    sb_error_clear(&err);
    rc = sb_auth_parse(&a, NULL, NULL, 0, "acl", text, size, &err);
    if ((rc == 0) != (a != NULL) || (rc != 0 && (rc != err.code || err.msg[0] == '\0')))
        abort();
    if (rc != 0 && rc != SB_ECONFIG && rc != SB_ENOMEM)
        abort();
    if (a != NULL) {
        static const char *const fixed[] = {"#", "+", "a/b", "a/#", "+/b", "$SYS/#", "$SYS/x"};
        char *copy = malloc(size + 1), *line;
        for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
            ask(a, fixed[i]);
        if (copy != NULL) {
            memcpy(copy, data, size);
            copy[size] = '\0';
            /* Each line, and each line's last word (a rule's filter). */
            for (line = copy; line != NULL && *line != '\0';) {
                char *nl = strchr(line, '\n'), *sp;
                if (nl != NULL)
                    *nl = '\0';
                ask(a, line);
                sp = strrchr(line, ' ');
                if (sp != NULL)
                    ask(a, sp + 1);
                line = nl != NULL ? nl + 1 : NULL;
            }
            free(copy);
        }
        sb_auth_free(a);
    }
    return 0;
}
