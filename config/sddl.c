/*
 * A syntax check of SDDL security descriptor strings (MS-DTYP 2.5.1), for
 * the `security` keys, so that `check-config` on any platform refuses what
 * Windows' ConvertStringSecurityDescriptorToSecurityDescriptorW would refuse
 * when the broker starts, and says where.
 *
 *   sddl    = *( "O:" sid / "G:" sid / "D:" acl / "S:" acl )   each part once
 *   acl     = *( "P" / "AI" / "AR" / "NO_ACCESS_CONTROL" ) *ace
 *   ace     = "(" type ";" flags ";" rights ";" guid ";" guid ";" sid
 *             [ ";" condition ] ")"        (a condition: callback types only)
 *   rights  = *two-letter-right / "0x" 1*8HEXDIG / 1*DIGIT
 *   sid     = "S-1-" authority 1*15( "-" subauthority ) / two-letter alias
 *
 * It checks names against the lists Windows knows and the shape of numbers,
 * GUIDs and SIDs; it cannot know whether a domain alias (DA, DU, ...) resolves
 * on a given machine. On Windows the loader also converts the string for
 * real (sb_platform_sddl_check), which decides.
 */
#include "config/config_int.h"
#include "service/platform.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const ace_types[] = {"A",  "D",  "OA", "OD", "AU", "AL", "OU", "OL", "ML",
                                        "XA", "XD", "RA", "SP", "XU", "ZA", "TL", "FL", NULL};
/* ACE types whose ACE may carry a condition or attribute as a 7th field. */
static const char *const ace_types_extra[] = {"XA", "XD", "XU", "ZA", "RA", NULL};
static const char *const ace_flags[] = {"CI", "OI", "NP", "IO", "ID", "SA", "FA", "TP", "CR", NULL};
static const char *const rights[] = {"GA", "GR", "GW", "GX", "RC", "SD", "WD", "WO", "RP", "WP",
                                     "CC", "DC", "LC", "SW", "LO", "DT", "CR", "FA", "FR", "FW",
                                     "FX", "KA", "KR", "KW", "KX", "NR", "NW", "NX", NULL};
static const char *const sid_aliases[] = {
    "AA", "AC", "AN", "AO", "AP", "AS", "AU", "BA", "BG", "BO", "BU", "CA", "CD", "CG",
    "CN", "CO", "CY", "DA", "DC", "DD", "DG", "DU", "EA", "ED", "EK", "ER", "ES", "HA",
    "HI", "IS", "IU", "KA", "LA", "LG", "LS", "LU", "LW", "ME", "MP", "MU", "NO", "NS",
    "NU", "OW", "PA", "PO", "PS", "PU", "RA", "RC", "RD", "RE", "RM", "RO", "RS", "RU",
    "SA", "SI", "SO", "SS", "SU", "SY", "UD", "WD", "WR", NULL};

typedef struct parser {
    const char *s;  /* the whole string */
    const char *p;  /* the next character */
    const char *at; /* where the first error is */
    char *why;
    size_t why_len;
    int failed;
} parser;

static int fail(parser *ps, const char *at, const char *fmt, ...) SB_PRINTF(3, 4);
static int fail(parser *ps, const char *at, const char *fmt, ...)
{
    va_list ap;
    if (ps->failed)
        return -1;
    ps->failed = 1;
    ps->at = at;
    va_start(ap, fmt);
    vsnprintf(ps->why, ps->why_len, fmt, ap);
    va_end(ap);
    return -1;
}

static int is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int is_upper(char c)
{
    return c >= 'A' && c <= 'Z';
}

static void skip_spaces(parser *ps)
{
    while (*ps->p == ' ' || *ps->p == '\t')
        ps->p++;
}

static int in_list(const char *const *list, const char *s, size_t n)
{
    for (size_t i = 0; list[i] != NULL; i++)
        if (strlen(list[i]) == n && strncmp(list[i], s, n) == 0)
            return 1;
    return 0;
}

/* A field of an ACE: from p up to the next ';' or ')' (not included). */
static size_t field_len(const char *p)
{
    return strcspn(p, ";)");
}

