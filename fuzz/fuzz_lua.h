/* fuzz_lua.h — coverage of Lua code for libFuzzer. The compiler instruments
 * C only, so without help the fuzzer is blind inside mechanisms.lua and the
 * handler. A line hook turns each transition between two Lua source lines
 * into a counter in libFuzzer's extra-counters section (AFL's edge trick),
 * which libFuzzer reads like its own coverage. Lines cost more than
 * compiled code: only the targets that fuzz Lua include this. */
#ifndef LUASMTPD_FUZZ_LUA_H
#define LUASMTPD_FUZZ_LUA_H

#include <lua.h>
#include <stdint.h>

#define FUZZ_LUA_COUNTERS 8192

/* libFuzzer reads every byte in this section as coverage. */
#define FUZZ_EXTRA_COUNTERS __attribute__((section("__libfuzzer_extra_counters")))

static uint8_t fuzz_lua_counters[FUZZ_LUA_COUNTERS] FUZZ_EXTRA_COUNTERS;

static uintptr_t fuzz_lua_prev;

static void fuzz_lua_line(lua_State *L, lua_Debug *ar)
{
    if (!lua_getinfo(L, "S", ar)) return;
    /* The chunk's source string is interned: its address names the file. */
    uintptr_t cur =
        ((uintptr_t)ar->source >> 4) * 2654435761u ^ (uintptr_t)ar->currentline * 40503u;
    fuzz_lua_counters[(cur ^ fuzz_lua_prev) % FUZZ_LUA_COUNTERS]++;
    fuzz_lua_prev = cur >> 1;
}

/* Hooks every coroutine of L's global state (LuaJIT's hooks are global). */
static inline void fuzz_lua_coverage(lua_State *L)
{
    lua_sethook(L, fuzz_lua_line, LUA_MASKLINE, 0);
}

#endif
