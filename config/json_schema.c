/*
 * The configuration's JSON Schema (draft-07), generated from the tables the
 * loader walks: the top level, broker and routes (schema.c), the keys every
 * adapter has (adapters.c) and each registered type's table, one if/then
 * branch per `type`. Editors use it to complete and check a file as it is
 * typed (config/switchboard.schema.json is this output; a test compares).
 *
 * It says what a table says: kinds, choices, ranges, required and unknown
 * keys. A YAML scalar is text to the loader ("100" and 100 are the same
 * integer; `on` is a string to a string key), so each value's schema takes
 * the JSON types a YAML parser may make of such text, and `null` wherever
 * the loader reads "not set". Ranges are checked for bare numbers only; a
 * duration or size written with its unit (10s, 64KiB) is checked for its
 * syntax. What the tables do not hold is not in the schema: the checks of
 * the types' validate hooks, keys restricted to a role or a protocol (said
 * in their descriptions), unique names, route destinations, topic
 * templates, SDDL and the transform steps' own arguments.
 */
#include "config/config_int.h"
#include "service/error.h"
#include "service/transform.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct gen {
    int nomem;
} gen;

/* ---- building values (failures stick in g->nomem) ---- */

static json_t *obj(gen *g)
{
    json_t *o = json_object();
    if (o == NULL)
        g->nomem = 1;
    return o;
}

static json_t *arr(gen *g)
{
    json_t *a = json_array();
    if (a == NULL)
        g->nomem = 1;
    return a;
}

/* o[key] = v (v now owned by o; NULL only marks the failure). */
static void put(gen *g, json_t *o, const char *key, json_t *v)
{
    if (o == NULL || v == NULL || json_object_set_new(o, key, v) != 0) {
        json_decref(v);
        g->nomem = 1;
    }
}

static void push(gen *g, json_t *a, json_t *v)
{
    if (a == NULL || v == NULL || json_array_append_new(a, v) != 0) {
        json_decref(v);
        g->nomem = 1;
    }
}

static void put_str(gen *g, json_t *o, const char *key, const char *s)
{
    put(g, o, key, json_string(s));
}

/* The value of "type": names, plus "null" when the key may be left unset. */
static json_t *types(gen *g, const char *const *names, int nullable)
{
    json_t *a;
    if (names[1] == NULL && !nullable)
        return json_string(names[0]); /* one: written as itself */
    a = arr(g);
    for (size_t i = 0; names[i] != NULL; i++)
        push(g, a, json_string(names[i]));
    if (nullable)
        push(g, a, json_string("null"));
    return a;
}

/* A regular expression matching `word` in any case ("[Tt][Rr][Uu][Ee]"):
 * the schema's patterns have no case-insensitive flag in every dialect. */
static void any_case(char *out, size_t n, const char *word)
{
    size_t len = 0;
    for (const char *c = word; *c != '\0' && len + 5 < n; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'))
            len += (size_t)snprintf(out + len, n - len, "[%c%c]", *c & ~0x20, *c | 0x20);
        else
            out[len++] = *c;
    }
    out[len] = '\0';
}

/* ---- one value ---- */

static const char *const scalar_types[] = {"string", "number", "boolean", NULL};
static const char *const name_types[] = {"string", "number", NULL};
static const char *const number_types[] = {"integer", "string", NULL};
static const char *const bool_types[] = {"boolean", "string", NULL};

#define NAME_PATTERN "^[A-Za-z0-9_.-]+$"
#define INT_PATTERN "^-?[0-9]+$"
#define DURATION_PATTERN "^[0-9]+(ms|s|m|h|d)?$"
/* B, KB, KiB ... TiB, any case (config/units.c) */
#define SIZE_PATTERN "^[0-9]+(([KkMmGgTt][Ii]?)?[Bb])?$"
/* '+' a whole level, '#' the last level on its own (service/topic.c) */
#define FILTER_PATTERN "^(([^+#/\\n]*|\\+)/)*([^+#/\\n]*|\\+|#)$"

