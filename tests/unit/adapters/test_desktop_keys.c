/*
 * The keys of the WM_COPYDATA and clipboard adapters (copydata_keys.c,
 * clipboard_keys.c), through the config loader as check-config reads them
 * on any platform: values and defaults in the settings, every refusal at
 * its FILE:LINE:COL and key path, data_map entries.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "adapters/builtin.h"
#include "adapters/clipboard/clipboard_keys.h"
#include "adapters/copydata/copydata_keys.h"
#include "config/config.h"
#include "service/alloc.h"
#include "service/error.h"

/* The errors of yaml, one "FILE:LINE:COL: key: message" per line. */
static char *errors_of(const char *yaml)
{
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    size_t len = 0;
    char *out = calloc(1, 1);
    assert_non_null(out);
    if (sb_config_parse(&cfg, "t.yaml", yaml, strlen(yaml), &errs) == 0) {
        sb_config_free(cfg);
        return out;
    }
    for (size_t i = 0; i < errs.count; i++) {
        char line[1024];
        size_t n;
        sb_config_error_format(&errs.items[i], line, sizeof line);
        n = strlen(line);
        out = realloc(out, len + n + 2);
        assert_non_null(out);
        memcpy(out + len, line, n);
        len += n;
        out[len++] = '\n';
        out[len] = '\0';
    }
    sb_config_errors_clear(&errs);
    return out;
}

static void expect_errors(const char *yaml, const char *expected)
{
    char *got = errors_of(yaml);
    if (strcmp(got, expected) != 0)
        fail_msg("for:\n%s\nexpected:\n%s\ngot:\n%s", yaml, expected, got);
    free(got);
}

static sb_config *parse_ok(const char *yaml)
{
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    if (sb_config_parse(&cfg, "t.yaml", yaml, strlen(yaml), &errs) != 0) {
        char *got = errors_of(yaml);
        fail_msg("for:\n%s\n%s", yaml, got);
    }
    return cfg;
}

static int setup(void **state)
{
    sb_error err;
    int rc = sb_adapter_keys_register_builtin(&err);
    (void)state;
    assert_true(rc == 0 || rc == SB_EEXIST);
    return 0;
}

static void test_copydata_values(void **state)
{
    sb_config *cfg;
    const sb_copydata_settings *in, *out;
    (void)state;
    cfg = parse_ok("adapters:\n"
                   "  - name: pos\n"
                   "    type: copydata\n"
                   "  - name: printer\n"
                   "    type: copydata\n"
                   "    direction: out\n"
                   "    title: Labels\n"
                   "    data_map: ['2=shop/labels', ' 0x10 = shop/x ']\n"
                   "    dwdata: 0xFF\n"
                   "    send_timeout: 250ms\n"
                   "    encoding: ansi\n"
                   "    codepage: 1252\n"
                   "routes:\n"
                   "  - { name: r, from: shop/#, to: printer }\n");
    in = SB_SETTINGS(const sb_copydata_settings, &cfg->adapters[0]);
    assert_int_equal(in->direction, SB_COPYDATA_IN);
    assert_string_equal(in->window_class, "SwitchboardCopyData");
    assert_string_equal(in->title, "pos");
    assert_string_equal(in->topic, "{adapter}/{data}");
    assert_int_equal(in->encoding, SB_COPYDATA_BYTES);
    assert_int_equal(in->strict, 0);
    assert_int_equal(in->allow_lower_integrity, 0);
    assert_int_equal(in->max_message, 1048576);
    out = SB_SETTINGS(const sb_copydata_settings, &cfg->adapters[1]);
    assert_int_equal(out->direction, SB_COPYDATA_OUT);
    assert_null(out->window_class);
    assert_string_equal(out->title, "Labels");
    assert_int_equal(out->data_map_count, 2);
    assert_string_equal(out->dwdata, "0xFF");
    assert_int_equal(out->send_timeout_ms, 250);
    assert_int_equal(out->encoding, SB_COPYDATA_ANSI);
    assert_int_equal(out->codepage, 1252);
    assert_int_equal(out->reconnect_backoff_ms, 500);
    assert_int_equal(out->reconnect_max_backoff_ms, 30000);
    assert_int_equal(cfg->adapters[1].inflight, 64);
    sb_config_free(cfg);
}

