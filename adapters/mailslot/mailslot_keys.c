/*
 * The keys of type mailslot (Windows: mailslot/win/). Portable, so
 * check-config checks mailslot configurations everywhere.
 *
 * path (server): a name (created as \\.\mailslot\NAME) or a full local
 * mailslot path; connect (sink): the same, or \\HOST\..., \\DOMAIN\... or
 * \\*\... . The 424-byte limit of network targets is the sink's to enforce
 * (per delivery, never by truncating). max_message defaults to 64KiB.
 */
#include "adapters/stream_keys.h"

#include <string.h>

#define MAILSLOT_DEFAULT_MESSAGE 65536

static const sb_config_key mailslot_rows[] = {
    SB_STREAM_ROW_CONNECT,
    SB_STREAM_ROW_PATH,
    SB_STREAM_ROW_PROTOCOL,
    SB_STREAM_ROW_FRAMING,
    SB_STREAM_ROW_TOPIC,
    SB_STREAM_ROW_MAX_MESSAGE,
    {.key = "security",
     .kind = SB_KEY_STRING,
     .roles = SB_ROLE_SERVER,
     .why = "only for servers (path): a mailslot client creates no object",
     .offset = SB_STREAM_OFF(security)},
    SB_ADAPTER_KEY_INFLIGHT,
};

/* strncmp ignoring ASCII case (strncasecmp is POSIX, not C11). */
static int strncasecmp_ascii(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int ca = (unsigned char)a[i], cb = (unsigned char)b[i];
        if (ca >= 'A' && ca <= 'Z')
            ca += 'a' - 'A';
        if (cb >= 'A' && cb <= 'Z')
            cb += 'a' - 'A';
        if (ca != cb || ca == 0)
            return ca - cb;
    }
    return 0;
}

/* Length of a "\\SERVER\mailslot\" prefix of s (SERVER: ".", "*", a
 * computer or a domain name), 0 if s does not start with one. */
static size_t mailslot_prefix(const char *s)
{
    static const char kw[] = "\\mailslot\\";
    const char *server, *end;
    if (strncmp(s, "\\\\", 2) != 0)
        return 0;
    server = s + 2;
    end = strchr(server, '\\');
    if (end == NULL || end == server || strncasecmp_ascii(end, kw, sizeof kw - 1) != 0)
        return 0;
    return (size_t)(end - s) + sizeof kw - 1;
}

static void mailslot_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    static const sb_stream_kind kind = {"mailslot", "path", 0, 0};
    sb_stream_settings *a = SB_SETTINGS(sb_stream_settings, cfg);
    char q[96];

    sb_stream_validate(chk, cfg, &kind, "message");
    if (sb_adapter_check_seen(chk, &a->max_message) == SB_SEEN_NO)
        a->max_message = MAILSLOT_DEFAULT_MESSAGE;
    if (sb_adapter_check_seen(chk, &a->path) == SB_SEEN_OK) {
        size_t pre = mailslot_prefix(a->path);
        const char *why = NULL;
        if (pre != 0 && strncmp(a->path, "\\\\.\\", 4) != 0)
            why = "a mailslot server can only create a local mailslot (a name, or "
                  "\\\\.\\mailslot\\NAME)";
        else if (pre == 0 && a->path[0] == '\\')
            why = "expected a mailslot name or \\\\.\\mailslot\\NAME";
        else if (a->path[pre] == '\0')
            why = "the mailslot name is empty";
        if (why != NULL) {
            sb_adapter_error_at_value(chk, &a->path, "%s, got %s", why,
                                      sb_config_quote(q, sizeof q, a->path));
        }
    }
    if (sb_adapter_check_seen(chk, &a->connect) == SB_SEEN_OK) {
        size_t pre = mailslot_prefix(a->connect);
        if ((pre == 0 && a->connect[0] == '\\') || a->connect[pre] == '\0') {
            sb_adapter_error_at_value(chk, &a->connect,
                                      "expected a mailslot name, \\\\.\\mailslot\\NAME, "
                                      "\\\\HOST\\mailslot\\NAME, \\\\DOMAIN\\mailslot\\NAME or "
                                      "\\\\*\\mailslot\\NAME, got %s",
                                      sb_config_quote(q, sizeof q, a->connect));
        }
    }
}

static int mailslot_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    return sb_stream_destination(cfg, 1, why, n);
}

const sb_adapter_keys sb_mailslot_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "mailslot",
    .table = SB_CONFIG_TABLE(mailslot_rows),
    .settings_size = sizeof(sb_stream_settings),
    .role_of = sb_stream_role_of,
    .protocol_of = sb_stream_protocol_of,
    .server_key = "path",
    .validate = mailslot_validate,
    .destination = mailslot_destination,
};
