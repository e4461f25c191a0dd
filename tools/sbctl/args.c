/* Table-driven option parsing (see args.h). */
#include "tools/sbctl/args.h"

#include "service/alloc.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int sbctl_parse_int(const char *s, int64_t *out)
{
    char *end;
    long long v;
    if (s == NULL || *s == '\0')
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s)
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* Parses a non-negative decimal number with optional fraction; returns the
 * end of the number or NULL. */
static const char *parse_decimal(const char *s, double *out)
{
    char *end;
    double v;
    if (!((*s >= '0' && *s <= '9') || *s == '.'))
        return NULL;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || !isfinite(v) || v < 0)
        return NULL;
    *out = v;
    return end;
}

int sbctl_parse_duration(const char *s, int64_t *out_ms)
{
    static const struct {
        const char *unit;
        double ms;
    } units[] = {{"ms", 1},      {"s", 1000},    {"m", 60000},
                 {"min", 60000}, {"h", 3600000}, {"d", 86400000}};
    double v;
    const char *end;

    if (s == NULL)
        return -1;
    end = parse_decimal(s, &v);
    if (end == NULL)
        return -1;
    /* A bare number is ambiguous (the config reads it as ms, people often
     * mean seconds): require a unit, except for zero. */
    if (*end == '\0') {
        if (v != 0)
            return -1;
        *out_ms = 0;
        return 0;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            double ms = v * units[i].ms;
            if (ms > 9.0e15)
                return -1;
            *out_ms = (int64_t)llround(ms);
            return 0;
        }
    }
    return -1;
}

int sbctl_parse_size(const char *s, int64_t *out_bytes)
{
    static const struct {
        const char *unit;
        double mult;
    } units[] = {{"", 1},         {"B", 1},           {"k", 1e3},           {"K", 1e3}, {"KB", 1e3},
                 {"kB", 1e3},     {"M", 1e6},         {"MB", 1e6},          {"G", 1e9}, {"GB", 1e9},
                 {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
    double v;
    const char *end;

    if (s == NULL)
        return -1;
    end = parse_decimal(s, &v);
    if (end == NULL)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            double b = v * units[i].mult;
            if (b > 9.0e15 || b != floor(b))
                return -1;
            *out_bytes = (int64_t)b;
            return 0;
        }
    }
    return -1;
}

static const char *type_word(sbctl_opt_type t)
{
    switch (t) {
    case SBCTL_OPT_INT:
        return "an integer";
    case SBCTL_OPT_DURATION:
        return "a duration with a unit (500ms, 10s, 5m, 2h)";
    case SBCTL_OPT_SIZE:
        return "a size such as 100, 4KiB, 1MiB";
    default:
        return "a value";
    }
}

/* Stores one value for spec[i]. Returns 0, -1 (msg filled) or -2 (ENOMEM). */
static int store_value(sbctl_args *a, size_t i, const char *value, char *msg, size_t msglen)
{
    const sbctl_opt *o = &a->spec[i];
    sbctl_optval *v = &a->vals[i];
    int64_t num = 0;
    int bad = 0;

    switch (o->type) {
    case SBCTL_OPT_FLAG:
        break;
    case SBCTL_OPT_STRING:
        break;
    case SBCTL_OPT_INT:
        bad = sbctl_parse_int(value, &num);
        break;
    case SBCTL_OPT_DURATION:
        bad = sbctl_parse_duration(value, &num);
        break;
    case SBCTL_OPT_SIZE:
        bad = sbctl_parse_size(value, &num);
        break;
    }
    if (bad) {
        snprintf(msg, msglen, "--%s: expected %s, got '%s'", o->name, type_word(o->type), value);
        return -1;
    }
    if (o->type != SBCTL_OPT_FLAG && o->type != SBCTL_OPT_STRING && o->max > o->min &&
        (num < o->min || num > o->max)) {
        if (o->type == SBCTL_OPT_DURATION)
            snprintf(msg, msglen, "--%s: '%s' is out of range", o->name, value);
        else
            snprintf(msg, msglen, "--%s: must be between %lld and %lld, got '%s'", o->name,
                     (long long)o->min, (long long)o->max, value);
        return -1;
    }
    if (!o->repeat && v->count > 0 && o->type != SBCTL_OPT_FLAG) {
        snprintf(msg, msglen, "--%s given more than once", o->name);
        return -1;
    }
    if (o->repeat) {
        const char **l = sb_realloc(v->list, sizeof(*l) * (size_t)(v->count + 1));
        if (l == NULL)
            return -2;
        l[v->count] = value;
        v->list = l;
    }
    v->count++;
    v->str = value;
    v->num = o->type == SBCTL_OPT_FLAG ? v->count : num;
    return 0;
}

static long find_long(const sbctl_args *a, const char *name, size_t len)
{
    for (size_t i = 0; i < a->nspec; i++)
        if (strlen(a->spec[i].name) == len && strncmp(a->spec[i].name, name, len) == 0)
            return (long)i;
    return -1;
}

