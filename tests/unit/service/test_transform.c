/* Route transforms (service/transform.h): every step, compiled from YAML as
 * a config declares it, run on messages; and the code page tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "adapters/builtin.h"
#include "config/config.h"
#include "service/alloc.h"
#include "service/codepage.h"
#include "service/error.h"
#include "service/transform.h"

/* The steps of route `r` (from `from`) in a config whose transform is the
 * YAML `steps` (a flow sequence or mapping). */
static sb_config *load(const char *from, const char *steps)
{
    char text[4096];
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    snprintf(text, sizeof text, "routes:\n  - name: r\n    from: %s\n    transform: %s\n", from,
             steps);
    if (sb_config_parse(&cfg, "t.yaml", text, strlen(text), &errs) != 0)
        sb_config_errors_print(&errs, stderr);
    sb_config_errors_clear(&errs);
    return cfg;
}

static sb_transform *compile(const char *from, const char *steps)
{
    sb_config *cfg = load(from, steps);
    sb_transform *t = NULL;
    const sb_tnode *spec;
    assert_non_null(cfg);
    spec = cfg->routes[0].transform;
    assert_int_equal(sb_transform_compile(&t, &spec, 1, (const char *const *)cfg->routes[0].from,
                                          cfg->routes[0].from_count, NULL, NULL),
                     0);
    sb_config_free(cfg);
    return t;
}

/* The first error check-config reports for these steps. */
static void assert_config_error(const char *from, const char *steps, const char *want)
{
    char text[4096], line[512];
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    snprintf(text, sizeof text, "routes:\n  - name: r\n    from: %s\n    transform: %s\n", from,
             steps);
    assert_int_equal(sb_config_parse(&cfg, "t.yaml", text, strlen(text), &errs), SB_ECONFIG);
    assert_true(errs.count >= 1);
    sb_config_error_format(&errs.items[0], line, sizeof line);
    if (strstr(line, want) == NULL)
        fail_msg("got %s, want %s", line, want);
    sb_config_errors_clear(&errs);
}

static sb_message *msg(const char *topic, const char *payload)
{
    sb_message *m = sb_message_new(topic, payload, strlen(payload));
    assert_non_null(m);
    m->created_ms = 1700000000123;
    m->id = 42;
    return m;
}

/* Runs t on (topic, payload) and checks the result's topic and payload. */
static sb_message *run_ok(const sb_transform *t, sb_message *in)
{
    sb_message *out = NULL;
    char why[300];
    int rc = sb_transform_apply(t, in, &out, why, sizeof why);
    if (rc != 0)
        fail_msg("apply: %d %s", rc, why);
    assert_int_equal(out->id, in->id);
    assert_int_equal(out->created_ms, in->created_ms);
    return out;
}

static void expect(const char *from, const char *steps, const char *topic, const char *payload,
                   const char *want_topic, const char *want_payload)
{
    sb_transform *t = compile(from, steps);
    sb_message *in = msg(topic, payload), *out = run_ok(t, in);
    assert_string_equal(out->topic, want_topic);
    assert_int_equal(out->payload_len, strlen(want_payload));
    assert_memory_equal(out->payload, want_payload, out->payload_len);
    /* the input is never changed */
    assert_string_equal(in->topic, topic);
    assert_memory_equal(in->payload, payload, strlen(payload));
    sb_message_unref(out);
    sb_message_unref(in);
    sb_transform_free(t);
}

static void expect_error(const char *from, const char *steps, const char *topic,
                         const char *payload, const char *want)
{
    sb_transform *t = compile(from, steps);
    sb_message *in = msg(topic, payload), *out = NULL;
    char why[300];
    assert_int_equal(sb_transform_apply(t, in, &out, why, sizeof why), SB_EINVAL);
    assert_null(out);
    if (strstr(why, want) == NULL)
        fail_msg("got %s, want %s", why, want);
    sb_message_unref(in);
    sb_transform_free(t);
}

