/* fuzz_lua_check.h — the harness of the targets whose check is written in
 * Lua (fuzz_plain, fuzz_sasl): a state built as a generation's (the
 * standard libraries, the `smtpd` module and the embedded Lua library in
 * package.preload) that loads FILE, which returns check(rest, byte0); each
 * input calls it, and any error it raises aborts. Lua lines count as
 * coverage (fuzz_lua.h). */
#ifndef LUASMTPD_FUZZ_LUA_CHECK_H
#define LUASMTPD_FUZZ_LUA_CHECK_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_lua.h"
#include "lua_vm.h" /* vm_preload */

static lua_State *fuzz_check_L;
static int fuzz_check_ref;
static unsigned fuzz_check_runs;

/* From LLVMFuzzerInitialize; name prefixes the load error. */
static inline void fuzz_lua_check_init(const char *file, const char *name)
{
    lua_State *L = fuzz_check_L = luaL_newstate();
    if (!L) abort();
    luaL_openlibs(L);
    vm_preload(L);
    if (luaL_dofile(L, file) || lua_type(L, -1) != LUA_TFUNCTION) {
        fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
        exit(1);
    }
    fuzz_check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    fuzz_lua_coverage(L);
}

/* From LLVMFuzzerTestOneInput: check(data[1..], data[0]). */
static inline int fuzz_lua_check_one(const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_check_L;
    if (size < 1) return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, fuzz_check_ref);
    lua_pushlstring(L, (const char *)data + 1, size - 1);
    lua_pushinteger(L, data[0]);
    if (lua_pcall(L, 2, 0, 0)) {
        fprintf(stderr, "\n%s\n", lua_tostring(L, -1));
        abort();
    }
    if (lua_gettop(L) != 0) abort();
    /* Keep the heap near its steady size so RSS reflects leaks, not garbage. */
    if (++fuzz_check_runs % 4096 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}

#endif
