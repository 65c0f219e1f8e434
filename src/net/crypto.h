/* crypto.h — the hash primitives SASL mechanisms need (RFC 2195, 5802,
 * 7677), from mbedTLS: digests, HMAC, PBKDF2, a constant-time compare and
 * random bytes from the OS. The one mbedTLS user beside tls*.c; callers
 * never see an mbedTLS type. Pure functions on caller-owned buffers: no
 * allocation, no I/O but getrandom, nothing logged. */
#ifndef LUASMTPD_CRYPTO_H
#define LUASMTPD_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum crypto_hash {
    CRYPTO_MD5,
    CRYPTO_SHA1,
    CRYPTO_SHA256,
    CRYPTO_SHA384,
    CRYPTO_SHA512,
    CRYPTO_HASH_UNKNOWN
};

/* The largest digest (SHA-512). */
#define CRYPTO_MAX_DIGEST 64

/* "md5", "sha1", "sha256", "sha384", "sha512" (also "SHA-256" etc.). */
enum crypto_hash crypto_hash_parse(const char *name);
/* The digest length of h in bytes; 0 for CRYPTO_HASH_UNKNOWN. */
size_t crypto_hash_size(enum crypto_hash h);

/* out (crypto_hash_size(h) bytes) = H(data). False only on a bad h. */
bool crypto_digest(enum crypto_hash h, const void *data, size_t n, uint8_t *out);

/* out (crypto_hash_size(h) bytes) = HMAC-H(key, data) (RFC 2104). */
bool crypto_hmac(enum crypto_hash h, const void *key, size_t klen, const void *data, size_t n,
                 uint8_t *out);

/* out (outlen bytes) = PBKDF2-HMAC-H(pw, salt, iterations) (RFC 8018 5.2),
 * which is SCRAM's Hi() when outlen is the digest size. Slow on purpose:
 * the cost is linear in iterations. */
bool crypto_pbkdf2(enum crypto_hash h, const void *pw, size_t pwlen, const void *salt, size_t slen,
                   unsigned long iterations, uint8_t *out, size_t outlen);

/* a and b (both n bytes) are equal, in time that depends only on n. */
bool crypto_equal(const void *a, const void *b, size_t n);

/* Fills buf with n bytes from the OS (getrandom); false if it failed. */
bool crypto_random(void *buf, size_t n);

#endif
