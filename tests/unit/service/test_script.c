/* Lua route scripts: the sandbox (service/script.h) and `lua` steps in a
 * route's transform (service/transform.h), compiled from YAML as a config
 * declares them, with their script files written beside it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <uv.h>

#include "adapters/builtin.h"
#include "config/config.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/script.h"
#include "service/transform.h"

/* ---- the sandbox ---- */

static sb_script *new_script(const char *src, int64_t budget, size_t memory)
{
    sb_script *s = NULL;
    char why[400];
    int rc = sb_script_new(&s, "t.lua", src, strlen(src), budget, memory, why, sizeof why);
    if (rc != 0)
        fail_msg("sb_script_new: %d %s", rc, why);
    return s;
}

static void expect_new_error(const char *src, const char *want)
{
    sb_script *s = NULL;
    char why[400];
    assert_int_equal(sb_script_new(&s, "t.lua", src, strlen(src), SB_SCRIPT_BUDGET,
                                   SB_SCRIPT_MEMORY, why, sizeof why),
                     SB_EINVAL);
    assert_null(s);
    if (strstr(why, want) == NULL)
        fail_msg("got \"%s\", want \"%s\"", why, want);
}

/* Calls s on a message (topic, payload, one header) and returns the rc;
 * the results in *out / *count, the reason in why. */
static int call(sb_script *s, const char *topic, const char *payload, sb_script_msg **out,
                size_t *count, char *why, size_t n)
{
    sb_header h = {"content-type", "text/plain"};
    sb_script_msg in = {(char *)topic, (unsigned char *)payload, strlen(payload), &h, 1};
    return sb_script_call(s, &in, 1700000000123, out, count, why, n);
}

static void free_out(sb_script_msg *out, size_t count)
{
    for (size_t i = 0; i < count; i++)
        sb_script_msg_release(&out[i]);
    sb_free(out);
}

/* The script's transform() fails on every call with a reason containing
 * want. */
static void expect_call_error(const char *src, int64_t budget, size_t memory, const char *want)
{
    sb_script *s = new_script(src, budget, memory);
    sb_script_msg *out;
    size_t count;
    char why[400];
    for (int i = 0; i < 2; i++) { /* and the state still works after it */
        assert_int_equal(call(s, "a/b", "x", &out, &count, why, sizeof why), SB_EINVAL);
        assert_null(out);
        if (strstr(why, want) == NULL)
            fail_msg("got \"%s\", want \"%s\"", why, want);
    }
    sb_script_free(s);
}

static void test_unsafe_libraries_absent(void **state)
{
    static const char src[] =
        "function transform(m)\n"
        "  local names = {}\n"
        "  for _, n in ipairs({'io', 'os', 'require', 'package', 'debug', 'dofile', 'loadfile',\n"
        "                      'load', 'collectgarbage', 'print', 'coroutine'}) do\n"
        "    if _G[n] ~= nil then names[#names + 1] = n end\n"
        "  end\n"
        "  if string.dump ~= nil then names[#names + 1] = 'string.dump' end\n"
        "  -- what a script may use\n"
        "  assert(string.format and table.concat and math.floor and utf8.char and pcall)\n"
        "  return 'present:' .. table.concat(names, ',')\n"
        "end\n";
    sb_script *s = new_script(src, SB_SCRIPT_BUDGET, SB_SCRIPT_MEMORY);
    sb_script_msg *out;
    size_t count;
    char why[400];
    (void)state;
    assert_int_equal(call(s, "a/b", "x", &out, &count, why, sizeof why), 0);
    assert_int_equal(count, 1);
    assert_int_equal(out[0].len, strlen("present:"));
    assert_memory_equal(out[0].payload, "present:", out[0].len);
    free_out(out, count);
    sb_script_free(s);
}

static void test_os_call_is_an_error_with_its_line(void **state)
{
    (void)state;
    expect_call_error("function transform(m)\n"
                      "  local x = 1\n"
                      "  os.execute('touch /tmp/pwned')\n"
                      "end\n",
                      SB_SCRIPT_BUDGET, SB_SCRIPT_MEMORY, "t.lua:3: attempt to index a nil value");
}

static void test_bytecode_refused(void **state)
{
    (void)state;
    expect_new_error("\x1bLua\x54\x00", "attempt to load a binary chunk");
}

