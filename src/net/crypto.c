/* crypto.c — digests, HMAC and PBKDF2 from mbedTLS's message-digest layer,
 * a constant-time compare and OS random bytes (crypto.h). Must not keep
 * state between calls or log anything (keys and passwords pass through). */
#include "crypto.h"

#include <errno.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include <mbedtls/md.h>
#include <mbedtls/pkcs5.h>

static const mbedtls_md_info_t *crypto_md(enum crypto_hash h)
{
    static const mbedtls_md_type_t types[] = {MBEDTLS_MD_MD5, MBEDTLS_MD_SHA1, MBEDTLS_MD_SHA256,
                                              MBEDTLS_MD_SHA384, MBEDTLS_MD_SHA512};
    if ((unsigned)h >= sizeof types / sizeof types[0]) return NULL;
    return mbedtls_md_info_from_type(types[h]);
}

enum crypto_hash crypto_hash_parse(const char *name)
{
    static const struct {
        const char *a, *b;
        enum crypto_hash h;
    } names[] = {
        {"md5", "md5", CRYPTO_MD5},           {"sha1", "sha-1", CRYPTO_SHA1},
        {"sha256", "sha-256", CRYPTO_SHA256}, {"sha384", "sha-384", CRYPTO_SHA384},
        {"sha512", "sha-512", CRYPTO_SHA512},
    };
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(name, names[i].a) || !strcasecmp(name, names[i].b)) return names[i].h;
    return CRYPTO_HASH_UNKNOWN;
}

size_t crypto_hash_size(enum crypto_hash h)
{
    const mbedtls_md_info_t *md = crypto_md(h);
    return md ? mbedtls_md_get_size(md) : 0;
}

bool crypto_digest(enum crypto_hash h, const void *data, size_t n, uint8_t *out)
{
    const mbedtls_md_info_t *md = crypto_md(h);
    return md && mbedtls_md(md, data, n, out) == 0;
}

bool crypto_hmac(enum crypto_hash h, const void *key, size_t klen, const void *data, size_t n,
                 uint8_t *out)
{
    const mbedtls_md_info_t *md = crypto_md(h);
    return md && mbedtls_md_hmac(md, key, klen, data, n, out) == 0;
}

bool crypto_pbkdf2(enum crypto_hash h, const void *pw, size_t pwlen, const void *salt, size_t slen,
                   unsigned long iterations, uint8_t *out, size_t outlen)
{
    const mbedtls_md_info_t *md = crypto_md(h);
    if (!md || iterations == 0 || iterations > 0xffffffffUL) return false;
    mbedtls_md_context_t ctx;
    mbedtls_md_init(&ctx);
    bool ok = mbedtls_md_setup(&ctx, md, 1) == 0 &&
              mbedtls_pkcs5_pbkdf2_hmac(&ctx, pw, pwlen, salt, slen, (unsigned int)iterations,
                                        (uint32_t)outlen, out) == 0;
    mbedtls_md_free(&ctx);
    return ok;
}

bool crypto_equal(const void *a, const void *b, size_t n)
{
    const volatile unsigned char *x = a, *y = b;
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}

bool crypto_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += got;
        n -= (size_t)got;
    }
    return true;
}
