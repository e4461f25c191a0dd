/*
 * Lua route scripts (service/script.h): a sandboxed Lua 5.4 state per
 * script, its allocator (the memory limit), its count hook (the
 * instruction budget), and the conversions of a message to a Lua table
 * and of what transform() returns back to messages.
 *
 * Everything that may allocate inside the state runs in protected mode
 * (lua_pcall of a C function): an allocation failure is then an error the
 * call returns, never Lua's panic (which would abort the broker).
 */
#include "service/script.h"

#include "service/alloc.h"
#include "service/error.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

/* The count hook runs every HOOK_PERIOD instructions (or every `budget`,
 * when smaller): the budget is spent in such periods, and the hook notes
 * where the script is, for a memory error's line. */
#define HOOK_PERIOD 1000

struct sb_script {
    lua_State *L;
    char *name;
    int64_t budget;
    int period;
    int count;     /* the hook's count now: period, or 1 to check memory */
    size_t memory; /* the limit */
    size_t used;   /* bytes the state holds */
    int64_t spent; /* instructions of this call, counted by the hook */
    int killed;    /* the budget is spent: every pcall in the script rethrows */
    int past;      /* the state grew past the limit: the hook checks */
    int over;      /* an allocation was refused: far past the limit */
    int oom;       /* an allocation failed: the process is out of memory */
    int line;      /* where the hook last saw the script, 0: not yet */
    char kill_msg[160];
};

void sb_script_msg_release(sb_script_msg *m)
{
    sb_free(m->topic);
    sb_free(m->payload);
    for (size_t i = 0; i < m->nh; i++) {
        sb_free(m->h[i].key);
        sb_free(m->h[i].value);
    }
    sb_free(m->h);
    memset(m, 0, sizeof *m);
}

/* ---- the sandbox ---- */

static void hook(lua_State *L, lua_Debug *ar);

/* The memory limit. An allocation that takes the state past it succeeds
 * and has the hook run at the next instruction, which collects garbage and
 * stops the script there (its line) if that did not bring it back under
 * the limit: the allocator cannot raise an error itself, and a refused
 * allocation unwinds the script without saying where it was. Only one
 * that would take it past half as much again is refused. */
static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sb_script *s = ud;
    size_t old = ptr != NULL ? osize : 0; /* without a block, osize is its kind */
    void *p;

    if (nsize == 0) {
        sb_free(ptr);
        s->used -= old;
        return NULL;
    }
    if (nsize > old && s->used + (nsize - old) > s->memory) {
        if (s->used + (nsize - old) > s->memory + s->memory / 2) {
            s->over = 1;
            return NULL;
        }
        if (!s->past && s->L != NULL) {
            s->past = 1;
            s->count = 1;
            lua_sethook(s->L, hook, LUA_MASKCOUNT, 1); /* safe anywhere, even in a signal */
        }
    }
    p = sb_realloc(ptr, nsize);
    if (p == NULL) {
        if (nsize <= old)
            return ptr; /* a shrink that failed: the block is still big enough */
        s->oom = 1;
        return NULL;
    }
    s->used = s->used - old + nsize;
    return p;
}

static sb_script *script_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

static void hook(lua_State *L, lua_Debug *ar)
{
    sb_script *s = script_of(L);
    s->spent += s->count;
    if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
        s->line = ar->currentline;
    if (s->count != s->period) {
        s->count = s->period;
        lua_sethook(L, hook, LUA_MASKCOUNT, s->period);
    }
    if (s->past) {
        s->past = 0;
        lua_gc(L, LUA_GCCOLLECT, 0);
        if (s->used > s->memory) {
            /* not luaL_error: it would name the caller's line */
            lua_pushfstring(L, "%s:%d: memory limit of %I bytes exceeded", ar->short_src,
                            ar->currentline, (lua_Integer)s->memory);
            lua_error(L);
        }
    }
    if (s->spent < s->budget && !s->killed)
        return;
    if (!s->killed) {
        s->killed = 1;
        snprintf(s->kill_msg, sizeof s->kill_msg, "%s:%d: instruction budget of %lld exceeded",
                 ar->short_src, ar->currentline, (long long)s->budget);
    }
    lua_pushstring(L, s->kill_msg);
    lua_error(L);
}

/* pcall and xpcall, but an exhausted budget is not theirs to catch (a
 * loop around a pcall would never end). */