static void test_errors_name_their_line(void **state)
{
    (void)state;
    /* error() */
    expect_call_error("function transform(m)\n"
                      "\n"
                      "  error('no reading in ' .. m.topic)\n"
                      "end\n",
                      SB_SCRIPT_BUDGET, SB_SCRIPT_MEMORY, "t.lua:3: no reading in a/b");
    /* a library function's error has no position of its own */
    expect_call_error("function transform(m)\n"
                      "  return string.rep()\n"
                      "end\n",
                      SB_SCRIPT_BUDGET, SB_SCRIPT_MEMORY, "t.lua:2: bad argument #1 to 'rep'");
    /* an error value that is not a string */
    expect_call_error("function transform(m)\n"
                      "  error({code = 7})\n"
                      "end\n",
                      SB_SCRIPT_BUDGET, SB_SCRIPT_MEMORY,
                      "t.lua:2: (error object is a table value)");
    /* compile time: syntax, the chunk's own code, no transform() */
    expect_new_error("function transform(m)\n  return m +\nend\n", "t.lua:3: unexpected symbol");
    expect_new_error("local x = nil\nx.y = 1\nfunction transform(m) end\n",
                     "t.lua:2: attempt to index a nil value");
    expect_new_error("function transfrom(m) return m end\n",
                     "t.lua: defines no function transform");
}

static void test_budget(void **state)
{
    (void)state;
    expect_call_error("function transform(m)\n"
                      "  local n = 0\n"
                      "  while true do\n"
                      "    n = n + 1\n"
                      "  end\n"
                      "end\n",
                      100000, SB_SCRIPT_MEMORY, "instruction budget of 100000 exceeded");
    expect_call_error("function transform(m)\n"
                      "  while true do end\n"
                      "end\n",
                      SB_SCRIPT_BUDGET, SB_SCRIPT_MEMORY, "t.lua:2: instruction budget of");
    /* pcall does not catch it */
    expect_call_error("function transform(m)\n"
                      "  while true do\n"
                      "    pcall(function() while true do end end)\n"
                      "    xpcall(function() while true do end end, function(e) return e end)\n"
                      "  end\n"
                      "end\n",
                      100000, SB_SCRIPT_MEMORY, "instruction budget of 100000 exceeded");
    /* the chunk's own code runs on the budget too */
    {
        sb_script *s = NULL;
        char why[400];
        static const char src[] = "while true do end\nfunction transform(m) end\n";
        assert_int_equal(
            sb_script_new(&s, "t.lua", src, strlen(src), 10000, SB_SCRIPT_MEMORY, why, sizeof why),
            SB_EINVAL);
        assert_non_null(strstr(why, "t.lua:1: instruction budget of 10000 exceeded"));
    }
    /* a call within its budget after one that spent it */
    {
        static const char src[] = "function transform(m)\n"
                                  "  if m.payload == 'loop' then while true do end end\n"
                                  "  return m.payload .. '!'\n"
                                  "end\n";
        sb_script *s = new_script(src, 100000, SB_SCRIPT_MEMORY);
        sb_script_msg *out;
        size_t count;
        char why[400];
        assert_int_equal(call(s, "a", "loop", &out, &count, why, sizeof why), SB_EINVAL);
        assert_int_equal(call(s, "a", "ok", &out, &count, why, sizeof why), 0);
        assert_int_equal(count, 1);
        assert_memory_equal(out[0].payload, "ok!", 3);
        free_out(out, count);
        sb_script_free(s);
    }
}

