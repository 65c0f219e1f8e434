/* lua_sandbox.c — what a handler script must not be able to do to the
 * process that runs every other client's session: end it (os.exit), or
 * raise from a finalizer. LuaJIT propagates an error in a __gc metamethod
 * out of whatever allocation triggered the collection step; when that step
 * runs in C code between hooks, outside any protected call, the error ends
 * in a panic and exit(1). So every finalizer a script can install (a
 * newproxy metatable, ffi.gc, ffi.metatype) is wrapped in a pcall that logs
 * and swallows the error. The panic handler is the backstop for whatever is
 * left: it logs and aborts, never returning into a corrupt state.
 * Must not touch SMTP state. */
#include "lua_sandbox.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define GUARD_MT_KEY "smtpd.sandbox.gc_guard_mt"

static int sandbox_panic(lua_State *L)
{
    char esc[1024];
    size_t n = 0;
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    log_msg(LOG_ERROR, NULL, "Lua panic (an error outside any protected call): %s; aborting",
            msg ? log_escape(msg, n, esc, sizeof esc) : "(error object is not a string)");
    abort(); /* the state is not safe to use again: never return into it */
}

static int sandbox_os_exit(lua_State *L)
{
    return luaL_error(L, "os.exit is disabled in handler scripts: it would stop the server for "
                         "every client (raise an error or return a reply instead)");
}

/* The finalizer a script gave (upvalue 1), run protected. */
static int guarded_finalizer(lua_State *L)
{
    int nargs = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    if (lua_pcall(L, nargs, 0, 0) != 0) {
        char esc[1024];
        size_t n = 0;
        const char *msg = lua_tolstring(L, -1, &n);
        log_msg(LOG_ERROR, NULL, "error in a __gc finalizer (ignored): %s",
                msg ? log_escape(msg, n, esc, sizeof esc) : "(error object is not a string)");
        lua_pop(L, 1);
    }
    return 0;
}

/* Replaces the function at idx (if it is one) by its guarded form. */
static void guard_at(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TFUNCTION) return;
    lua_pushvalue(L, idx);
    lua_pushcclosure(L, guarded_finalizer, 1);
    lua_replace(L, idx);
}

/* __newindex on a proxy's metatable: mt.__gc = f stores f guarded. */
static int guard_newindex(lua_State *L)
{
    lua_settop(L, 3);
    if (lua_type(L, 2) == LUA_TSTRING && !strcmp(lua_tostring(L, 2), "__gc")) guard_at(L, 3);
    lua_rawset(L, 1);
    return 0;
}

/* newproxy(...) with the original as upvalue 1: a fresh metatable gets the
 * guard as its own metatable, so a later mt.__gc = f is guarded. */
static int sandbox_newproxy(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    if (lua_getmetatable(L, -1)) {
        if (!lua_getmetatable(L, -1)) {
            lua_getfield(L, LUA_REGISTRYINDEX, GUARD_MT_KEY);
            lua_setmetatable(L, -2);
        } else lua_pop(L, 1);
        lua_pop(L, 1);
    }
    return 1;
}

/* ffi.gc(cdata, f) with the original as upvalue 1. */
static int sandbox_ffi_gc(lua_State *L)
{
    lua_settop(L, 2);
    guard_at(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* ffi.metatype(ct, mt) with the original as upvalue 1: mt.__gc guarded
 * (a metatype's table may not change afterwards, so once is enough). */
static int sandbox_ffi_metatype(lua_State *L)
{
    lua_settop(L, 2);
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_getfield(L, 2, "__gc");
        guard_at(L, -1);
        lua_setfield(L, 2, "__gc");
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* Replaces module[name] by a closure of fn over the original. */
static void wrap_field(lua_State *L, int module, const char *name, lua_CFunction fn)
{
    lua_getfield(L, module, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, module, name);
}

void l_sandbox_open(lua_State *L)
{
    lua_atpanic(L, sandbox_panic);

    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, guard_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_setfield(L, LUA_REGISTRYINDEX, GUARD_MT_KEY);

    lua_getglobal(L, "os");
    lua_pushcfunction(L, sandbox_os_exit);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);

    wrap_field(L, LUA_GLOBALSINDEX, "newproxy", sandbox_newproxy);

    /* ffi is preloaded, not loaded: load it now so that the module every
     * require("ffi") returns is the wrapped one. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "ffi");
    if (lua_pcall(L, 1, 1, 0) == 0 && lua_istable(L, -1)) {
        int ffi = lua_gettop(L);
        wrap_field(L, ffi, "gc", sandbox_ffi_gc);
        wrap_field(L, ffi, "metatype", sandbox_ffi_metatype);
    }
    lua_pop(L, 1);
}