static void test_topic_rewrite(void **state)
{
    (void)state;
    expect("dde/+/+/Temp", "[{topic: 'plant/{2|lower}/{1}'}]", "dde/PLC/Line1/Temp", "1",
           "plant/line1/PLC", "1");
    /* # captures the rest as one value, the first matching filter counts */
    expect("[a/+, 'dde/#']", "{topic: 'x/{1|upper}'}", "dde/plc/line1", "", "x/PLC/LINE1", "");
    expect("[a/+, 'dde/#']", "{topic: 'x/{1}'}", "a/b", "", "x/b", "");
    expect("a/+", "{topic: '{topic}/v{{1}}'}", "a/b", "", "a/b/v{1}", "");
    expect_error("a/+", "{topic: '{1}/+'}", "a/b", "", "not a valid topic");
}

static void test_topic_errors_in_config(void **state)
{
    (void)state;
    assert_config_error("a/+", "[{topic: 'x/{2}'}]",
                        "t.yaml:4:25: routes[0].transform[0].topic: {2}: the route's from filters "
                        "capture 1 value");
    assert_config_error("a/+", "[{topic: 'x/{1|title}'}]", "unknown filter title");
    assert_config_error("a/+", "[{topic: 'x/{1'}]", "unmatched {");
    assert_config_error("a/+", "[{fly: away}]",
                        "t.yaml:4:18: routes[0].transform[0].fly: unknown step");
    assert_config_error("a/+", "[{topic: a, encode: hex}]", "a step is a mapping with one key");
    assert_config_error("a/+", "[{encode: koi8}]", "unknown encoding koi8");
    assert_config_error("a/+", "[{pick: value}]", "value is not a JSON Pointer");
    assert_config_error("a/+", "[{when: {weather: fine}}]", "unknown condition");
    assert_config_error("a/+", "[{when: {topic: 'a/#/b'}}]", "invalid topic filter");
    assert_config_error("a/+", "[{parse: date}]", "unknown type date");
    assert_config_error("a/+", "x", "expected a step or a list of steps");
}

static void test_headers(void **state)
{
    sb_transform *t = compile("plant/+/+", "[{header_set: {unit: C, line: '{1}'}}, "
                                           "{header_from_level: {item: 3}}, "
                                           "{header_remove: [source, unit]}]");
    sb_message *in = msg("plant/l1/temp", "1"), *out;
    assert_int_equal(sb_message_add_header(in, "source", "dde"), 0);
    assert_int_equal(sb_message_add_header(in, "keep", "yes"), 0);
    out = run_ok(t, in);
    assert_null(sb_message_header(out, "source"));
    assert_null(sb_message_header(out, "unit"));
    assert_string_equal(sb_message_header(out, "line"), "l1");
    assert_string_equal(sb_message_header(out, "item"), "temp");
    assert_string_equal(sb_message_header(out, "keep"), "yes");
    assert_string_equal(sb_message_header(in, "source"), "dde");
    sb_message_unref(out);
    sb_message_unref(in);
    sb_transform_free(t);
    expect_error("a/+", "[{header_from_level: {x: 5}}]", "a/b", "", "has no level 5");
    expect_error("a/+", "[{format: '{header.missing}'}]", "a/b", "", "no header missing");
}

static void test_code_pages(void **state)
{
    (void)state;
    /* "Grüße €5" in windows-1252: ü=FC ß=DF €=80 */
    expect("a", "{encode: cp1252}", "a", "Gr\xc3\xbc\xc3\x9f\x65 \xe2\x82\xac\x35", "a",
           "Gr\xfc\xdf\x65 \x80\x35");
    expect("a", "{decode: windows-1252}", "a", "Gr\xfc\xdf\x65 \x80\x35", "a",
           "Gr\xc3\xbc\xc3\x9f\x65 \xe2\x82\xac\x35");
    /* Cyrillic in 1251, box drawing in 437 */
    expect("a", "{encode: 1251}", "a", "\xd0\x96", "a", "\xc6");
    expect("a", "{decode: cp437}", "a", "\xc9", "a", "\xe2\x95\x94");
    /* no best fit: a character the page lacks is an error */
    expect_error("a", "{encode: cp1252}", "a", "ab\xe4\xb8\xad", "U+4E2D at byte 2");
    expect_error("a", "{encode: cp1252}", "a", "\xff", "invalid UTF-8 at byte 0");
    /* 0x81 is undefined in 1252 */
    expect_error("a", "{decode: cp1252}", "a", "x\x81", "byte 0x81 at 1 is undefined");
    assert_int_equal(sb_codepage_parse("CP1250"), 1250);
    assert_int_equal(sb_codepage_parse("windows-874"), 874);
    assert_int_equal(sb_codepage_parse("932"), 0);
    assert_int_equal(sb_codepage_parse("cp"), 0);
}

