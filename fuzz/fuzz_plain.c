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
#include <stddef.h>
#include <stdint.h>

#include "fuzz.h"
#include "fuzz_lua_check.h"

#ifndef FUZZ_DIR
#define FUZZ_DIR "fuzz"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_lua_check_init(FUZZ_DIR "/plain.lua", "fuzz_plain");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_check_one(data, size);
}
