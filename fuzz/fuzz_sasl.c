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
#include <stddef.h>
#include <stdint.h>

#include "fuzz.h"
#include "fuzz_lua_check.h"

#ifndef FUZZ_DIR
#define FUZZ_DIR "fuzz"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_lua_check_init(FUZZ_DIR "/sasl.lua", "fuzz_sasl");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_check_one(data, size);
}