/* A non-empty scalar (what string_value in walk.c takes). */
static json_t *scalar_schema(gen *g, const char *pattern, int nullable)
{
    json_t *s = obj(g);
    put(g, s, "type", types(g, pattern != NULL ? name_types : scalar_types, nullable));
    put(g, s, "minLength", json_integer(1));
    if (pattern != NULL)
        put_str(g, s, "pattern", pattern);
    return s;
}

/* A choice's values: the word itself, the number a YAML parser makes of
 * "1.2", and null for the word `null` (`type: null` names the type). */
static void choice_values(gen *g, json_t *a, const char *choice)
{
    char *end;
    double d = strtod(choice, &end);
    push(g, a, json_string(choice));
    if (end != choice && *end == '\0')
        push(g, a, json_real(d));
    if (strcmp(choice, "null") == 0)
        push(g, a, json_null());
}

static json_t *enum_schema(gen *g, const char *const *choices, int nullable)
{
    json_t *s = obj(g), *a = arr(g);
    for (size_t i = 0; choices[i] != NULL; i++)
        choice_values(g, a, choices[i]);
    if (nullable)
        push(g, a, json_null());
    put(g, s, "enum", a);
    return s;
}

/* "one of a, b, c" for descriptions. */
static void join(char *out, size_t n, const char *const *words, const char *sep)
{
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; words[i] != NULL && len < n; i++)
        len += (size_t)snprintf(out + len, n - len, "%s%s", i ? sep : "", words[i]);
}

static void fmt_number(char *out, size_t n, const sb_config_key *f, int64_t v)
{
    if (f->kind == SB_KEY_DURATION)
        sb_config__fmt_duration(out, n, v);
    else
        snprintf(out, n, "%" PRId64, v);
}

static int is_number(const sb_config_key *f)
{
    return f->kind == SB_KEY_INT || f->kind == SB_KEY_INT64 || f->kind == SB_KEY_SIZE ||
           f->kind == SB_KEY_DURATION;
}

/* What an editor shows for a key: its kind, range, default and where it
 * applies. */
static void describe(char *out, size_t n, const sb_config_key *f)
{
    static const char *const role_names[] = {"servers", "clients", NULL};
    static const char *const proto_names[] = {"raw", "jsonl", "mqtt", NULL};
    char words[256], lo[32], hi[32];
    size_t len = 0;

#define ADD(...)                                                                                   \
    do {                                                                                           \
        if (len < n)                                                                               \
            len += (size_t)snprintf(out + len, n - len, __VA_ARGS__);                              \
    } while (0)

    switch (f->kind) {
    case SB_KEY_STRING:
        ADD((f->flags & SB_KEY_OR_LIST) ? "A string, or a list of them" : "A string");
        break;
    case SB_KEY_NAME:
        ADD("A name ([A-Za-z0-9_.-]+)");
        break;
    case SB_KEY_CHOICE:
    case SB_KEY_ENUM:
        join(words, sizeof words, f->choices, " | ");
        ADD("%s", words);
        break;
    case SB_KEY_INT:
    case SB_KEY_INT64:
        ADD("An integer");
        break;
    case SB_KEY_SIZE:
        ADD("A size (4096, 64KiB, 1MiB; KB, MB are powers of 1000)");
        break;
    case SB_KEY_DURATION:
        ADD("A duration (250ms, 10s, 5m, 2h, 1d; a bare number is milliseconds)");
        break;
    case SB_KEY_BOOL:
        ADD("true or false (also yes/no, on/off)");
        break;
    case SB_KEY_STRLIST:
        ADD("A list of strings");
        break;
    case SB_KEY_NAMES:
        ADD("A name or a list of names");
        break;
    case SB_KEY_FILTERS:
        ADD("A topic filter or a list of them");
        break;
    default:
        ADD("A section");
        break;
    }
    if (is_number(f)) {
        fmt_number(lo, sizeof lo, f, f->min);
        fmt_number(hi, sizeof hi, f, f->max);
        if (f->max == INT64_MAX)
            ADD(", at least %s", lo);
        else
            ADD(", %s..%s", lo, hi);
        fmt_number(lo, sizeof lo, f, f->def);
        if (f->def < f->min || f->def > f->max)
            ADD("; default: depends on other keys"); /* a "not set" marker */
        else
            ADD("; default %s", lo);
    } else if (f->kind == SB_KEY_ENUM) {
        ADD("; default %s", f->choices[f->def]);
    } else if (f->kind == SB_KEY_BOOL && f->def >= 0) {
        ADD("; default %s", f->def ? "true" : "false");
    } else if (f->def_str != NULL) {
        ADD("; default %s", f->def_str);
    }
    if (f->flags & SB_KEY_REQUIRED)
        ADD("; required");
    if (f->roles != 0)
        ADD("; only for %s", (f->roles & SB_ROLE_SERVER) ? role_names[0] : role_names[1]);
    if (f->protocols != 0) {
        size_t k = 0;
        words[0] = '\0';
        for (unsigned i = 0; proto_names[i] != NULL; i++)
            if (f->protocols & (1u << i))
                k += (size_t)snprintf(words + k, sizeof words - k, "%s%s", k ? " or " : "",
                                      proto_names[i]);
        ADD("; only with protocol %s", words);
    }
    ADD(".");
#undef ADD
}