static int guarded_pcall(lua_State *L)
{
    sb_script *s = script_of(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    if (s->killed) {
        lua_pushstring(L, s->kill_msg);
        return lua_error(L);
    }
    return lua_gettop(L);
}

static void guard(lua_State *L, const char *name)
{
    lua_getglobal(L, name);
    lua_pushcclosure(L, guarded_pcall, 1);
    lua_setglobal(L, name);
}

static int open_libs(lua_State *L)
{
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8}, {NULL, NULL}};
    /* Files, code from strings or bytecode, the collector and stdout. */
    static const char *const unsafe[] = {"dofile",         "loadfile", "load",
                                         "collectgarbage", "print",    NULL};
    for (const luaL_Reg *l = libs; l->name != NULL; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    for (size_t i = 0; unsafe[i] != NULL; i++) {
        lua_pushnil(L);
        lua_setglobal(L, unsafe[i]);
    }
    lua_getglobal(L, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    guard(L, "pcall");
    guard(L, "xpcall");
    return 0;
}

/* The message handler: errors raised in a library function have no
 * position; they get the line of the script that called it. */
static int msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    lua_Debug ar;
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        size_t k;
        if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0)
            continue;
        k = strlen(ar.short_src);
        if (strncmp(msg, ar.short_src, k) != 0 || msg[k] != ':')
            lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, msg);
        break;
    }
    return 1;
}

/* A new call: the budget starts again. */
static void arm(sb_script *s)
{
    s->spent = 0;
    s->killed = 0;
    s->past = 0;
    s->over = 0;
    s->count = s->period;
    s->oom = 0;
    s->line = 0;
    lua_sethook(s->L, hook, LUA_MASKCOUNT, s->period); /* resets the count */
}

/* Runs f(ud) protected, with the message handler. Returns 0, SB_ENOMEM
 * or SB_EINVAL with why. */
static int protected_call(sb_script *s, lua_CFunction f, void *ud, int *oom, char *why, size_t n)
{
    lua_State *L = s->L;
    int status;

    lua_settop(L, 0);
    lua_pushcfunction(L, msgh);
    lua_pushcfunction(L, f);
    lua_pushlightuserdata(L, ud);
    status = lua_pcall(L, 1, 0, 1);
    if (status == LUA_OK) {
        lua_settop(L, 0);
        return 0;
    }
    if (s->oom || (oom != NULL && *oom)) {
        lua_settop(L, 0);
        snprintf(why, n, "out of memory");
        return SB_ENOMEM;
    }
    if (status == LUA_ERRMEM || (status == LUA_ERRERR && s->over)) {
        if (s->line > 0)
            snprintf(why, n, "%s:%d: memory limit of %zu bytes exceeded", s->name, s->line,
                     s->memory);
        else
            snprintf(why, n, "%s: memory limit of %zu bytes exceeded", s->name, s->memory);
    } else {
        const char *msg = lua_tostring(L, -1);
        snprintf(why, n, "%s", msg != NULL ? msg : "error");
    }
    lua_settop(L, 0);
    return SB_EINVAL;
}

/* ---- compiling ---- */

typedef struct load_ctx {
    sb_script *s;
    const char *src;
    size_t len;
} load_ctx;

static int do_load(lua_State *L)
{
    load_ctx *c = lua_touserdata(L, 1);
    char chunkname[512];
    snprintf(chunkname, sizeof chunkname, "@%s", c->s->name);
    /* "t": text only, never precompiled bytecode (which can break the VM) */
    if (luaL_loadbufferx(L, c->src, c->len, chunkname, "t") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 0);
    if (lua_getglobal(L, "transform") != LUA_TFUNCTION)
        return luaL_error(L, "%s: defines no function transform(msg)", c->s->name);
    return 0;
}

static int do_open(lua_State *L)
{
    return open_libs(L);
}