static long find_short(const sbctl_args *a, char c)
{
    for (size_t i = 0; i < a->nspec; i++)
        if (a->spec[i].short_name == c)
            return (long)i;
    return -1;
}

int sbctl_args_parse(sbctl_args *out, const sbctl_opt *spec, size_t nspec, int argc, char **argv,
                     char *msg, size_t msglen)
{
    int only_pos = 0;

    memset(out, 0, sizeof(*out));
    out->spec = spec;
    out->nspec = nspec;
    out->vals = sb_calloc(nspec == 0 ? 1 : nspec, sizeof(*out->vals));
    out->pos = sb_calloc(argc == 0 ? 1 : (size_t)argc, sizeof(*out->pos));
    if (out->vals == NULL || out->pos == NULL) {
        snprintf(msg, msglen, "out of memory");
        return -2;
    }
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (only_pos || arg[0] != '-' || arg[1] == '\0') {
            out->pos[out->npos++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_pos = 1;
            continue;
        }
        if (arg[1] == '-') {
            const char *name = arg + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
            long k = find_long(out, name, len);
            const char *value;
            int rc;
            if (k < 0) {
                snprintf(msg, msglen, "unknown option --%.*s", (int)len, name);
                return -1;
            }
            if (spec[k].type == SBCTL_OPT_FLAG) {
                if (eq != NULL) {
                    snprintf(msg, msglen, "--%s takes no value", spec[k].name);
                    return -1;
                }
                value = NULL;
            } else if (eq != NULL) {
                value = eq + 1;
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                snprintf(msg, msglen, "--%s needs a value (%s)", spec[k].name,
                         spec[k].metavar != NULL ? spec[k].metavar : "VALUE");
                return -1;
            }
            rc = store_value(out, (size_t)k, value, msg, msglen);
            if (rc != 0)
                return rc;
            continue;
        }
        /* Short options, possibly bundled: -yq, -n5, -n 5. */
        for (const char *p = arg + 1; *p != '\0'; p++) {
            long k = find_short(out, *p);
            const char *value = NULL;
            int rc;
            if (k < 0) {
                snprintf(msg, msglen, "unknown option -%c", *p);
                return -1;
            }
            if (spec[k].type != SBCTL_OPT_FLAG) {
                if (p[1] != '\0') {
                    value = p + 1;
                } else if (i + 1 < argc) {
                    value = argv[++i];
                } else {
                    snprintf(msg, msglen, "-%c needs a value (%s)", *p,
                             spec[k].metavar != NULL ? spec[k].metavar : "VALUE");
                    return -1;
                }
            }
            rc = store_value(out, (size_t)k, value, msg, msglen);
            if (rc != 0)
                return rc;
            if (value != NULL)
                break;
        }
    }
    return 0;
}

void sbctl_args_free(sbctl_args *a)
{
    if (a->vals != NULL)
        for (size_t i = 0; i < a->nspec; i++)
            sb_free(a->vals[i].list);
    sb_free(a->vals);
    sb_free(a->pos);
    memset(a, 0, sizeof(*a));
}

const sbctl_optval *sbctl_arg(const sbctl_args *a, const char *name)
{
    long k = find_long(a, name, strlen(name));
    assert(k >= 0 && "option not in the command's spec");
    return &a->vals[k];
}

int sbctl_arg_flag(const sbctl_args *a, const char *name)
{
    return sbctl_arg(a, name)->count > 0;
}

const char *sbctl_arg_str(const sbctl_args *a, const char *name, const char *dflt)
{
    const sbctl_optval *v = sbctl_arg(a, name);
    return v->count > 0 ? v->str : dflt;
}

int64_t sbctl_arg_num(const sbctl_args *a, const char *name, int64_t dflt)
{
    const sbctl_optval *v = sbctl_arg(a, name);
    return v->count > 0 ? v->num : dflt;
}

void sbctl_args_print_help(FILE *f, const sbctl_opt *spec, size_t nspec)
{
    size_t width = 0;
    char buf[128];

    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < nspec; i++) {
            const sbctl_opt *o = &spec[i];
            int n;
            if (o->short_name != 0)
                n = snprintf(buf, sizeof(buf), "-%c, --%s%s%s", o->short_name, o->name,
                             o->type == SBCTL_OPT_FLAG ? "" : " ",
                             o->type == SBCTL_OPT_FLAG ? "" : (o->metavar ? o->metavar : "VALUE"));
            else
                n = snprintf(buf, sizeof(buf), "    --%s%s%s", o->name,
                             o->type == SBCTL_OPT_FLAG ? "" : " ",
                             o->type == SBCTL_OPT_FLAG ? "" : (o->metavar ? o->metavar : "VALUE"));
            if (pass == 0) {
                if ((size_t)n > width)
                    width = (size_t)n;
            } else {
                fprintf(f, "  %-*s  %s\n", (int)width, buf, o->help);
            }
        }
    }
}