static void test_memory_limit(void **state)
{
    (void)state;
    expect_call_error("function transform(m)\n"
                      "  local t = {}\n"
                      "  for i = 1, 100000000 do\n"
                      "    t[i] = 'item ' .. i\n"
                      "  end\n"
                      "end\n",
                      100000000, 1024 * 1024, "t.lua:4: memory limit of 1048576 bytes exceeded");
    /* one large allocation in a library function */
    expect_call_error("function transform(m)\n"
                      "  return string.rep('x', 100000000)\n"
                      "end\n",
                      SB_SCRIPT_BUDGET, 1024 * 1024, "memory limit of 1048576 bytes exceeded");
    /* the copies of what it returns count too: one string a thousand times */
    expect_call_error("function transform(m)\n"
                      "  local s, out = string.rep('z', 100000), {}\n"
                      "  for i = 1, 1000 do out[i] = s end\n"
                      "  return out\n"
                      "end\n",
                      SB_SCRIPT_BUDGET, 1024 * 1024,
                      "the messages returned hold more than the memory limit (1048576 bytes)");
    /* garbage is collected: a script may make far more than the limit in all */
    {
        static const char src[] = "function transform(m)\n"
                                  "  local n = 0\n"
                                  "  for i = 1, 2000 do\n"
                                  "    local s = string.rep('y', 10000) .. i\n"
                                  "    n = n + #s\n"
                                  "  end\n"
                                  "  return tostring(n)\n"
                                  "end\n";
        sb_script *s = new_script(src, 10000000, 1024 * 1024);
        sb_script_msg *out;
        size_t count;
        char why[400];
        assert_int_equal(call(s, "a", "", &out, &count, why, sizeof why), 0);
        free_out(out, count);
        sb_script_free(s);
    }
}

static void test_results(void **state)
{
    static const char src[] =
        "function transform(m)\n"
        "  if m.payload == 'none' then return nil end\n"
        "  if m.payload == 'false' then return false end\n"
        "  if m.payload == 'text' then return 'new payload' end\n"
        "  if m.payload == 'number' then return 23.5 end\n"
        "  if m.payload == 'empty-list' then return {} end\n"
        "  if m.payload == 'same' then m.topic = m.topic .. '/x'; return m end\n"
        "  if m.payload == 'headers' then\n"
        "    return {payload = m.headers['content-type'] .. ' ' .. m.ts, headers = {a = '1', b = "
        "2}}\n"
        "  end\n"
        "  if m.payload == 'split' then\n"
        "    local out = {}\n"
        "    for v in ('1,2,3'):gmatch('[^,]+') do\n"
        "      out[#out + 1] = {topic = m.topic .. '/' .. v, payload = v}\n"
        "    end\n"
        "    return out\n"
        "  end\n"
        "  if m.payload == 'bad' then return 42 == 42 end\n"
        "  if m.payload == 'badtopic' then return {topic = 5} end\n"
        "  if m.payload == 'badheader' then return {headers = {a = {}}} end\n"
        "  if m.payload == 'badlist' then return {{payload = 'a'}, true} end\n"
        "  if m.payload == 'toomany' then\n"
        "    local out = {}\n"
        "    for i = 1, 1001 do out[i] = 'x' end\n"
        "    return out\n"
        "  end\n"
        "end\n";
    sb_script *s = new_script(src, SB_SCRIPT_BUDGET, SB_SCRIPT_MEMORY);
    sb_script_msg *out;
    size_t count;
    char why[400];
    static const struct {
        const char *in, *why;
    } bad[] = {
        {"bad", "t.lua: the result is a boolean"},
        {"badtopic", "t.lua: the result.topic is not text"},
        {"badheader", "t.lua: the result.headers[\"a\"] is not text"},
        {"badlist", "t.lua: message 2 of the result is a boolean"},
        {"toomany", "t.lua: transform returned 1001 messages (at most 1000)"},
    };
    (void)state;

    assert_int_equal(call(s, "a/b", "none", &out, &count, why, sizeof why), 0);
    assert_int_equal(count, 0);
    assert_int_equal(call(s, "a/b", "false", &out, &count, why, sizeof why), 0);
    assert_int_equal(count, 0);
    assert_int_equal(call(s, "a/b", "empty-list", &out, &count, why, sizeof why), 0);
    assert_int_equal(count, 0);
    sb_free(out);

    assert_int_equal(call(s, "a/b", "text", &out, &count, why, sizeof why), 0);
    assert_int_equal(count, 1);
    assert_string_equal(out[0].topic, "a/b");
    assert_string_equal((char *)out[0].payload, "new payload");
    assert_int_equal(out[0].nh, 1); /* the input's headers */
    assert_string_equal(out[0].h[0].value, "text/plain");
    free_out(out, count);

    assert_int_equal(call(s, "a/b", "number", &out, &count, why, sizeof why), 0);
    assert_string_equal((char *)out[0].payload, "23.5");
    free_out(out, count);

    assert_int_equal(call(s, "a/b", "same", &out, &count, why, sizeof why), 0);
    assert_string_equal(out[0].topic, "a/b/x");
    assert_string_equal((char *)out[0].payload, "same");
    free_out(out, count);

    assert_int_equal(call(s, "a/b", "headers", &out, &count, why, sizeof why), 0);
    assert_string_equal((char *)out[0].payload, "text/plain 1700000000123");
    assert_int_equal(out[0].nh, 2);
    for (size_t i = 0; i < 2; i++)
        assert_string_equal(out[0].h[i].value, strcmp(out[0].h[i].key, "a") == 0 ? "1" : "2");
    free_out(out, count);

    assert_int_equal(call(s, "a/b", "split", &out, &count, why, sizeof why), 0);
    assert_int_equal(count, 3);
    for (size_t i = 0; i < 3; i++) {
        char want[16];
        snprintf(want, sizeof want, "a/b/%zu", i + 1);
        assert_string_equal(out[i].topic, want);
        assert_int_equal(out[i].len, 1);
        assert_int_equal(out[i].payload[0], '1' + (int)i);
    }
    free_out(out, count);

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(call(s, "a/b", bad[i].in, &out, &count, why, sizeof why), SB_EINVAL);
        if (strstr(why, bad[i].why) == NULL)
            fail_msg("%s: got \"%s\", want \"%s\"", bad[i].in, why, bad[i].why);
    }
    sb_script_free(s);
}