static void test_code_page_round_trip(void **state)
{
    (void)state;
    for (const sb_codepage_table *t = sb_codepage__tables; t->cp != 0; t++) {
        unsigned char all[256], *utf8, *back;
        size_t n = 0, ulen, blen;
        char why[128];
        for (int b = 0; b < 256; b++)
            if (b < 0x80 || t->high[b - 0x80] != 0)
                all[n++] = (unsigned char)b;
        assert_int_equal(sb_codepage_to_utf8(&utf8, &ulen, t->cp, all, n, why, sizeof why), 0);
        assert_int_equal(sb_codepage_from_utf8(&back, &blen, t->cp, utf8, ulen, why, sizeof why),
                         0);
        assert_int_equal(blen, n);
        assert_memory_equal(back, all, n);
        sb_free(utf8);
        sb_free(back);
    }
}

static void test_base64_hex(void **state)
{
    (void)state;
    expect("a", "{encode: base64}", "a", "hello", "a", "aGVsbG8=");
    expect("a", "{decode: base64}", "a", "aGVsbG8=", "a", "hello");
    expect("a", "{encode: hex}", "a", "\x01\xab", "a", "01ab");
    expect("a", "{decode: hex}", "a", "01AB", "a", "\x01\xab");
    expect_error("a", "{decode: hex}", "a", "0g", "not hex (byte 1)");
    expect_error("a", "{decode: hex}", "a", "012", "odd length");
    expect_error("a", "{decode: base64}", "a", "!!!", "not base64");
}

static void test_envelope(void **state)
{
    (void)state;
    expect("a/+", "[{header_set: {k: v}}, {wrap: envelope}]", "a/b", "hi", "a/b",
           "{\"topic\":\"a/b\",\"payload\":\"hi\",\"headers\":{\"k\":\"v\"},\"ts\":1700000000123}");
    /* bytes that are not UTF-8 go as base64 */
    expect("a", "{wrap: envelope}", "a", "\xff", "a",
           "{\"encoding\":\"base64\",\"topic\":\"a\",\"payload\":\"/w==\",\"headers\":{},\"ts\":"
           "1700000000123}");
    expect("a", "{unwrap: envelope}", "a", "{\"topic\":\"x/y\",\"payload\":\"hi\"}", "x/y", "hi");
    expect("a", "{unwrap: envelope}", "a", "{\"payload\":{\"v\":1}}", "a", "{\"v\":1}");
    expect("a", "{unwrap: envelope}", "a", "{\"payload\":\"/w==\",\"encoding\":\"base64\"}", "a",
           "\xff");
    /* wrap then unwrap gives the message back */
    expect("a/#", "[{wrap: envelope}, {unwrap: envelope}]", "a/b/c", "x\"y", "a/b/c", "x\"y");
    expect_error("a", "{unwrap: envelope}", "a", "[1]", "not a JSON object");
    /* the message's own headers are replaced by the envelope's */
    expect("a", "[{header_set: {h1: a, h2: b}}, {unwrap: envelope}]", "a",
           "{\"headers\":{\"k\":\"v\"},\"payload\":\"x\"}", "a", "x");
    expect_error("a", "{unwrap: envelope}", "a", "{\"topic\":\"a/+\"}", "not a valid topic");
    expect_error("a", "{unwrap: envelope}", "a", "nope", "the payload is not JSON");
}

