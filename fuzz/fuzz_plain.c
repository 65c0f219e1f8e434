/* fuzz_plain.c — the built-in AUTH PLAIN mechanism (split_plain and its
 * callers in lua/smtpd/mechanisms.lua, as embedded in the server) under
 * libFuzzer, directly in a lua_State; the session target reaches it through
 * the wire as well.
 *
 * Input: byte 0 holds flags (bit 0 auth_allow_authzid, bit 1 answer a 334
 * challenge instead of an initial response, bit 2 the rest is the base64
 * text itself rather than the bytes to encode, bit 3 the authenticator
 * refuses); the rest is the response. The state is built once, as
 * policy.c builds a generation's: the standard libraries, the `smtpd`
 * module and the embedded Lua library in package.preload. fuzz/plain.lua
 * holds the check; any error it raises aborts. Lua lines count as coverage
 * (fuzz_lua.h). */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz.h"
#include "fuzz_lua.h"
#include "lua_vm.h" /* vm_preload */

#ifndef FUZZ_DIR
#define FUZZ_DIR "fuzz"
#endif

static lua_State *L;
static int check_ref;
static unsigned runs;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    L = luaL_newstate();
    if (!L) abort();
    luaL_openlibs(L);
    vm_preload(L);
    if (luaL_dofile(L, FUZZ_DIR "/plain.lua") || lua_type(L, -1) != LUA_TFUNCTION) {
        fprintf(stderr, "fuzz_plain: %s\n", lua_tostring(L, -1));
        exit(1);
    }
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    fuzz_lua_coverage(L);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
    lua_pushlstring(L, (const char *)data + 1, size - 1);
    lua_pushinteger(L, data[0]);
    if (lua_pcall(L, 2, 0, 0)) {
        fprintf(stderr, "\n%s\n", lua_tostring(L, -1));
        abort();
    }
    if (lua_gettop(L) != 0) abort();
    /* Keep the heap near its steady size so RSS reflects leaks, not garbage. */
    if (++runs % 4096 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