static void put_default(gen *g, json_t *s, const sb_config_key *f)
{
    char d[32];
    if (is_number(f) && (f->def < f->min || f->def > f->max))
        return; /* "not set": the type derives it */
    switch (f->kind) {
    case SB_KEY_INT:
    case SB_KEY_INT64:
    case SB_KEY_SIZE:
        put(g, s, "default", json_integer(f->def));
        break;
    case SB_KEY_DURATION:
        put_str(g, s, "default", sb_config__fmt_duration(d, sizeof d, f->def));
        break;
    case SB_KEY_ENUM:
        put_str(g, s, "default", f->choices[f->def]);
        break;
    case SB_KEY_BOOL:
        if (f->def >= 0)
            put(g, s, "default", json_boolean(f->def));
        break;
    default:
        if (f->def_str != NULL)
            put_str(g, s, "default", f->def_str);
        break;
    }
}

static json_t *table_schema(gen *g, const sb_config_table *t, int nullable);
static json_t *adapter_schema(gen *g);
static json_t *to_schema(gen *g);
static json_t *steps_schema(gen *g);

/* The schema of one row's value. */
static json_t *value_schema(gen *g, const sb_config_key *f)
{
    int nullable = !(f->flags & SB_KEY_REQUIRED);
    const char *pattern = NULL;
    json_t *s = NULL, *a, *list;
    char words[160];

    switch (f->kind) {
    case SB_KEY_STRING:
        s = scalar_schema(g, NULL, nullable);
        if (f->flags & SB_KEY_OR_LIST) {
            /* or a list: the first item is the value, the rest another key's */
            json_t *one = s;
            s = obj(g);
            a = arr(g);
            push(g, a, one);
            list = obj(g);
            put_str(g, list, "type", "array");
            put(g, list, "minItems", json_integer(1));
            put(g, list, "items", scalar_schema(g, NULL, 0));
            push(g, a, list);
            put(g, s, "anyOf", a);
        }
        break;
    case SB_KEY_NAME:
        s = scalar_schema(g, NAME_PATTERN, nullable);
        break;
    case SB_KEY_CHOICE:
    case SB_KEY_ENUM:
        s = enum_schema(g, f->choices, nullable);
        break;
    case SB_KEY_INT:
    case SB_KEY_INT64:
    case SB_KEY_SIZE:
    case SB_KEY_DURATION:
        pattern = f->kind == SB_KEY_SIZE       ? SIZE_PATTERN
                  : f->kind == SB_KEY_DURATION ? DURATION_PATTERN
                                               : INT_PATTERN;
        s = obj(g);
        put(g, s, "type", types(g, number_types, nullable));
        put_str(g, s, "pattern", pattern);
        /* durations and sizes take no sign */
        put(g, s, "minimum",
            json_integer(f->kind == SB_KEY_INT || f->kind == SB_KEY_INT64 || f->min > 0 ? f->min
                                                                                         : 0));
        if (f->max != INT64_MAX)
            put(g, s, "maximum", json_integer(f->max));
        break;
    case SB_KEY_BOOL:
        snprintf(words, sizeof words, "^(");
        for (size_t i = 0; i < 6; i++) {
            static const char *const w[] = {"true", "false", "yes", "no", "on", "off"};
            size_t len = strlen(words);
            any_case(words + len, sizeof words - len - 2, w[i]);
            strcat(words, i < 5 ? "|" : ")$");
        }
        s = obj(g);
        put(g, s, "type", types(g, bool_types, nullable));
        put_str(g, s, "pattern", words);
        break;
    case SB_KEY_STRLIST:
        s = obj(g);
        put(g, s, "type", types(g, (const char *const[]){"array", NULL}, nullable));
        put(g, s, "minItems", json_integer(1));
        put(g, s, "items", scalar_schema(g, NULL, 0));
        break;
    case SB_KEY_NAMES:
    case SB_KEY_FILTERS:
        pattern = f->kind == SB_KEY_NAMES ? NAME_PATTERN : FILTER_PATTERN;
        s = obj(g);
        a = arr(g);
        push(g, a, scalar_schema(g, pattern, nullable));
        list = obj(g);
        put_str(g, list, "type", "array");
        if (f->kind == SB_KEY_FILTERS)
            put(g, list, "minItems", json_integer(1));
        put(g, list, "items", scalar_schema(g, pattern, 0));
        push(g, a, list);
        put(g, s, "anyOf", a);
        break;
    case SB_KEY_SECTION:
        s = table_schema(g, f->section, nullable);
        break;
    case SB_KEY_LIST:
        s = obj(g);
        put(g, s, "type", types(g, (const char *const[]){"array", NULL}, nullable));
        put(g, s, "items", f->section != NULL ? table_schema(g, f->section, 0) : adapter_schema(g));
        return s;
    case SB_KEY_CUSTOM:
        if (f->item == sb_config__parse_to)
            s = to_schema(g);
        else if (f->item == sb_config__parse_transform)
            s = steps_schema(g);
        else
            s = json_object(); /* anything: a parser this generator does not know */
        if (s == NULL)
            g->nomem = 1;
        return s;
    }
    if (f->kind != SB_KEY_SECTION) {
        describe(words, sizeof words, f);
        put_str(g, s, "description", words);
        put_default(g, s, f);
    }
    return s;
}