int sb_script_new(sb_script **out, const char *name, const char *src, size_t len, int64_t budget,
                  size_t memory, char *why, size_t n)
{
    sb_script *s = sb_calloc(1, sizeof *s);
    load_ctx lc;
    int rc;

    *out = NULL;
    if (n > 0)
        why[0] = '\0';
    if (s == NULL || (s->name = sb_strdup(name)) == NULL) {
        sb_free(s);
        snprintf(why, n, "out of memory");
        return SB_ENOMEM;
    }
    s->budget = budget > 0 ? budget : 1;
    s->period = s->budget < HOOK_PERIOD ? (int)s->budget : HOOK_PERIOD;
    s->memory = memory;
    s->L = lua_newstate(l_alloc, s);
    if (s->L == NULL) {
        rc = s->oom ? SB_ENOMEM : SB_EINVAL;
        snprintf(why, n,
                 rc == SB_ENOMEM ? "out of memory" : "%s: memory limit of %zu bytes is too small",
                 name, memory);
        sb_script_free(s);
        return rc;
    }
    /* Each call leaves its message's tables and strings behind, young
     * garbage the generational collector takes cheaply. */
    lua_gc(s->L, LUA_GCGEN, 0, 0);
    arm(s);
    rc = protected_call(s, do_open, NULL, NULL, why, n);
    if (rc == 0) {
        lc.s = s;
        lc.src = src;
        lc.len = len;
        arm(s);
        rc = protected_call(s, do_load, &lc, NULL, why, n);
    }
    if (rc != 0) {
        sb_script_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void sb_script_free(sb_script *s)
{
    if (s == NULL)
        return;
    if (s->L != NULL) {
        arm(s); /* finalizers the script set run on a budget too */
        lua_close(s->L);
    }
    sb_free(s->name);
    sb_free(s);
}

/* ---- calling ---- */

typedef struct call_ctx {
    sb_script *s;
    const sb_script_msg *in;
    int64_t ts;
    sb_script_msg *out;
    size_t count; /* filled entries of out */
    size_t bytes; /* the topics and payloads of out, within the memory limit */
    int oom;
} call_ctx;

static void push_msg(lua_State *L, const sb_script_msg *m, int64_t ts)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, m->topic);
    lua_setfield(L, -2, "topic");
    lua_pushlstring(L, (const char *)m->payload, m->len);
    lua_setfield(L, -2, "payload");
    lua_createtable(L, 0, (int)m->nh);
    for (size_t i = 0; i < m->nh; i++) {
        lua_pushstring(L, m->h[i].value);
        lua_setfield(L, -2, m->h[i].key);
    }
    lua_setfield(L, -2, "headers");
    lua_pushinteger(L, (lua_Integer)ts);
    lua_setfield(L, -2, "ts");
}

static int nomem(lua_State *L, call_ctx *c)
{
    c->oom = 1;
    return luaL_error(L, "out of memory");
}

/* A copy of the string at idx (a string or a number) without NULs when
 * text is set; NULL: not one (the caller raises the error). */
static char *copy_value(lua_State *L, call_ctx *c, int idx, int text, size_t *len)
{
    const char *v;
    char *p;
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        return NULL;
    v = lua_tolstring(L, idx, len);
    if (text && strlen(v) != *len)
        return NULL;
    p = sb_malloc(*len + 1);
    if (p == NULL) {
        nomem(L, c);
        return NULL;
    }
    memcpy(p, v, *len);
    p[*len] = '\0';
    return p;
}

static char *dup_or_die(lua_State *L, call_ctx *c, const char *s)
{
    char *p = sb_strdup(s);
    if (p == NULL)
        nomem(L, c);
    return p;
}

/* The copies of a call's results live outside the state: a split of a
 * large payload into many parts must not take the memory the limit denies
 * the script. */
static void count_bytes(lua_State *L, call_ctx *c, const sb_script_msg *m)
{
    c->bytes += m->len + strlen(m->topic);
    if (c->bytes > c->s->memory)
        luaL_error(L, "%s: the messages returned hold more than the memory limit (%I bytes)",
                   c->s->name, (lua_Integer)c->s->memory);
}