static void test_pick_set_json(void **state)
{
    (void)state;
    expect("a", "{pick: /v/1}", "a", "{\"v\":[1,{\"x\":\"y\"}]}", "a", "{\"x\":\"y\"}");
    expect("a", "{pick: /a~1b}", "a", "{\"a/b\":true}", "a", "true");
    expect_error("a", "{pick: /nope}", "a", "{}", "the payload has no /nope");
    expect("a", "{set: {/ts: '{ts}', /meta/unit: C, /n: 5, /s: '5'}}", "a", "{\"v\":1}", "a",
           "{\"v\":1,\"ts\":1700000000123,\"meta\":{\"unit\":\"C\"},\"n\":5,\"s\":\"5\"}");
    expect("a", "{set: {/l/-: 3}}", "a", "{\"l\":[1]}", "a", "{\"l\":[1,3]}");
    /* a payload that is not an object becomes one */
    expect("a", "{set: {/x: 3}}", "a", "42", "a", "{\"x\":3}");
    expect("a/+", "{json: {value: '{payload}', where: '{1}', copy: '{/x}'}}", "a/b", "{\"x\":[1]}",
           "a/b", "{\"value\":{\"x\":[1]},\"where\":\"b\",\"copy\":[1]}");
    /* text that is not JSON goes in as a string */
    expect("a", "{json: [x, '{payload}']}", "a", "plain", "a", "[\"x\",\"plain\"]");
}

static void test_parse(void **state)
{
    (void)state;
    expect("a", "{parse: number}", "a", " 23.5\r\n", "a", "23.5");
    expect("a", "{parse: number}", "a", "+7", "a", "7");
    expect("a", "{parse: number}", "a", "0.1", "a", "0.1");
    expect_error("a", "{parse: number}", "a", "0x10", "\"0x10\" is not a number");
    expect_error("a", "{parse: number}", "a", "nan", "is not a number");
    expect_error("a", "{parse: number}", "a", "", "is not a number");
    expect("a", "{parse: text}", "a", "say \"hi\"", "a", "\"say \\\"hi\\\"\"");
    expect("a", "{parse: bool}", "a", "1", "a", "true");
    expect_error("a", "{parse: bool}", "a", "maybe", "not a boolean");
    expect("a", "{parse: json}", "a", "[1, 2]", "a", "[1, 2]");
    expect_error("a", "{parse: json}", "a", "[1,", "not JSON");
    /* the DDE case: CF_TEXT "23.5" -> {"value":23.5,"ts":...} */
    expect("dde/+/+/+",
           "[{decode: cp1252}, {parse: number}, {json: {value: '{payload}', ts: '{ts}'}}]",
           "dde/PLC/Line1/Temp", "23.5", "dde/PLC/Line1/Temp",
           "{\"value\":23.5,\"ts\":1700000000123}");
}

static void test_format_fixed_width(void **state)
{
    (void)state;
    expect("orders/#",
           "[{format: '{/id|left:8}{/qty|zero:5}{/name|cut:4|right:6}|'}, {encode: cp1252}]",
           "orders/new", "{\"id\":\"A1\",\"qty\":-5,\"name\":\"M\xc3\xbcllerstra\xc3\x9f\x65\"}",
           "orders/new", "A1      -0005  M\xfcll|");
    expect_error("a", "{format: '{/id|left:2}'}", "a", "{\"id\":\"abc\"}",
                 "step 1 (format): \"abc\" is longer than 2 characters");
}

static void test_when(void **state)
{
    sb_transform *t = compile("plant/#", "[{when: {topic: 'plant/+/temp', header: {unit: C}, "
                                         "field: {/ok: true, /v: 2}}}, {topic: done}]");
    struct {
        const char *topic, *unit, *payload;
        int rc;
    } cases[] = {
        {"plant/l1/temp", "C", "{\"ok\":true,\"v\":2.0}", 0},
        {"plant/l1/speed", "C", "{\"ok\":true,\"v\":2}", SB_TRANSFORM_SKIP},
        {"plant/l1/temp", "F", "{\"ok\":true,\"v\":2}", SB_TRANSFORM_SKIP},
        {"plant/l1/temp", NULL, "{\"ok\":true,\"v\":2}", SB_TRANSFORM_SKIP},
        {"plant/l1/temp", "C", "{\"ok\":false,\"v\":2}", SB_TRANSFORM_SKIP},
        {"plant/l1/temp", "C", "not json", SB_TRANSFORM_SKIP},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb_message *in = msg(cases[i].topic, cases[i].payload), *out = NULL;
        char why[300];
        if (cases[i].unit != NULL)
            assert_int_equal(sb_message_add_header(in, "unit", cases[i].unit), 0);
        assert_int_equal(sb_transform_apply(t, in, &out, why, sizeof why), cases[i].rc);
        if (cases[i].rc == 0)
            assert_string_equal(out->topic, "done");
        else
            assert_null(out);
        if (out != NULL)
            sb_message_unref(out);
        sb_message_unref(in);
    }
    sb_transform_free(t);
    /* a present header, a present field */
    t = compile("a", "[{when: {header: unit, field: /v}}]");
    {
        sb_message *in = msg("a", "{\"v\":null}"), *out = NULL;
        char why[300];
        assert_int_equal(sb_transform_apply(t, in, &out, why, sizeof why), SB_TRANSFORM_SKIP);
        assert_int_equal(sb_message_add_header(in, "unit", "x"), 0);
        assert_int_equal(sb_transform_apply(t, in, &out, why, sizeof why), 0);
        sb_message_unref(out);
        sb_message_unref(in);
    }
    sb_transform_free(t);
}