/* Out of memory anywhere in making a state or a call: an error, never a
 * crash (Lua's panic would abort). */
static void test_out_of_memory(void **state)
{
    static const char src[] = "function transform(m)\n"
                              "  return {{topic = m.topic .. '/1', payload = m.payload},\n"
                              "          {payload = 'two', headers = {k = 'v'}}}\n"
                              "end\n";
    (void)state;
    for (long k = 0;; k++) {
        sb_script *s = NULL;
        sb_script_msg *out = NULL;
        size_t count = 0;
        char why[400];
        int rc;
        sb_alloc_fail_once(k);
        rc = sb_script_new(&s, "t.lua", src, strlen(src), SB_SCRIPT_BUDGET, SB_SCRIPT_MEMORY, why,
                           sizeof why);
        if (rc == 0)
            rc = call(s, "a/b", "x", &out, &count, why, sizeof why);
        if (sb_alloc_failures() == 0) {
            sb_alloc_fail_once(-1);
            assert_int_equal(rc, 0);
            assert_int_equal(count, 2);
            free_out(out, count);
            sb_script_free(s);
            break;
        }
        sb_alloc_fail_once(-1);
        /* Lua retries a failed allocation after a full collection, which
         * may then succeed */
        assert_true(rc == 0 || rc == SB_ENOMEM);
        if (rc == 0)
            free_out(out, count);
        sb_script_free(s);
    }
}

/* ---- `lua` steps in a route's transform ---- */

/* The configs below name their scripts relative to ".": the tests run in
 * a directory of their own so that they never write into the source tree. */
static char work_dir[1024], start_dir[1024];
static const char *const script_files[] = {"lua-split.lua", "lua-err.lua", "lua-syntax.lua",
                                           "lua-v.lua"};

static int enter_work_dir(void **state)
{
    char tmp[900], tmpl[1000];
    size_t len = sizeof tmp, start_len = sizeof start_dir;
    uv_fs_t req;
    (void)state;
    if (uv_cwd(start_dir, &start_len) != 0 || uv_os_tmpdir(tmp, &len) != 0)
        return -1;
    snprintf(tmpl, sizeof tmpl, "%s/sb-script-XXXXXX", tmp);
    if (uv_fs_mkdtemp(NULL, &req, tmpl, NULL) != 0)
        return -1;
    snprintf(work_dir, sizeof work_dir, "%s", req.path);
    uv_fs_req_cleanup(&req);
    return uv_chdir(work_dir) == 0 ? 0 : -1;
}

