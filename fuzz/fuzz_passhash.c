/* fuzz_passhash.c — reading a password hash's method and cost
 * (passhash_classify, src/async/passhash.c) under libFuzzer: the hash comes
 * from a user store, so its parser sees whatever a store holds. A hash the
 * classifier passes under tight limits is then verified for real (cheap at
 * those limits), so libxcrypt and libargon2 see it too.
 *
 * Input: one byte choosing tight or default limits, then the hash; the rest
 * after a NUL in the input, if any, is the password.
 * Checked, besides the sanitizers:
 *   - the verdict is one of the three, and a kind is set when it is OK;
 *   - under the tight limits, OK means verify returns 1, 0, -1 or -2 (a
 *     password with a NUL never reaches it, as in l_crypt.c);
 *   - tight limits never accept what the default limits call too costly
 *     (a lower limit only refuses more). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "passhash.h"

static void fail(const char *what)
{
    fprintf(stderr, "\nfuzz_passhash: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096) return 0;
    struct passhash_limits dflt, tight;
    passhash_limits_default(&dflt);
    /* Cheap enough to verify every accepted hash within the fuzzer's time. */
    tight = (struct passhash_limits){.bcrypt = 4, .scrypt = 4, .rounds = 2000,
                                     .argon2_memory_kib = 64, .argon2_time = 2,
                                     .argon2_lanes = 1};
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    const char *nul = memchr(in, '\0', n);
    size_t hlen = nul ? (size_t)(nul - in) : n;
    const char *pw = nul ? nul + 1 : "";
    size_t pwlen = nul ? n - hlen - 1 : 0;
    char *hash = malloc(hlen + 1);
    if (!hash) return 0;
    memcpy(hash, in, hlen);
    hash[hlen] = '\0';

    enum passhash_kind kind = (enum passhash_kind)-1, k2;
    enum passhash_verdict v = passhash_classify(hash, hlen, data[0] & 1 ? &tight : &dflt, &kind);
    if (v != PASSHASH_OK && v != PASSHASH_UNSUPPORTED && v != PASSHASH_TOO_COSTLY)
        fail("verdict out of range");
    if (v == PASSHASH_OK && (kind < PASSHASH_CRYPT || kind > PASSHASH_ARGON2ID))
        fail("no kind for an accepted hash");
    if (passhash_classify(hash, hlen, &dflt, &k2) == PASSHASH_TOO_COSTLY &&
        passhash_classify(hash, hlen, &tight, &k2) == PASSHASH_OK)
        fail("the tight limits accept what the defaults refuse as too costly");
    if ((data[0] & 1) && v == PASSHASH_OK && !memchr(pw, '\0', pwlen)) {
        char err[128];
        int r = passhash_verify(kind, pw, pwlen, hash, err, sizeof err);
        if (r < -2 || r > 1) fail("verify result out of range");
    }
    free(hash);
    return 0;
}