/* The rows of t as "properties" of s (and their required keys). */
static void add_rows(gen *g, json_t *s, json_t *props, json_t *required, const sb_config_table *t)
{
    (void)s;
    for (size_t i = 0; i < t->count; i++) {
        const sb_config_key *f = &t->keys[i];
        put(g, props, f->key, value_schema(g, f));
        if (f->flags & SB_KEY_REQUIRED)
            push(g, required, json_string(f->key));
    }
}

/* A mapping of t's keys, no others. */
static json_t *table_schema(gen *g, const sb_config_table *t, int nullable)
{
    json_t *s = obj(g), *props = obj(g), *required = arr(g);
    put(g, s, "type", types(g, (const char *const[]){"object", NULL}, nullable));
    add_rows(g, s, props, required, t);
    put(g, s, "properties", props);
    if (json_array_size(required) > 0)
        put(g, s, "required", required);
    else
        json_decref(required);
    put(g, s, "additionalProperties", json_false());
    return s;
}

/* An adapter: name and type, then the keys of its type (one if/then per
 * registered type). */
static json_t *adapter_schema(gen *g)
{
    const sb_config_table *common = &sb_config__adapter_common;
    const char *const *names = sb_config__type_names();
    json_t *s = obj(g), *props = obj(g), *required = arr(g), *branches = arr(g);

    put_str(g, s, "type", "object");
    add_rows(g, s, props, required, common);
    put(g, s, "properties", props);
    put(g, s, "required", required);
    for (size_t i = 0; names[i] != NULL; i++) {
        const sb_adapter_keys *keys = sb_adapter_keys_find(names[i]);
        json_t *branch = obj(g), *cond = obj(g), *cprops = obj(g), *type = obj(g), *values = arr(g);
        json_t *then = table_schema(g, &keys->table, 0);
        json_t *tprops = json_object_get(then, "properties");

        choice_values(g, values, names[i]);
        put(g, type, "enum", values);
        put(g, cprops, "type", type);
        put(g, cond, "properties", cprops);
        put(g, cond, "required", json_pack("[s]", "type"));
        /* the common keys are checked above; here they are only allowed */
        for (size_t k = 0; k < common->count; k++)
            put(g, tprops, common->keys[k].key, json_true());
        put(g, branch, "if", cond);
        put(g, branch, "then", then);
        push(g, branches, branch);
    }
    put(g, s, "allOf", branches);
    return s;
}