/* "S-1-5-21-1-2-3-1001" or a two-letter alias, exactly n characters. */
static int check_sid(parser *ps, const char *p, size_t n)
{
    const char *end = p + n, *q;
    int sub = 0;
    if (n == 0)
        return fail(ps, p, "missing SID (expected S-1-... or an alias such as SY, BA, IU)");
    if (n == 2 && is_upper(p[0]) && is_upper(p[1])) {
        if (!in_list(sid_aliases, p, 2))
            return fail(ps, p, "unknown SID alias \"%.2s\" (known: SY, BA, IU, AU, BU, WD, ...)",
                        p);
        return 0;
    }
    if (n < 4 || strncmp(p, "S-1-", 4) != 0)
        return fail(ps, p, "invalid SID \"%.*s\" (expected S-1-... or an alias such as SY, BA, IU)",
                    (int)(n > 40 ? 40 : n), p);
    q = p + 4;
    /* the authority: decimal, or 0x and 12 hex digits at most */
    if (q + 1 < end && q[0] == '0' && (q[1] == 'x' || q[1] == 'X')) {
        const char *h = q + 2;
        while (h < end && is_hex(*h))
            h++;
        if (h == q + 2 || h - (q + 2) > 12)
            return fail(ps, q, "invalid SID authority in \"%.*s\"", (int)n, p);
        q = h;
    } else {
        const char *d = q;
        while (q < end && is_digit(*q))
            q++;
        if (q == d || q - d > 15)
            return fail(ps, d, "invalid SID authority in \"%.*s\"", (int)n, p);
    }
    while (q < end) {
        const char *d;
        unsigned long long v = 0;
        if (*q != '-')
            return fail(ps, q, "invalid character '%c' in SID \"%.*s\"", *q, (int)n, p);
        d = ++q;
        while (q < end && is_digit(*q)) {
            v = v * 10 + (unsigned)(*q - '0');
            if (v > 0xFFFFFFFFull)
                return fail(ps, d, "SID sub-authority larger than 4294967295 in \"%.*s\"", (int)n,
                            p);
            q++;
        }
        if (q == d && q < end && *q != '-')
            return fail(ps, q, "invalid character '%c' in SID \"%.*s\"", *q, (int)n, p);
        if (q == d)
            return fail(ps, d, "empty SID sub-authority in \"%.*s\"", (int)n, p);
        sub++;
    }
    if (sub > 15)
        return fail(ps, p, "SID with more than 15 sub-authorities");
    return 0;
}

/* Two-letter tokens from `list`, concatenated, exactly n characters. */
static int check_tokens(parser *ps, const char *p, size_t n, const char *const *list,
                        const char *what)
{
    for (size_t i = 0; i < n; i += 2) {
        if (i + 1 >= n || !in_list(list, p + i, 2))
            return fail(ps, p + i, "unknown %s \"%.*s\"", what, (int)(i + 1 < n ? 2 : 1), p + i);
    }
    return 0;
}

static int check_rights(parser *ps, const char *p, size_t n)
{
    if (n >= 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        if (n == 2 || n > 10)
            return fail(ps, p, "invalid access mask \"%.*s\" (0x and 1 to 8 hex digits)", (int)n,
                        p);
        for (size_t i = 2; i < n; i++)
            if (!is_hex(p[i]))
                return fail(ps, p + i, "invalid hex digit '%c' in the access mask", p[i]);
        return 0;
    }
    if (n > 0 && is_digit(p[0])) {
        unsigned long long v = 0;
        for (size_t i = 0; i < n; i++) {
            if (!is_digit(p[i]))
                return fail(ps, p + i, "invalid digit '%c' in the access mask", p[i]);
            v = v * 10 + (unsigned)(p[i] - '0');
            if (v > 0xFFFFFFFFull)
                return fail(ps, p, "access mask larger than 32 bits");
        }
        return 0;
    }
    return check_tokens(ps, p, n, rights, "access right");
}

/* Empty, or a GUID as 8-4-4-4-12 hex digits. */
static int check_guid(parser *ps, const char *p, size_t n)
{
    static const char shape[] = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
    if (n == 0)
        return 0;
    if (n != sizeof shape - 1)
        return fail(ps, p, "invalid GUID \"%.*s\" (expected 8-4-4-4-12 hex digits, or nothing)",
                    (int)(n > 40 ? 40 : n), p);
    for (size_t i = 0; i < n; i++)
        if (shape[i] == '-' ? p[i] != '-' : !is_hex(p[i]))
            return fail(ps, p + i, "invalid GUID \"%.*s\" (expected 8-4-4-4-12 hex digits)", (int)n,
                        p);
    return 0;
}

/* A condition "(...)": balanced parentheses, strings in double quotes.
 * Returns its length, or -1 (error set). */
static long condition_len(parser *ps, const char *p)
{
    const char *q = p;
    int depth = 0;
    if (*q != '(')
        return fail(ps, q, "expected a condition in parentheses");
    for (; *q != '\0'; q++) {
        if (*q == '"') {
            const char *close = strchr(q + 1, '"');
            if (close == NULL)
                return fail(ps, q, "unterminated string in the condition");
            q = close;
        } else if (*q == '(') {
            depth++;
        } else if (*q == ')' && --depth == 0) {
            return (long)(q - p + 1);
        }
    }
    return fail(ps, p, "unbalanced parentheses in the condition");
}