static void test_copydata_errors(void **state)
{
    (void)state;
    expect_errors("adapters:\n"
                  "  - { name: o, type: copydata, direction: out }\n",
                  "t.yaml:2:5: adapters[0].class: direction out needs the class or the title "
                  "(or both) of the window to send to\n");
    expect_errors("adapters:\n"
                  "  - { name: o, type: copydata, direction: out, title: x, strict: true }\n",
                  "t.yaml:2:58: adapters[0].strict: only for direction: in (the window the "
                  "broker receives on)\n");
    expect_errors("adapters:\n"
                  "  - { name: o, type: copydata, direction: out, title: x,\n"
                  "      allow_lower_integrity: true }\n",
                  "t.yaml:3:7: adapters[0].allow_lower_integrity: only for direction: in (the "
                  "window the broker receives on)\n");
    expect_errors("adapters:\n"
                  "  - { name: i, type: copydata, dwdata: 1, send_timeout: 1s }\n",
                  "t.yaml:2:32: adapters[0].dwdata: only for direction: out (the broker sends "
                  "to another program's window)\n");
    expect_errors("adapters:\n"
                  "  - name: i\n"
                  "    type: copydata\n"
                  "    data_map: [1=a, x=b, '2', 3=a/+, 1=c, '4=$SYS/x']\n",
                  "t.yaml:4:21: adapters[0].data_map[1]: the number must be decimal or 0x hex, "
                  "at most 2^64 - 1\n"
                  "t.yaml:4:26: adapters[0].data_map[2]: must be NUMBER=topic (e.g. "
                  "1=orders/new)\n"
                  "t.yaml:4:31: adapters[0].data_map[3]: contains a wildcard ('+' or '#')\n"
                  "t.yaml:4:38: adapters[0].data_map[4]: number 1 is mapped already\n"
                  "t.yaml:4:43: adapters[0].data_map[5]: topics starting with '$' are the "
                  "broker's own\n");
    expect_errors("adapters:\n"
                  "  - { name: i, type: copydata, strict: true }\n",
                  "t.yaml:2:32: adapters[0].strict: strict refuses every dwData that data_map "
                  "does not name: give data_map\n");
    expect_errors("adapters:\n"
                  "  - { name: o, type: copydata, direction: out, class: c, dwdata: -1 }\n",
                  "t.yaml:2:66: adapters[0].dwdata: must be a number, decimal or 0x hex, at "
                  "most 2^64 - 1\n");
    expect_errors("adapters:\n"
                  "  - { name: i, type: copydata, codepage: 1252 }\n",
                  "t.yaml:2:32: adapters[0].codepage: only for encoding: ansi\n");
    expect_errors("adapters:\n"
                  "  - { name: i, type: copydata, topic: 'x/n{data}' }\n",
                  "t.yaml:2:39: adapters[0].topic: {data} must be a whole level\n");
    expect_errors("adapters:\n"
                  "  - { name: i, type: copydata, topic: 'x/{item}' }\n"
                  "routes:\n"
                  "  - { name: r, from: x, to: i }\n",
                  "t.yaml:2:39: adapters[0].topic: unknown placeholder \"{item}\" (known: "
                  "{adapter} {data})\n"
                  "t.yaml:4:29: routes[0].to: adapter i (type copydata, direction in) cannot "
                  "be a destination: set direction: out to send to a window\n");
}

static void test_map_entry(void **state)
{
    uint64_t data = 0;
    char *topic = NULL;
    const char *why = NULL;
    (void)state;
    assert_int_equal(sb_copydata_map_entry(&data, &topic, "  0x1F =  a/b  ", &why), 0);
    assert_true(data == 31);
    assert_string_equal(topic, "a/b");
    sb_free(topic);
    assert_int_equal(sb_copydata_map_entry(&data, &topic, "=a", &why), SB_EINVAL);
    assert_null(topic);
    assert_int_equal(sb_copydata_map_entry(&data, &topic, "1=", &why), SB_EINVAL);
    assert_null(topic);
}

static void test_clipboard(void **state)
{
    sb_config *cfg;
    const sb_clipboard_settings *s;
    (void)state;
    cfg = parse_ok("adapters:\n"
                   "  - name: paste\n"
                   "    type: clipboard\n"
                   "  - name: copied\n"
                   "    type: clipboard\n"
                   "    direction: in\n"
                   "    formats: [CF_UNICODETEXT, HTML Format]\n"
                   "    owner_filter: [notepad.exe]\n"
                   "    topic: desk/{format}\n"
                   "routes:\n"
                   "  - { name: r, from: x, to: paste }\n");
    s = SB_SETTINGS(const sb_clipboard_settings, &cfg->adapters[0]);
    assert_int_equal(s->direction, SB_CLIPBOARD_OUT);
    assert_int_equal(s->formats_count, 0);
    assert_int_equal(s->busy_timeout_ms, 2000);
    s = SB_SETTINGS(const sb_clipboard_settings, &cfg->adapters[1]);
    assert_int_equal(s->direction, SB_CLIPBOARD_IN);
    assert_int_equal(s->formats_count, 2);
    assert_string_equal(s->formats[1], "HTML Format");
    assert_string_equal(s->owner_filter[0], "notepad.exe");
    assert_string_equal(s->topic, "desk/{format}");
    sb_config_free(cfg);

    expect_errors("adapters:\n"
                  "  - name: c\n"
                  "    type: clipboard\n"
                  "    direction: in\n"
                  "    formats: [CF_BITMAP, '49321', x, x]\n"
                  "    owner_filter: ['C:\\Windows\\notepad.exe']\n",
                  "t.yaml:5:15: adapters[0].formats[0]: not a standard format this adapter "
                  "carries (CF_UNICODETEXT, CF_TEXT, CF_OEMTEXT, CF_DIB, CF_DIBV5; or a "
                  "registered format's name)\n"
                  "t.yaml:5:26: adapters[0].formats[1]: a format number (name the format: its "
                  "number differs between sessions)\n"
                  "t.yaml:5:38: adapters[0].formats[3]: listed twice\n"
                  "t.yaml:6:20: adapters[0].owner_filter[0]: a program's file name "
                  "(notepad.exe), not a path\n");
    expect_errors("adapters:\n"
                  "  - { name: c, type: clipboard, formats: [CF_TEXT], owner_filter: [a.exe] }\n"
                  "routes:\n"
                  "  - { name: r, from: x, to: c }\n",
                  "t.yaml:2:33: adapters[0].formats: only for direction in or both: a delivery "
                  "names its format in its clipboard-format header\n"
                  "t.yaml:2:53: adapters[0].owner_filter: only for direction in or both\n");
    expect_errors("adapters:\n"
                  "  - { name: c, type: clipboard, direction: in }\n"
                  "routes:\n"
                  "  - { name: r, from: x, to: c }\n",
                  "t.yaml:4:29: routes[0].to: adapter c (type clipboard, direction in) cannot "
                  "be a destination: set direction: out or both\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copydata_values),
        cmocka_unit_test(test_copydata_errors),
        cmocka_unit_test(test_map_entry),
        cmocka_unit_test(test_clipboard),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