static void test_destination_entries(void **state)
{
    const char *text = "adapters:\n"
                       "  - {name: s1, type: null}\n"
                       "  - {name: s2, type: null}\n"
                       "routes:\n"
                       "  - name: r\n"
                       "    from: a/+\n"
                       "    transform: {topic: 'b/{1}'}\n"
                       "    to:\n"
                       "      - s1\n"
                       "      - adapter: s2\n"
                       "        transform: [{encode: hex}]\n";
    sb_config *cfg = NULL, *again = NULL;
    sb_config_errors errs = {0};
    sb_route_config copy;
    (void)state;
    if (sb_config_parse(&cfg, "t.yaml", text, strlen(text), &errs) != 0)
        sb_config_errors_print(&errs, stderr);
    assert_non_null(cfg);
    assert_int_equal(cfg->routes[0].to_count, 2);
    assert_string_equal(cfg->routes[0].to[1], "s2");
    assert_null(cfg->routes[0].to_transform[0]);
    assert_non_null(cfg->routes[0].to_transform[1]);
    assert_int_equal(sb_route_config_copy(&copy, &cfg->routes[0]), 0);
    assert_true(sb_route_config_equal(&copy, &cfg->routes[0]));
    /* a changed step makes the route differ (a reload applies it) */
    {
        char t2[1024], *at;
        snprintf(t2, sizeof t2, "%s", text);
        at = strstr(t2, "hex");
        memcpy(at, "oct", 3);
        assert_int_equal(sb_config_parse(&again, "t.yaml", t2, strlen(t2), &errs), SB_ECONFIG);
        sb_config_errors_clear(&errs);
        memcpy(at, "437", 3);
        assert_int_equal(sb_config_parse(&again, "t.yaml", t2, strlen(t2), &errs), 0);
        assert_false(sb_route_config_equal(&again->routes[0], &cfg->routes[0]));
        assert_true(sb_route_config_equal(&copy, &cfg->routes[0]));
        sb_config_free(again);
    }
    sb_route_config_free(&copy);
    sb_config_free(cfg);
}

static void test_destination_errors(void **state)
{
    const char *text = "adapters:\n"
                       "  - {name: s1, type: null}\n"
                       "routes:\n"
                       "  - name: r\n"
                       "    from: a/+\n"
                       "    to:\n"
                       "      - adapter: s1\n"
                       "        transform: [{encode: ebcdic}]\n"
                       "        colour: red\n"
                       "      - {transform: {topic: x}}\n";
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    char line[512];
    (void)state;
    assert_int_equal(sb_config_parse(&cfg, "t.yaml", text, strlen(text), &errs), SB_ECONFIG);
    assert_int_equal(errs.count, 3);
    sb_config_error_format(&errs.items[0], line, sizeof line);
    assert_string_equal(line, "t.yaml:8:30: routes[0].to[0].transform[0].encode: unknown encoding "
                              "ebcdic (use base64, hex, or a code page: 437, 850, 866, 874, "
                              "1250..1258, written 1252, cp1252 or windows-1252)");
    sb_config_error_format(&errs.items[1], line, sizeof line);
    assert_string_equal(line, "t.yaml:9:9: routes[0].to[0].colour: unknown key (known: adapter, "
                              "transform)");
    sb_config_error_format(&errs.items[2], line, sizeof line);
    assert_string_equal(line, "t.yaml:10:9: routes[0].to[1].adapter: required");
    sb_config_errors_clear(&errs);
}

