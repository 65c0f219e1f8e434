/* fuzz_sasl.c — the message parsers of the shipped SASL mechanisms
 * (lua/smtpd/mechanisms/: CRAM-MD5, SCRAM-SHA-1/256 and -PLUS, XOAUTH2,
 * OAUTHBEARER, EXTERNAL, as embedded in the server) under libFuzzer,
 * directly in a lua_State with the real smtpd module (smtpd.crypto on
 * mbedTLS) and a scripted server object.
 *
 * Input: byte 0 picks the mechanism (bits 0-2) and what the authenticator
 * passes to verify (bits 3-4: nil, the plaintext, a SCRAM secret, a
 * function); the rest is the client's messages, separated by LF (a message
 * "*" is a cancel). fuzz/sasl.lua holds the check; any error it raises
 * aborts. Lua lines count as coverage (fuzz_lua.h). */
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
    if (luaL_dofile(L, FUZZ_DIR "/sasl.lua") || lua_type(L, -1) != LUA_TFUNCTION) {
        fprintf(stderr, "fuzz_sasl: %s\n", lua_tostring(L, -1));
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
    if (++runs % 4096 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
