/* passhash.h — password hashes in C (async-api.md 6): which hashes we can
 * verify and what they would cost (cheap, on the loop), verifying and
 * hashing (slow on purpose: on a pool thread or in --hash-password).
 * libxcrypt for every crypt(3) method, libargon2 for argon2. Knows no Lua;
 * never logs a password. */
#ifndef LUASMTPD_PASSHASH_H
#define LUASMTPD_PASSHASH_H

#include <stdbool.h>
#include <stddef.h>

/* crypt_max_cost: the costliest hash verify works on, per family. */
struct passhash_limits {
    int bcrypt;             /* log2 of bcrypt's rounds ($2b$NN$) */
    int scrypt;             /* log2 of N: yescrypt ($y$), gost-yescrypt ($gy$), scrypt ($7$) */
    long rounds;            /* SHA-crypt rounds=, sha1crypt, SunMD5, BSDi DES iterations */
    long argon2_memory_kib; /* argon2 m (KiB) */
    int argon2_time;        /* argon2 t (passes) */
    int argon2_lanes;       /* argon2 p (lanes: libargon2 starts a thread per lane) */
};

/* The defaults (async-api.md 6): bcrypt 2^15, N <= 2^18, argon2 m <= 1 GiB,
 * t <= 16; ours: 1,000,000 rounds, 16 lanes. */
#define PASSHASH_MAX_BCRYPT 15
#define PASSHASH_MAX_SCRYPT 18
#define PASSHASH_MAX_ROUNDS 1000000L
#define PASSHASH_MAX_ARGON2_MEMORY_KIB (1024L * 1024)
#define PASSHASH_MAX_ARGON2_TIME 16
#define PASSHASH_MAX_ARGON2_LANES 16

void passhash_limits_default(struct passhash_limits *l);

enum passhash_kind { PASSHASH_CRYPT, PASSHASH_ARGON2I, PASSHASH_ARGON2D, PASSHASH_ARGON2ID,
                     PASSHASH_SCRAM_SHA256_SECRET, PASSHASH_SCRAM_SHA1_SECRET };
enum passhash_verdict { PASSHASH_OK, PASSHASH_UNSUPPORTED, PASSHASH_TOO_COSTLY };

/* Which library verifies `hash` (len bytes) and whether its cost is within
 * lim: parses the cost out of the hash, runs nothing. */
enum passhash_verdict passhash_classify(const char *hash, size_t len,
                                        const struct passhash_limits *lim,
                                        enum passhash_kind *kind);

/* Verifies pw (pwlen bytes, no NUL) against a classified hash: 1 match,
 * 0 no match, -1 the library refused the hash ("unsupported hash"), -2
 * another failure (err says which, e.g. out of memory). Constant-time
 * comparison. Slow on purpose: call it off the loop. */
int passhash_verify(enum passhash_kind kind, const char *pw, size_t pwlen, const char *hash,
                    char *err, size_t errlen);

enum passhash_method {
    PASSHASH_YESCRYPT, PASSHASH_BCRYPT, PASSHASH_SHA512CRYPT, PASSHASH_ARGON2ID_METHOD,
    PASSHASH_SCRAM_SHA_256, PASSHASH_SCRAM_SHA_1, /* SCRAM secrets (mechanisms.md) */
    PASSHASH_METHOD_UNKNOWN
};

/* The method named `name` (NULL: the default, yescrypt). */
enum passhash_method passhash_method_parse(const char *name);
/* The names hash accepts, for messages: "yescrypt, bcrypt, ...". */
extern const char passhash_method_names[];
static inline bool passhash_method_supported(enum passhash_method m)
{
    return m < PASSHASH_METHOD_UNKNOWN;
}

/* SCRAM secrets, as PostgreSQL stores them:
 * "SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>"
 * (RFC 5802 3; "SCRAM-SHA-1$..." alike). `hash` makes them with a 16-byte
 * salt and SCRAM_ITERATIONS; verify (classified as PASSHASH_SCRAM_*_SECRET,
 * its iterations counted against crypt_max_cost's rounds) recomputes the
 * StoredKey from the password. */
#define SCRAM_ITERATIONS 4096
#define SCRAM_SALT_LEN 16
#define SCRAM_SALT_MAX 128

/* Hashes pw with a fresh salt from the OS; returns the encoded hash
 * (malloc'd, the caller frees) or NULL with err. Slow on purpose. */
char *passhash_hash(enum passhash_method m, const char *pw, size_t pwlen, char *err,
                    size_t errlen);

/* Overwrites n bytes at p in a way the compiler keeps (for copies of
 * passwords). */
void passhash_wipe(void *p, size_t n);

#endif