static void test_route_and_destination_chain(void **state)
{
    const sb_tnode *specs[2];
    sb_config *a = load("a/+", "{topic: 'b/{1}'}"), *b = load("a/+", "{encode: hex}");
    sb_transform *t = NULL;
    sb_message *in = msg("a/x", "A"), *out;
    (void)state;
    specs[0] = a->routes[0].transform;
    specs[1] = b->routes[0].transform;
    assert_int_equal(
        sb_transform_compile(&t, specs, 2, (const char *const *)a->routes[0].from, 1, NULL, NULL),
        0);
    assert_int_equal(sb_transform_steps(t), 2);
    out = run_ok(t, in);
    assert_string_equal(out->topic, "b/x");
    assert_memory_equal(out->payload, "41", 2);
    sb_message_unref(out);
    sb_message_unref(in);
    sb_transform_free(t);
    sb_config_free(a);
    sb_config_free(b);
}

static void test_out_of_memory(void **state)
{
    sb_transform *t = compile("a/+", "[{topic: 'b/{1}'}, {header_set: {h: v}}, {parse: number}, "
                                     "{json: {value: '{payload}', ts: '{ts}'}}, {encode: base64}]");
    (void)state;
    for (long n = 0;; n++) {
        sb_message *in = msg("a/x", "1.5"), *out = NULL;
        char why[300];
        int rc;
        sb_alloc_fail_after(n);
        rc = sb_transform_apply(t, in, &out, why, sizeof why);
        sb_alloc_fail_after(-1);
        sb_message_unref(in);
        if (rc == 0) {
            sb_message_unref(out);
            break;
        }
        assert_int_equal(rc, SB_ENOMEM);
        assert_null(out);
    }
    sb_transform_free(t);
}

/* config/examples/transforms.yaml: its steps do what its comments say. */
static void test_example(void **state)
{
    const char *root = getenv("SB_TEST_DATA");
    char path[1024];
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    const sb_route_config *r;
    const sb_tnode *specs[2];
    sb_transform *t = NULL;
    sb_message *in, *out;
    (void)state;
    snprintf(path, sizeof path, "%s/../../config/examples/transforms.yaml",
             root != NULL ? root : "tests/data");
    if (sb_config_load(&cfg, path, &errs) != 0)
        sb_config_errors_print(&errs, stderr);
    assert_non_null(cfg);

    r = sb_config_route(cfg, "plc-to-mqtt");
    assert_true(r->republish);
    specs[0] = r->transform;
    assert_int_equal(
        sb_transform_compile(&t, specs, 1, (const char *const *)r->from, r->from_count, NULL, NULL),
        0);
    in = msg("dde/PLCSERVER/Line1/Temp", "23.5");
    out = run_ok(t, in);
    assert_string_equal(out->topic, "plant/line1/temp");
    assert_memory_equal(out->payload, "{\"value\":23.5,\"ts\":1700000000123}", out->payload_len);
    assert_string_equal(sb_message_header(out, "content-type"), "application/json");
    sb_message_unref(out);
    sb_message_unref(in);
    sb_transform_free(t);

    r = sb_config_route(cfg, "orders");
    specs[0] = r->transform;
    specs[1] = r->to_transform[0];
    assert_int_equal(
        sb_transform_compile(&t, specs, 2, (const char *const *)r->from, r->from_count, NULL, NULL),
        0);
    in = msg("orders/new",
             "{\"kind\":\"order\",\"id\":\"A1\",\"qty\":7,\"name\":\"M\xc3\xbcller\"}");
    out = run_ok(t, in);
    assert_int_equal(out->payload_len, 18);
    assert_memory_equal(out->payload, "A1    0007M\xfcller  ", 18);
    sb_message_unref(out);
    sb_message_unref(in);
    sb_transform_free(t);
    sb_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_rewrite),
        cmocka_unit_test(test_topic_errors_in_config),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_code_pages),
        cmocka_unit_test(test_code_page_round_trip),
        cmocka_unit_test(test_base64_hex),
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_pick_set_json),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_format_fixed_width),
        cmocka_unit_test(test_when),
        cmocka_unit_test(test_destination_entries),
        cmocka_unit_test(test_destination_errors),
        cmocka_unit_test(test_route_and_destination_chain),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_example),
    };
    if (sb_adapter_keys_register_builtin(NULL) != 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