static int leave_work_dir(void **state)
{
    uv_fs_t req;
    (void)state;
    for (size_t i = 0; i < sizeof script_files / sizeof script_files[0]; i++)
        remove(script_files[i]);
    if (uv_chdir(start_dir) != 0)
        return -1;
    uv_fs_rmdir(NULL, &req, work_dir, NULL);
    uv_fs_req_cleanup(&req);
    return 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

/* Parses a config named ./lua-t.yaml (its scripts are read beside it)
 * whose route r has `steps`; NULL with the first error in err. */
static sb_config *load(const char *steps, char *err, size_t n)
{
    char text[4096];
    sb_config *cfg = NULL;
    sb_config_errors errs = {0};
    snprintf(text, sizeof text, "routes:\n  - name: r\n    from: dde/+/+/+\n    transform:\n%s",
             steps);
    if (sb_config_parse(&cfg, "./lua-t.yaml", text, strlen(text), &errs) != 0) {
        assert_true(errs.count >= 1);
        sb_config_error_format(&errs.items[0], err, n);
    }
    sb_config_errors_clear(&errs);
    return cfg;
}

static sb_transform *compile(const char *steps)
{
    char err[512];
    sb_config *cfg = load(steps, err, sizeof err);
    sb_transform *t = NULL;
    const sb_tnode *spec;
    if (cfg == NULL)
        fail_msg("%s", err);
    spec = cfg->routes[0].transform;
    assert_int_equal(sb_transform_compile(&t, &spec, 1, (const char *const *)cfg->routes[0].from,
                                          cfg->routes[0].from_count, NULL, NULL),
                     0);
    sb_config_free(cfg);
    return t;
}

static void expect_config_error(const char *steps, const char *want)
{
    char err[512];
    sb_config *cfg = load(steps, err, sizeof err);
    if (cfg != NULL)
        fail_msg("the config was accepted, want %s", want);
    if (strstr(err, want) == NULL)
        fail_msg("got %s, want %s", err, want);
}

static sb_message *msg(const char *topic, const char *payload)
{
    sb_message *m = sb_message_new(topic, payload, strlen(payload));
    assert_non_null(m);
    m->created_ms = 1700000000123;
    m->id = 42;
    return m;
}

static void test_step_splits_and_later_steps_run_on_each(void **state)
{
    sb_transform *t;
    sb_message *in = msg("dde/PLC/Line1/Batch", "23.5;24;25.25"), **out, *one;
    size_t count;
    char why[300];
    (void)state;
    write_file("lua-split.lua", "-- one reading per value\n"
                                "function transform(m)\n"
                                "  local out = {}\n"
                                "  for v in m.payload:gmatch('[^;]+') do\n"
                                "    out[#out + 1] = {payload = v}\n"
                                "  end\n"
                                "  return out\n"
                                "end\n");
    t = compile("      - lua: lua-split.lua\n"
                "      - parse: number\n"
                "      - json: { value: '{payload}', line: '{2|lower}' }\n"
                "      - topic: 'plant/{2|lower}/{3|lower}'\n");
    if (sb_transform_apply_all(t, in, &out, &count, why, sizeof why) != 0)
        fail_msg("%s", why);
    assert_int_equal(count, 3);
    for (size_t i = 0; i < count; i++) {
        static const char *const want[] = {"{\"value\":23.5,\"line\":\"line1\"}",
                                           "{\"value\":24,\"line\":\"line1\"}",
                                           "{\"value\":25.25,\"line\":\"line1\"}"};
        assert_string_equal(out[i]->topic, "plant/line1/batch");
        assert_int_equal(out[i]->payload_len, strlen(want[i]));
        assert_memory_equal(out[i]->payload, want[i], strlen(want[i]));
        assert_int_equal(out[i]->id, 42);
        sb_message_unref(out[i]);
    }
    sb_free(out);

    /* one of them fails a later step: the message fails, naming the step */
    sb_message_unref(in);
    in = msg("dde/PLC/Line1/Batch", "23.5;x;25");
    assert_int_equal(sb_transform_apply_all(t, in, &out, &count, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "step 2 (parse)"));
    /* and sb_transform_apply wants one */
    sb_message_unref(in);
    in = msg("dde/PLC/Line1/Batch", "1;2");
    assert_int_equal(sb_transform_apply(t, in, &one, why, sizeof why), SB_EINVAL);
    assert_null(one);
    assert_non_null(strstr(why, "made 2 messages"));
    /* nothing: not for this destination */
    sb_message_unref(in);
    in = msg("dde/PLC/Line1/Batch", "");
    assert_int_equal(sb_transform_apply_all(t, in, &out, &count, why, sizeof why),
                     SB_TRANSFORM_SKIP);
    sb_message_unref(in);
    sb_transform_free(t);
}

static void test_step_errors_name_the_script(void **state)
{
    sb_transform *t;
    sb_message *in = msg("dde/PLC/Line1/Temp", "1"), *out;
    char why[300];
    (void)state;
    write_file("lua-err.lua", "function transform(m)\n"
                              "  local v = tonumber(m.payload)\n"
                              "  if v > 0 then error('positive: ' .. v) end\n"
                              "  return {topic = 'bad/#'}\n"
                              "end\n");
    t = compile("      - header_set: { k: v }\n"
                "      - lua: { script: lua-err.lua, budget: 5000, memory: 256KiB }\n");
    assert_int_equal(sb_transform_apply(t, in, &out, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "step 2 (lua): ./lua-err.lua:3: positive: 1"));
    sb_message_unref(in);
    in = msg("dde/PLC/Line1/Temp", "-1");
    assert_int_equal(sb_transform_apply(t, in, &out, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "step 2 (lua): ./lua-err.lua: the topic \"bad/#\" is not valid"));
    sb_message_unref(in);
    sb_transform_free(t);
}

static void test_check_config_compiles_scripts(void **state)
{
    (void)state;
    write_file("lua-syntax.lua", "function transform(m)\n"
                                 "  return m +\n"
                                 "end\n");
    /* the YAML's position, and the script's own file and line */
    expect_config_error("      - lua: lua-syntax.lua\n",
                        "lua-t.yaml:5:14: routes[0].transform[0].lua: ./lua-syntax.lua:3: "
                        "unexpected symbol near 'end'");
    expect_config_error("      - lua: lua-missing.lua\n",
                        "lua-t.yaml:5:14: routes[0].transform[0].lua: cannot read the script "
                        "./lua-missing.lua");
    expect_config_error("      - lua: { script: lua-split.lua, budget: 10 }\n",
                        "routes[0].transform[0].lua.budget: instructions per call");
    expect_config_error("      - lua: { script: lua-split.lua, memory: 1KB }\n",
                        "routes[0].transform[0].lua.memory: a size from 64KiB");
    expect_config_error("      - lua: { script: lua-split.lua, fn: x }\n",
                        "routes[0].transform[0].lua.fn: unknown key");
    expect_config_error("      - lua: { budget: 10000 }\n", "needs script");
}

/* The config holds the script as it read it: a changed file makes a
 * different route (a reload takes it). */
static void test_config_holds_the_script(void **state)
{
    char err[512];
    sb_config *a, *b;
    (void)state;
    write_file("lua-v.lua", "function transform(m) return 'v1' end\n");
    a = load("      - lua: lua-v.lua\n", err, sizeof err);
    assert_non_null(a);
    write_file("lua-v.lua", "function transform(m) return 'v2' end\n");
    b = load("      - lua: lua-v.lua\n", err, sizeof err);
    assert_non_null(b);
    assert_false(sb_tnode_equal(a->routes[0].transform, b->routes[0].transform));
    {
        sb_tnode *c = sb_tnode_copy(b->routes[0].transform);
        assert_true(sb_tnode_equal(c, b->routes[0].transform));
        sb_tnode_free(c);
    }
    sb_config_free(a);
    sb_config_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unsafe_libraries_absent),
        cmocka_unit_test(test_os_call_is_an_error_with_its_line),
        cmocka_unit_test(test_bytecode_refused),
        cmocka_unit_test(test_errors_name_their_line),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_memory_limit),
        cmocka_unit_test(test_results),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_step_splits_and_later_steps_run_on_each),
        cmocka_unit_test(test_step_errors_name_the_script),
        cmocka_unit_test(test_check_config_compiles_scripts),
        cmocka_unit_test(test_config_holds_the_script),
    };
    if (sb_adapter_keys_register_builtin(NULL) != 0)
        return 1;
    return cmocka_run_group_tests(tests, enter_work_dir, leave_work_dir);
}
