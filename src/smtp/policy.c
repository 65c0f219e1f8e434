/* policy.c — builds one policy generation: a fresh lua_State, the handler
 * script run in its own environment, the handler validated (hook names,
 * callable values, options, mechanism names), the mechanism registry, and
 * the effective options. Owns the generation's coroutine pool. Must not run
 * per-session hooks. */
#include "policy.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "embedded.h"
#include "log.h"
#include "lua_bind.h"
#include "lua_vm.h"

#include <luajit.h>
#include <time.h>

const char *const policy_hook_names[HOOK_COUNT] = {
    "handle_HELO", "handle_EHLO",     "handle_MAIL",     "handle_RCPT",     "handle_DATA",
    "handle_RSET", "handle_QUIT",     "handle_NOOP",     "handle_VRFY",     "handle_STARTTLS",
    "handle_PROXY", "handle_AUTH",    "handle_exception", "authenticator",
};

static unsigned next_generation = 1;

double policy_load_timeout = 5.0;
const char *const *policy_script_args;
int policy_n_script_args;

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = "(error object is not a string)";
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static void fail(char *err, size_t errlen, const char *script, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(char *err, size_t errlen, const char *script, const char *fmt, ...)
{
    int n = snprintf(err, errlen, "%s: ", script);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < errlen) vsnprintf(err + n, errlen - n, fmt, ap);
    va_end(ap);
}

/* "file:line" of a Lua function, for messages about handler entries. */
static void function_position(lua_State *L, int idx, char *out, size_t outlen)
{
    lua_Debug ar;
    lua_pushvalue(L, idx);
    if (lua_getinfo(L, ">S", &ar) && ar.currentline != 0)
        snprintf(out, outlen, "%s:%d", ar.short_src, ar.linedefined);
    else snprintf(out, outlen, "?");
}

#define DEFINITION_LINES_KEY "smtpd.definition_lines"

/* __newindex of the script's environment while it loads: remembers the line
 * of each top-level assignment, so errors about `options` or a handler entry
 * can say file:line. */
static int record_definition(lua_State *L)
{
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar) && ar.currentline > 0 &&
        lua_type(L, 2) == LUA_TSTRING) {
        lua_getfield(L, LUA_REGISTRYINDEX, DEFINITION_LINES_KEY);
        lua_pushvalue(L, 2);
        lua_pushinteger(L, ar.currentline);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 0;
}

/* "file:line" where key was assigned at top level, else just the file. */
static void definition_position(struct policy *p, const char *key, char *out, size_t outlen)
{
    lua_State *L = p->vm.L;
    lua_getfield(L, LUA_REGISTRYINDEX, DEFINITION_LINES_KEY);
    int line = 0;
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, key);
        line = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (line > 0) snprintf(out, outlen, "%s:%d", p->script_name, line);
    else snprintf(out, outlen, "%s", p->script_name);
}

static int find_hook(const char *key)
{
    for (int i = 0; i < HOOK_COUNT; i++)
        if (!strcmp(policy_hook_names[i], key)) return i;
    return -1;
}

static int mechanism_cmp(const void *a, const void *b)
{
    return strcmp(((const struct mechanism *)a)->name, ((const struct mechanism *)b)->name);
}

/* Adds or replaces a mechanism; the function is on top of the stack and is
 * popped. */
static bool add_mechanism(struct policy *p, const char *name, bool builtin)
{
    lua_State *L = p->vm.L;
    for (size_t i = 0; i < p->n_mechs; i++) {
        if (!strcmp(p->mechs[i].name, name)) { /* a handler entry replaces a built-in */
            luaL_unref(L, LUA_REGISTRYINDEX, p->mechs[i].ref);
            p->mechs[i].ref = luaL_ref(L, LUA_REGISTRYINDEX);
            p->mechs[i].builtin = builtin;
            p->mechs[i].needs = MECH_NEEDS_NOTHING;
            snprintf(p->mechs[i].label, sizeof p->mechs[i].label, "mechanism %s%s", name,
                     builtin ? " (built-in)" : "");
            return true;
        }
    }
    struct mechanism *m = realloc(p->mechs, (p->n_mechs + 1) * sizeof *m);
    if (!m) {
        lua_pop(L, 1);
        return false;
    }
    p->mechs = m;
    m = &p->mechs[p->n_mechs++];
    snprintf(m->name, sizeof m->name, "%s", name);
    m->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    m->builtin = builtin;
    m->needs = MECH_NEEDS_NOTHING;
    snprintf(m->label, sizeof m->label, "mechanism %s%s", name, builtin ? " (built-in)" : "");
    return true;
}