/* A route's `to`: names, or a list whose entries are names or
 * {adapter, transform} (config/transforms.c). */
static json_t *to_schema(gen *g)
{
    json_t *s = obj(g), *any = arr(g), *list = obj(g), *entry = arr(g), *dest = obj(g);
    json_t *dprops = obj(g);

    push(g, any, scalar_schema(g, NAME_PATTERN, 1));
    put_str(g, list, "type", "array");
    push(g, entry, scalar_schema(g, NAME_PATTERN, 0));
    put_str(g, dest, "type", "object");
    put(g, dprops, "adapter", scalar_schema(g, NAME_PATTERN, 0));
    put(g, dprops, "transform", steps_schema(g));
    put(g, dest, "properties", dprops);
    put(g, dest, "required", json_pack("[s]", "adapter"));
    put(g, dest, "additionalProperties", json_false());
    push(g, entry, dest);
    put(g, list, "items", json_pack("{s:o}", "anyOf", entry));
    push(g, any, list);
    put(g, s, "anyOf", any);
    put_str(g, s, "description",
            "Destination adapters: a name, a list of names, or entries {adapter, transform}.");
    return s;
}

/* Transform steps: one step or a list of them; a step is a mapping with one
 * key, its kind. The steps' arguments are not described. */
static json_t *steps_schema(gen *g)
{
    const char *const *kinds = sb_transform_step_names();
    json_t *s = obj(g), *any = arr(g), *step = obj(g), *names = obj(g), *values = arr(g);
    json_t *list = obj(g);

    for (size_t i = 0; kinds[i] != NULL; i++)
        push(g, values, json_string(kinds[i]));
    put(g, names, "enum", values);
    put_str(g, step, "type", "object");
    put(g, step, "minProperties", json_integer(1));
    put(g, step, "maxProperties", json_integer(1));
    put(g, step, "propertyNames", names);
    put_str(g, list, "type", "array");
    put(g, list, "minItems", json_integer(1));
    put(g, list, "items", json_deep_copy(step));
    push(g, any, step);
    push(g, any, list);
    push(g, any, json_pack("{s:s}", "type", "null"));
    put(g, s, "anyOf", any);
    put_str(g, s, "description", "Transform steps: one step or a list (see README, Transforms).");
    return s;
}

int sb_config_json_schema(FILE *f)
{
    gen g = {0};
    json_t *root = obj(&g), *table = table_schema(&g, &sb_config__root, 0);
    int rc = 0;

    put_str(&g, root, "$schema", "http://json-schema.org/draft-07/schema#");
    put_str(&g, root, "title", "Switchboard configuration");
    put_str(&g, root, "description",
            "Generated by `switchboard schema` from the broker's configuration tables "
            "(config/switchboard.schema.json).");
    if (root == NULL || table == NULL || json_object_update(root, table) != 0)
        g.nomem = 1;
    if (g.nomem)
        rc = SB_ENOMEM;
    else if (json_dumpf(root, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0 ||
             fputc('\n', f) == EOF || fflush(f) != 0)
        rc = SB_EIO;
    json_decref(table);
    json_decref(root);
    return rc;
}