static int parse_ace(parser *ps)
{
    const char *start = ps->p, *f[6];
    size_t n[6];
    const char *p = start + 1; /* after '(' */
    for (int i = 0; i < 6; i++) {
        f[i] = p;
        n[i] = field_len(p);
        p += n[i];
        if (i < 5) {
            if (*p == '\0')
                return fail(ps, start,
                            "unterminated ACE (expected "
                            "(type;flags;rights;object_guid;inherit_guid;sid))");
            if (*p != ';')
                return fail(ps, p,
                            "ACE with too few fields (expected "
                            "type;flags;rights;object_guid;inherit_guid;sid)");
            p++;
        }
    }
    if (!in_list(ace_types, f[0], n[0]))
        return fail(ps, f[0],
                    n[0] == 0 ? "missing ACE type (A allows, D denies)"
                              : "unknown ACE type \"%.*s\" (A allows, D denies, AU audits, ...)",
                    (int)(n[0] > 8 ? 8 : n[0]), f[0]);
    if (check_tokens(ps, f[1], n[1], ace_flags, "ACE flag") != 0)
        return -1;
    if (n[2] == 0)
        return fail(ps, f[2], "missing access rights (GA, GR, GW, FA, 0x1f01ff, ...)");
    if (check_rights(ps, f[2], n[2]) != 0 || check_guid(ps, f[3], n[3]) != 0 ||
        check_guid(ps, f[4], n[4]) != 0 || check_sid(ps, f[5], n[5]) != 0)
        return -1;
    if (*p == ';') {
        long c;
        if (!in_list(ace_types_extra, f[0], n[0]))
            return fail(ps, p, "ACE with too many fields (only conditional ACEs have a 7th)");
        p++;
        if ((c = condition_len(ps, p)) < 0)
            return -1;
        p += c;
    }
    if (*p == '\0')
        return fail(ps, start, "unterminated ACE (missing ')')");
    if (*p != ')')
        return fail(ps, p, "expected ')'");
    ps->p = p + 1;
    return 0;
}

static int parse_acl(parser *ps)
{
    /* flags */
    for (;;) {
        if (strncmp(ps->p, "NO_ACCESS_CONTROL", 17) == 0)
            ps->p += 17;
        else if (strncmp(ps->p, "AI", 2) == 0 || strncmp(ps->p, "AR", 2) == 0)
            ps->p += 2;
        else if (*ps->p == 'P')
            ps->p++;
        else
            break;
    }
    for (;;) {
        skip_spaces(ps);
        if (*ps->p != '(')
            return 0;
        if (parse_ace(ps) != 0)
            return -1;
    }
}

int sb_config_sddl_check(const char *sddl, size_t *out_offset, char *why, size_t why_len)
{
    parser ps;
    int seen[4] = {0, 0, 0, 0};
    memset(&ps, 0, sizeof ps);
    ps.s = ps.p = sddl;
    ps.why = why;
    ps.why_len = why_len;
    skip_spaces(&ps);
    if (*ps.p == '\0')
        fail(&ps, ps.p, "empty security descriptor (expected D:... for a DACL)");
    while (!ps.failed && *ps.p != '\0') {
        static const char parts[] = "OGDS";
        const char *part = strchr(parts, *ps.p);
        const char *at = ps.p;
        if (part == NULL || *ps.p == '\0' || ps.p[1] != ':') {
            fail(&ps, at,
                 "unexpected \"%.12s\" (expected O:, G:, D: or S:, or an ACE in parentheses)", at);
            break;
        }
        if (seen[part - parts]++) {
            fail(&ps, at, "%c: given twice", *at);
            break;
        }
        ps.p += 2;
        if (*part == 'O' || *part == 'G') {
            /* the SID runs up to the next part */
            size_t n = 0;
            while (ps.p[n] != '\0' && ps.p[n] != ' ' &&
                   !(strchr(parts, ps.p[n]) != NULL && ps.p[n + 1] == ':'))
                n++;
            if (check_sid(&ps, ps.p, n) != 0)
                break;
            ps.p += n;
        } else if (parse_acl(&ps) != 0) {
            break;
        }
        skip_spaces(&ps);
    }
    if (!ps.failed)
        return 0;
    if (out_offset != NULL)
        *out_offset = (size_t)(ps.at - sddl);
    return -1;
}

/* Where offset `off` of a scalar's value is in the file: exact when the
 * value is on one line and written without escapes, else the value's start. */
static void value_pos(const yaml_node_t *node, size_t off, int *line, int *col)
{
    size_t len = strlen((const char *)node->data.scalar.value), raw;
    int quoted = node->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                 node->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    *line = (int)node->start_mark.line + 1;
    *col = (int)node->start_mark.column + 1;
    raw = node->end_mark.index - node->start_mark.index;
    if (node->start_mark.line == node->end_mark.line && raw == len + (quoted ? 2 : 0) &&
        (quoted || node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE))
        *col += (int)off + quoted;
}

void sb_config__check_sddl(sb_config__ctx *ctx, const yaml_node_t *node, const char *path,
                           const char *sddl)
{
    char why[200], os_why[256];
    size_t off = 0;
    int line, col, bad, os;

    if (node == NULL || node->type != YAML_SCALAR_NODE || sddl == NULL)
        return;
    bad = sb_config_sddl_check(sddl, &off, why, sizeof why) != 0;
    /* Where the OS can convert it (Windows), its verdict decides; the syntax
     * check still finds the place when it agrees. */
    os = sb_platform_sddl_check(sddl, os_why, sizeof os_why);
    if (os > 0 || (os == 0 && !bad))
        return;
    value_pos(node, bad ? off : 0, &line, &col);
    if (bad)
        sb_config__error_at(ctx, line, col, path, "invalid security descriptor: %s", why);
    else
        sb_config__error_at(ctx, line, col, path, "invalid security descriptor: %s", os_why);
}