/* The mechanism name of handler entry `key` (function at idx): the name
 * given to smtpd.auth_mechanism(), else the key after "auth_" with "__"
 * standing for "-", upper-cased (aiosmtpd's rule). */
static bool mechanism_name_for(lua_State *L, const char *key, int idx, char *name, size_t cap)
{
    lbind_push_mechanism_name(L, idx);
    if (lua_type(L, -1) == LUA_TSTRING) {
        snprintf(name, cap, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return true;
    }
    lua_pop(L, 1);
    size_t o = 0;
    for (const char *k = key + strlen("auth_"); *k; k++) {
        if (o + 1 >= cap) return false;
        if (k[0] == '_' && k[1] == '_') {
            name[o++] = '-';
            k++;
        } else name[o++] = (char)toupper((unsigned char)*k);
    }
    name[o] = '\0';
    if (o == 0) return false;
    for (size_t i = 0; i < o; i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static bool load_builtin_mechanisms(struct policy *p, char *err, size_t errlen)
{
    lua_State *L = p->vm.L;
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd.mechanisms");
    if (lua_pcall(L, 1, 1, -3)) {
        fail(err, errlen, "smtpd.mechanisms", "%s", lua_tostring(L, -1));
        return false;
    }
    static const char *const builtins[] = {"LOGIN", "PLAIN"};
    for (size_t i = 0; i < 2; i++) {
        lua_getfield(L, -1, builtins[i]);
        if (!add_mechanism(p, builtins[i], true)) return false;
    }
    lua_pop(L, 2);
    return true;
}

/* auth_fail_store: the functions of smtpd.auth_fail_store, and the URL
 * checked by its parser now rather than on the first failure. */
static bool load_fail_store(struct policy *p, char *err, size_t errlen)
{
    lua_State *L = p->vm.L;
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd.auth_fail_store");
    if (lua_pcall(L, 1, 1, -3)) {
        fail(err, errlen, "smtpd.auth_fail_store", "%s", lua_tostring(L, -1));
        return false;
    }
    int m = lua_gettop(L);
    lua_getfield(L, m, "parse");
    lua_pushstring(L, p->opt.auth_fail_store);
    lua_call(L, 1, 2);
    if (lua_isnil(L, -2)) {
        fail(err, errlen, "command line", "option 'auth_fail_store': %s", lua_tostring(L, -1));
        return false;
    }
    lua_pop(L, 2);
    lua_getfield(L, m, "over");
    p->fail_store_over_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, m, "failed");
    p->fail_store_failed_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    return true;
}

/* Validates the handler table at the top of the stack and records its hooks,
 * mechanisms and options. */
static bool read_handler(struct policy *p, char *err, size_t errlen)
{
    lua_State *L = p->vm.L;
    int handler = lua_gettop(L);
    const char *script = p->script_name;
    lua_pushnil(L);
    while (lua_next(L, handler)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 1);
            continue;
        }
        const char *key = lua_tostring(L, -2);
        bool is_hook_name = !strncmp(key, "handle_", 7) || !strcmp(key, "authenticator");
        bool is_mech = !strncmp(key, "auth_", 5);
        if (is_hook_name || is_mech) {
            if (lua_type(L, -1) != LUA_TFUNCTION) {
                char pos[300];
                definition_position(p, key, pos, sizeof pos);
                fail(err, errlen, pos, "handler entry '%s' must be a function, got %s", key,
                     luaL_typename(L, -1));
                return false;
            }
        }
        if (is_hook_name) {
            int h = find_hook(key);
            if (h < 0) {
                char pos[256];
                function_position(L, -1, pos, sizeof pos);
                fail(err, errlen, script, "unknown hook '%s' (defined at %s)", key, pos);
                return false;
            }
            lua_pushvalue(L, -1);
            p->hook_ref[h] = luaL_ref(L, LUA_REGISTRYINDEX);
        } else if (is_mech) {
            char name[MECHANISM_NAME_MAX];
            if (!mechanism_name_for(L, key, -1, name, sizeof name)) {
                fail(err, errlen, script, "Invalid AUTH mechanism name in handler entry '%s'", key);
                return false;
            }
            lua_pushvalue(L, -1);
            if (!add_mechanism(p, name, false)) return false;
        } else if (!strcmp(key, "options")) {
            char pos[300];
            definition_position(p, "options", pos, sizeof pos);
            if (lua_type(L, -1) != LUA_TTABLE) {
                fail(err, errlen, pos, "'options' must be a table, got %s", luaL_typename(L, -1));
                return false;
            }
            int opts = lua_gettop(L);
            lua_pushnil(L);
            while (lua_next(L, opts)) {
                if (lua_type(L, -2) != LUA_TSTRING) {
                    fail(err, errlen, pos, "option names must be strings");
                    return false;
                }
                char msg[256];
                if (!options_set_lua(&p->opt, lua_tostring(L, -2), L, -1, msg, sizeof msg)) {
                    fail(err, errlen, pos, "%s", msg);
                    return false;
                }
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    return true;
}

/* The mechanisms of lua/smtpd/mechanisms/, offered only when
 * auth_mechanisms names them (mechanisms.md 2). */
static const struct shipped_mechanism {
    const char *name, *module;
    enum mechanism_needs needs;
} shipped_mechanisms[] = {
    {"CRAM-MD5", "smtpd.mechanisms.cram_md5", MECH_NEEDS_NOTHING},
    {"SCRAM-SHA-1", "smtpd.mechanisms.scram", MECH_NEEDS_NOTHING},
    {"SCRAM-SHA-1-PLUS", "smtpd.mechanisms.scram", MECH_NEEDS_BINDING},
    {"SCRAM-SHA-256", "smtpd.mechanisms.scram", MECH_NEEDS_NOTHING},
    {"SCRAM-SHA-256-PLUS", "smtpd.mechanisms.scram", MECH_NEEDS_BINDING},
    {"XOAUTH2", "smtpd.mechanisms.oauth", MECH_NEEDS_NOTHING},
    {"OAUTHBEARER", "smtpd.mechanisms.oauth", MECH_NEEDS_NOTHING},
    {"EXTERNAL", "smtpd.mechanisms.external", MECH_NEEDS_PEERCERT},
};

static const struct shipped_mechanism *find_shipped(const char *name)
{
    for (size_t i = 0; i < sizeof shipped_mechanisms / sizeof shipped_mechanisms[0]; i++)
        if (!strcmp(shipped_mechanisms[i].name, name)) return &shipped_mechanisms[i];
    return NULL;
}

/* Pushes module[name] of a shipped mechanism; false with err on failure. */
static bool push_shipped(struct policy *p, const struct shipped_mechanism *sm, char *err,
                         size_t errlen)
{
    lua_State *L = p->vm.L;
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushstring(L, sm->module);
    if (lua_pcall(L, 1, 1, -3)) {
        fail(err, errlen, sm->module, "%s", lua_tostring(L, -1));
        return false;
    }
    lua_getfield(L, -1, sm->name);
    lua_replace(L, -3);
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TFUNCTION) {
        fail(err, errlen, sm->module, "has no mechanism %s", sm->name);
        return false;
    }
    return true;
}

/* auth_mechanisms given: exactly those names, in its order, each the
 * script's auth_NAME, else built-in PLAIN/LOGIN, else a shipped module. */
static bool select_mechanisms(struct policy *p, char *err, size_t errlen)
{
    const struct name_list *want = &p->opt.auth_mechanisms;
    lua_State *L = p->vm.L;
    struct mechanism *out = calloc(want->n + 1, sizeof *out);
    if (!out) {
        fail(err, errlen, p->script_name, "out of memory");
        return false;
    }
    size_t n = 0;
    for (size_t i = 0; i < want->n; i++) {
        const char *name = want->names[i];
        bool dup = false;
        for (size_t k = 0; k < n; k++) dup = dup || !strcmp(out[k].name, name);
        if (dup || options_mechanism_excluded(&p->opt, name)) continue;
        size_t j = 0;
        while (j < p->n_mechs && strcmp(p->mechs[j].name, name)) j++;
        if (j < p->n_mechs) {
            out[n++] = p->mechs[j];
            p->mechs[j].ref = LUA_NOREF; /* moved */
            continue;
        }
        const struct shipped_mechanism *sm = find_shipped(name);
        if (!sm) {
            fail(err, errlen, p->script_name,
                 "option 'auth_mechanisms': unknown mechanism '%s' (neither shipped with luasmtpd "
                 "nor defined by the script)", name);
            goto failed;
        }
        if (!push_shipped(p, sm, err, errlen)) goto failed;
        struct mechanism *m = &out[n++];
        snprintf(m->name, sizeof m->name, "%s", name);
        m->ref = luaL_ref(L, LUA_REGISTRYINDEX);
        m->builtin = true;
        m->needs = sm->needs;
        snprintf(m->label, sizeof m->label, "mechanism %s (built-in)", name);
    }
    for (size_t j = 0; j < p->n_mechs; j++) luaL_unref(L, LUA_REGISTRYINDEX, p->mechs[j].ref);
    free(p->mechs);
    p->mechs = out;
    p->n_mechs = n;
    return true;
failed:
    for (size_t k = 0; k < n; k++) luaL_unref(L, LUA_REGISTRYINDEX, out[k].ref);
    free(out);
    return false;
}

static void apply_exclusions_and_sort(struct policy *p)
{
    size_t o = 0;
    for (size_t i = 0; i < p->n_mechs; i++) {
        if (options_mechanism_excluded(&p->opt, p->mechs[i].name))
            luaL_unref(p->vm.L, LUA_REGISTRYINDEX, p->mechs[i].ref);
        else p->mechs[o++] = p->mechs[i];
    }
    p->n_mechs = o;
    qsort(p->mechs, p->n_mechs, sizeof *p->mechs, mechanism_cmp);
}

/* Lets a script `require` modules that sit beside it. */
static void add_script_dir_to_path(lua_State *L, const char *path)
{
    const char *slash = strrchr(path, '/');
    lua_getglobal(L, "package");
    if (slash) lua_pushlstring(L, path, (size_t)(slash - path) + 1);
    else lua_pushliteral(L, "./");
    lua_pushliteral(L, "?.lua;");
    lua_getfield(L, -3, "path");
    lua_concat(L, 3);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

static bool run_script(struct policy *p, const char *path, const char *src, size_t len,
                       char *err, size_t errlen)
{
    lua_State *L = p->vm.L;
    int status;
    if (path) {
        add_script_dir_to_path(L, path);
        /* "@path": errors and tracebacks name the file, as luaL_loadfile's
         * would (LuaJIT's lexer skips a "#!" line and a BOM either way). */
        char chunkname[PATH_MAX + 2];
        snprintf(chunkname, sizeof chunkname, "@%s", path);
        status = luaL_loadbuffer(L, src, len, chunkname);
    } else {
        const struct embedded_file *f = embedded_files;
        while (f->name && strcmp(f->name, "smtpd.default")) f++;
        status = f->name ? luaL_loadbuffer(L, f->data, f->size, "@scripts/default.lua") : 1;
        if (!f->name) lua_pushliteral(L, "default handler not embedded");
    }
    if (status) {
        /* luaL_loadfile's message already reads "file:line: message", or
         * "cannot open file" for a missing one. */
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        return false;
    }
    /* The script runs in its own environment; reads fall back to globals,
     * and top-level assignments are noted with their line while it loads. */
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, DEFINITION_LINES_KEY);
    lua_newtable(L);
    lua_createtable(L, 0, 2);
    lua_pushvalue(L, LUA_GLOBALSINDEX);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, record_definition);
    lua_setfield(L, -2, "__newindex");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_insert(L, -3);    /* env, chunk, env */
    lua_setfenv(L, -2);   /* env, chunk */
    lua_pushcfunction(L, traceback);
    lua_insert(L, -2);    /* env, traceback, chunk */
    /* A top level that never returns must not hang start-up or a reload:
     * interpret it with a count hook checking a deadline. */
    if (!lua_checkstack(L, policy_n_script_args)) {
        fail(err, errlen, p->script_name, "too many handler arguments");
        return false;
    }
    for (int i = 0; i < policy_n_script_args; i++) lua_pushstring(L, policy_script_args[i]);
    int rc = vm_pcall_with_budget(&p->vm, policy_n_script_args, 1, -2 - policy_n_script_args, policy_load_timeout);
    if (rc) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        return false;
    }
    lua_remove(L, -2); /* env, result */
    /* Loading is over: later global assignments from hooks go straight in. */
    lua_getmetatable(L, -2);
    lua_pushnil(L);
    lua_setfield(L, -2, "__newindex");
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TTABLE) lua_remove(L, -2); /* form 2: the returned table */
    else if (lua_isnil(L, -1)) lua_pop(L, 1);              /* form 1: the globals it defined */
    else {
        fail(err, errlen, p->script_name, "the script must return a table or nothing, got %s",
             luaL_typename(L, -1));
        return false;
    }
    return true;
}