/* The value at idx (a message table or a string) into c->out[c->count]. */
static void to_msg(lua_State *L, call_ctx *c, int idx, const char *what)
{
    const sb_script_msg *in = c->in;
    sb_script_msg *m = &c->out[c->count++];
    const char *name = c->s->name;
    size_t len;

    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER) {
        m->payload = (unsigned char *)copy_value(L, c, idx, 0, &m->len);
        m->topic = dup_or_die(L, c, in->topic);
        count_bytes(L, c, m);
        goto headers_in; /* the input's */
    }
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: %s is a %s (expected a message table, a string or nil)", name, what,
                   luaL_typename(L, idx));

    lua_getfield(L, idx, "topic");
    if (lua_isnil(L, -1))
        m->topic = dup_or_die(L, c, in->topic);
    else if (lua_type(L, -1) != LUA_TSTRING || (m->topic = copy_value(L, c, -1, 1, &len)) == NULL)
        luaL_error(L, "%s: %s.topic is not text", name, what);
    lua_pop(L, 1);

    lua_getfield(L, idx, "payload");
    if (lua_isnil(L, -1)) {
        if ((m->payload = sb_malloc(in->len + 1)) == NULL)
            nomem(L, c);
        if (in->len > 0)
            memcpy(m->payload, in->payload, in->len);
        m->len = in->len;
    } else if ((m->payload = (unsigned char *)copy_value(L, c, -1, 0, &m->len)) == NULL) {
        luaL_error(L, "%s: %s.payload is a %s (expected a string)", name, what,
                   luaL_typename(L, -1));
    }
    lua_pop(L, 1);

    count_bytes(L, c, m);

    lua_getfield(L, idx, "headers");
    if (!lua_isnil(L, -1)) {
        int h = lua_gettop(L);
        size_t cap = 0;
        if (!lua_istable(L, h))
            luaL_error(L, "%s: %s.headers is a %s (expected a table)", name, what,
                       luaL_typename(L, h));
        lua_pushnil(L);
        while (lua_next(L, h) != 0) {
            sb_header *e;
            size_t klen = 0, vlen;
            if (m->nh == cap) {
                size_t ncap = cap ? 2 * cap : 4;
                sb_header *nh = sb_realloc(m->h, ncap * sizeof *nh);
                if (nh == NULL)
                    nomem(L, c);
                m->h = nh;
                cap = ncap;
            }
            /* counted first: an error frees what is filled in */
            e = &m->h[m->nh++];
            e->key = e->value = NULL;
            if (lua_type(L, -2) == LUA_TSTRING)
                e->key = copy_value(L, c, -2, 1, &klen);
            if (e->key == NULL || klen == 0)
                luaL_error(L, "%s: %s.headers has a key that is not a name", name, what);
            if ((e->value = copy_value(L, c, -1, 1, &vlen)) == NULL)
                luaL_error(L, "%s: %s.headers[\"%s\"] is not text", name, what, e->key);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
headers_in:
    if (in->nh > 0 && (m->h = sb_calloc(in->nh, sizeof *m->h)) == NULL)
        nomem(L, c);
    for (size_t i = 0; i < in->nh; i++) {
        m->h[i].key = dup_or_die(L, c, in->h[i].key);
        m->nh++;
        m->h[i].value = dup_or_die(L, c, in->h[i].value);
    }
}

static int do_call(lua_State *L)
{
    call_ctx *c = lua_touserdata(L, 1);
    size_t n;
    int t;

    lua_settop(L, 0);
    if (lua_getglobal(L, "transform") != LUA_TFUNCTION)
        return luaL_error(L, "%s: transform is no longer a function", c->s->name);
    push_msg(L, c->in, c->ts);
    lua_call(L, 1, 1);
    t = lua_type(L, 1);
    if (t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, 1)))
        return 0;
    if (t == LUA_TTABLE && lua_rawgeti(L, 1, 1) != LUA_TNIL) {
        /* a list of messages */
        lua_pop(L, 1);
        n = (size_t)lua_rawlen(L, 1);
        if (n > SB_SCRIPT_MAX_OUTPUTS)
            return luaL_error(L, "%s: transform returned %d messages (at most %d)", c->s->name,
                              (int)n, SB_SCRIPT_MAX_OUTPUTS);
        if ((c->out = sb_calloc(n, sizeof *c->out)) == NULL)
            return nomem(L, c);
        for (size_t i = 1; i <= n; i++) {
            char what[48];
            snprintf(what, sizeof what, "message %zu of the result", i);
            lua_rawgeti(L, 1, (lua_Integer)i);
            to_msg(L, c, -1, what);
            lua_pop(L, 1);
        }
        return 0;
    }
    if (t == LUA_TTABLE) {
        lua_pop(L, 1); /* the nil of [1] */
        lua_pushnil(L);
        if (lua_next(L, 1) == 0)
            return 0; /* {}: an empty list */
        lua_pop(L, 2);
    }
    if ((c->out = sb_calloc(1, sizeof *c->out)) == NULL)
        return nomem(L, c);
    to_msg(L, c, 1, "the result");
    return 0;
}

int sb_script_call(sb_script *s, const sb_script_msg *in, int64_t ts, sb_script_msg **out,
                   size_t *count, char *why, size_t n)
{
    call_ctx c = {.s = s, .in = in, .ts = ts};
    int rc;

    *out = NULL;
    *count = 0;
    if (n > 0)
        why[0] = '\0';
    arm(s);
    rc = protected_call(s, do_call, &c, &c.oom, why, n);
    if (rc != 0) {
        for (size_t i = 0; i < c.count; i++)
            sb_script_msg_release(&c.out[i]);
        sb_free(c.out);
        return rc;
    }
    *out = c.out;
    *count = c.count;
    return 0;
}