char *policy_read_script(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    bool failed = ferror(f);
    fclose(f);
    if (!buf || failed) {
        snprintf(err, errlen, "cannot read %s: %s", path, buf ? strerror(errno) : "out of memory");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The vm's hold/release: a timer's run keeps its generation. */
static void policy_hold_owner(void *owner) { policy_hold(owner); }
static void policy_release_owner(void *owner) { policy_release(owner); }

struct policy *policy_load(const char *path, const struct policy_inputs *in, char *err,
                           size_t errlen)
{
    if (!path) return policy_load_source(NULL, NULL, 0, in, err, errlen);
    size_t len;
    char *src = policy_read_script(path, &len, err, errlen);
    if (!src) return NULL;
    struct policy *p = policy_load_source(path, src, len, in, err, errlen);
    free(src);
    return p;
}

struct policy *policy_load_source(const char *path, const char *src, size_t len,
                                  const struct policy_inputs *in, char *err, size_t errlen)
{
    struct policy *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->refcount = 1;
    p->script_name = strdup(path ? path : "(default handler)");
    for (int i = 0; i < HOOK_COUNT; i++) p->hook_ref[i] = LUA_NOREF;
    p->fail_store_over_ref = p->fail_store_failed_ref = LUA_NOREF;
    options_init_defaults(&p->opt);
    if (!p->script_name) {
        snprintf(err, errlen, "out of memory");
        goto failed;
    }
    if (!vm_open(&p->vm, err, errlen)) goto failed;
    p->vm.owner = p;
    p->vm.hold = policy_hold_owner;
    p->vm.release = policy_release_owner;
    /* The script's options are read after its top level ran: timers made
     * there count against the default. */
    p->vm.max_timers = p->opt.max_timers;
    lua_State *L = p->vm.L;
    /* Make the smtpd module's metatables exist even if the script never
     * requires it: mechanisms and results are checked against them. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd");
    lua_call(L, 1, 0);
    if (in->register_classes) in->register_classes(L);

    if (!load_builtin_mechanisms(p, err, errlen)) goto failed;
    if (!run_script(p, path, src, len, err, errlen)) goto failed;
    if (!read_handler(p, err, errlen)) goto failed;
    lua_settop(L, 0);
    for (size_t i = 0; i < in->n_ov; i++) {
        char msg[256];
        const struct option_override *ov = in->ov;
        if (!options_set_string(&p->opt, ov[i].name, ov[i].value, msg, sizeof msg)) {
            fail(err, errlen, "command line", "%s", msg);
            goto failed;
        }
    }
    if (!options_finalize(&p->opt, err, errlen)) goto failed;
    if (p->opt.auth_fail_store && !load_fail_store(p, err, errlen)) goto failed;
    p->vm.heap_limit = (size_t)p->opt.lua_memory_limit * 1024 * 1024;
    p->vm.hook_timeout = p->opt.hook_timeout;
    p->vm.resolver = p->opt.resolver;
    p->vm.resolver_timeout = p->opt.resolver_timeout;
    p->vm.resolver_cache_size = p->opt.resolver_cache_size;
    p->vm.max_timers = p->opt.max_timers;
    p->vm.thread_pool.threads = (int)p->opt.thread_pool_size;
    p->vm.thread_pool.queue = (int)p->opt.thread_pool_queue;
    p->vm.crypt_max_cost = p->opt.crypt_max_cost;
    p->vm.socket_line_max = (size_t)p->opt.socket_line_max;
    if (p->opt.auth_mechanisms.given) {
        if (!select_mechanisms(p, err, errlen)) goto failed;
    } else apply_exclusions_and_sort(p);
    p->generation = next_generation++; /* refused loads don't use up numbers */
    return p;

failed:
    policy_release(p);
    return NULL;
}

void policy_hold(struct policy *p) { p->refcount++; }

void policy_attach(struct policy *p, struct ev_loop *loop) { vm_attach(&p->vm, loop); }

void policy_retire(struct policy *p, double now)
{
    p->retired_at = now;
    vm_retire(&p->vm);
}

void policy_release(struct policy *p)
{
    if (!p || --p->refcount > 0) return;
    vm_close(&p->vm); /* frees every ref, pooled coroutine and table */
    free(p->mechs);
    free(p->script_name);
    options_free(&p->opt);
    free(p);
}

int policy_find_mechanism(const struct policy *p, const char *name, size_t len)
{
    for (size_t i = 0; i < p->n_mechs; i++)
        if (strlen(p->mechs[i].name) == len && !strncasecmp(p->mechs[i].name, name, len))
            return (int)i;
    return -1;
}
