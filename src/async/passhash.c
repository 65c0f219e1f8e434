/* passhash.c — password hashes (async-api.md 6). Owns reading a hash's
 * cost before any work is done (so a hash that would tie up a thread for
 * minutes is refused on the loop), verifying with a constant-time
 * comparison, and hashing with a salt from the OS. libxcrypt does every
 * crypt(3) method (crypt_rn, crypt_checksalt, crypt_gensalt_rn), libargon2
 * the argon2 family. Must not log or keep a password; knows no Lua. */
#include "passhash.h"

#include <argon2.h>
#include <crypt.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "base64.h"
#include "crypto.h"

/* yescrypt's r and p, whatever N is: Debian's default is r = 32, p = 1; a
 * larger r multiplies the memory and time of every N. */
#define YESCRYPT_MAX_R 32
#define YESCRYPT_MAX_P 16
#define YESCRYPT_MAX_T 16
/* SHA-crypt without "rounds=" (Drepper's specification). */
#define SHA_CRYPT_DEFAULT_ROUNDS 5000UL
/* What `hash` makes: bcrypt 2^10 (about 60 ms), yescrypt and SHA-crypt at
 * libxcrypt's defaults, argon2id t = 3, m = 64 MiB, p = 1 (RFC 9106 4's
 * second choice, one lane: the pool's thread is the parallelism). */
#define HASH_BCRYPT_COST 10
#define HASH_ARGON2_T 3
#define HASH_ARGON2_M_KIB (64 * 1024)
#define HASH_ARGON2_P 1
#define HASH_ARGON2_SALT 16
#define HASH_ARGON2_LEN 32

const char passhash_method_names[] = "yescrypt, bcrypt, sha512crypt, argon2id, scram-sha-256, scram-sha-1";

void passhash_limits_default(struct passhash_limits *l)
{
    l->bcrypt = PASSHASH_MAX_BCRYPT;
    l->scrypt = PASSHASH_MAX_SCRYPT;
    l->rounds = PASSHASH_MAX_ROUNDS;
    l->argon2_memory_kib = PASSHASH_MAX_ARGON2_MEMORY_KIB;
    l->argon2_time = PASSHASH_MAX_ARGON2_TIME;
    l->argon2_lanes = PASSHASH_MAX_ARGON2_LANES;
}

void passhash_wipe(void *p, size_t n)
{
    if (p && n) explicit_bzero(p, n);
}

/* crypt's base-64 alphabet: "./0-9A-Za-z"; 64 for anything else. */
static unsigned atoi64(unsigned char c)
{
    if (c == '.') return 0;
    if (c == '/') return 1;
    if (c >= '0' && c <= '9') return c - '0' + 2;
    if (c >= 'A' && c <= 'Z') return c - 'A' + 12;
    if (c >= 'a' && c <= 'z') return c - 'a' + 38;
    return 64;
}

/* yescrypt's variable-length integers (yescrypt-common.c decode64_uint32). */
static const char *decode64_uint32(uint32_t *dst, const char *src, uint32_t min)
{
    uint32_t start = 0, end = 47, chars = 1, bits = 0;
    uint32_t c = atoi64((unsigned char)*src++);
    if (c > 63) return NULL;
    uint64_t v = min;
    while (c > end) {
        v += (uint64_t)(end + 1 - start) << bits;
        start = end + 1;
        end = start + (62 - end) / 2;
        chars++;
        bits += 6;
    }
    v += (uint64_t)(c - start) << bits;
    while (--chars) {
        c = atoi64((unsigned char)*src++);
        if (c > 63) return NULL;
        bits -= 6;
        v += (uint64_t)c << bits;
    }
    if (v > UINT32_MAX) return NULL;
    *dst = (uint32_t)v;
    return src;
}

/* $y$ / $gy$ parameters: flavor, N, r [, have, p, t, g, NROM]. */
static enum passhash_verdict yescrypt_cost(const char *p, const struct passhash_limits *lim)
{
    uint32_t flavor, n_log2, r, have = 0, par = 1, t = 0, g = 0, nrom = 0;
    if (!(p = decode64_uint32(&flavor, p, 0)) || !(p = decode64_uint32(&n_log2, p, 1)) ||
        !(p = decode64_uint32(&r, p, 1)))
        return PASSHASH_UNSUPPORTED;
    if (*p != '$') {
        if (!(p = decode64_uint32(&have, p, 1))) return PASSHASH_UNSUPPORTED;
        if ((have & 1) && !(p = decode64_uint32(&par, p, 2))) return PASSHASH_UNSUPPORTED;
        if ((have & 2) && !(p = decode64_uint32(&t, p, 1))) return PASSHASH_UNSUPPORTED;
        if ((have & 4) && !(p = decode64_uint32(&g, p, 1))) return PASSHASH_UNSUPPORTED;
        if ((have & 8) && !(p = decode64_uint32(&nrom, p, 1))) return PASSHASH_UNSUPPORTED;
        if (*p != '$') return PASSHASH_UNSUPPORTED;
    }
    if (n_log2 > (uint32_t)lim->scrypt || r > YESCRYPT_MAX_R || par > YESCRYPT_MAX_P ||
        t > YESCRYPT_MAX_T || g > 0)
        return PASSHASH_TOO_COSTLY;
    return nrom ? PASSHASH_UNSUPPORTED : PASSHASH_OK; /* no ROM behind crypt(3) */
}

/* $7$: N's log2 in one character, then r and p in five each (30 bits,
 * little-endian). */
static enum passhash_verdict scrypt_cost(const char *p, const struct passhash_limits *lim)
{
    unsigned n_log2 = atoi64((unsigned char)p[0]);
    if (n_log2 > 63) return PASSHASH_UNSUPPORTED;
    uint32_t rp[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 5; i++) {
            unsigned c = atoi64((unsigned char)p[1 + 5 * k + i]);
            if (c > 63) return PASSHASH_UNSUPPORTED;
            rp[k] |= (uint32_t)c << (6 * i);
        }
    }
    if (n_log2 > (unsigned)lim->scrypt || rp[0] > YESCRYPT_MAX_R || rp[1] > YESCRYPT_MAX_P)
        return PASSHASH_TOO_COSTLY;
    return PASSHASH_OK;
}

/* A decimal count ending at `stop`; false if there is none. */
static bool parse_count(const char *p, char stop, unsigned long *out)
{
    if (*p < '0' || *p > '9') return false;
    char *end;
    errno = 0;
    unsigned long v = strtoul(p, &end, 10);
    if (errno || *end != stop) return false;
    *out = v;
    return true;
}

/* "m=65536,t=3,p=4$" after an optional "v=19$". */
static enum passhash_verdict argon2_cost(const char *p, const struct passhash_limits *lim)
{
    unsigned long v, m, t, lanes;
    if (!strncmp(p, "v=", 2)) {
        if (!parse_count(p + 2, '$', &v)) return PASSHASH_UNSUPPORTED;
        p = strchr(p, '$') + 1;
    }
    if (strncmp(p, "m=", 2) || !parse_count(p + 2, ',', &m)) return PASSHASH_UNSUPPORTED;
    p = strchr(p, ',') + 1;
    if (strncmp(p, "t=", 2) || !parse_count(p + 2, ',', &t)) return PASSHASH_UNSUPPORTED;
    p = strchr(p, ',') + 1;
    if (strncmp(p, "p=", 2) || !parse_count(p + 2, '$', &lanes)) return PASSHASH_UNSUPPORTED;
    if (m > (unsigned long)lim->argon2_memory_kib || t > (unsigned long)lim->argon2_time ||
        lanes > (unsigned long)lim->argon2_lanes)
        return PASSHASH_TOO_COSTLY;
    return PASSHASH_OK;
}

static enum passhash_verdict rounds_cost(unsigned long rounds, const struct passhash_limits *lim)
{
    return rounds > (unsigned long)lim->rounds ? PASSHASH_TOO_COSTLY : PASSHASH_OK;
}

/* The costs crypt(3) reads from the setting; methods without one (MD5-crypt,
 * DES, NT) cost the same for every hash. */
static enum passhash_verdict crypt_cost(const char *h, const struct passhash_limits *lim)
{
    unsigned long n;
    if (h[0] == '$' && h[1] == '2' && h[2] && h[3] == '$') {
        if (!parse_count(h + 4, '$', &n)) return PASSHASH_UNSUPPORTED;
        return n > (unsigned long)lim->bcrypt ? PASSHASH_TOO_COSTLY : PASSHASH_OK;
    }
    if (!strncmp(h, "$y$", 3)) return yescrypt_cost(h + 3, lim);
    if (!strncmp(h, "$gy$", 4)) return yescrypt_cost(h + 4, lim);
    if (!strncmp(h, "$7$", 3)) return strlen(h) < 14 ? PASSHASH_UNSUPPORTED : scrypt_cost(h + 3, lim);
    if (!strncmp(h, "$5$", 3) || !strncmp(h, "$6$", 3)) {
        if (strncmp(h + 3, "rounds=", 7)) return rounds_cost(SHA_CRYPT_DEFAULT_ROUNDS, lim);
        if (!parse_count(h + 10, '$', &n)) return PASSHASH_UNSUPPORTED;
        return rounds_cost(n, lim);
    }
    if (!strncmp(h, "$sha1$", 6)) {
        if (!parse_count(h + 6, '$', &n)) return PASSHASH_UNSUPPORTED;
        return rounds_cost(n, lim);
    }
    /* SunMD5 takes its rounds after "," or "$" (libxcrypt reads both). */
    if (!strncmp(h, "$md5,rounds=", 12) || !strncmp(h, "$md5$rounds=", 12)) {
        if (!parse_count(h + 12, '$', &n) && !parse_count(h + 12, ',', &n))
            return PASSHASH_UNSUPPORTED;
        return rounds_cost(n, lim);
    }
    if (h[0] == '_') {
        /* BSDi: four characters of iteration count, little-endian. */
        n = 0;
        for (int i = 0; i < 4; i++) {
            unsigned c = atoi64((unsigned char)h[1 + i]);
            if (c > 63) return PASSHASH_UNSUPPORTED;
            n |= (unsigned long)c << (6 * i);
        }
        return rounds_cost(n, lim);
    }
    return PASSHASH_OK;
}

/* A parsed SCRAM secret; the pointers are into the caller's buffers. */
struct scram_secret {
    enum crypto_hash h;
    unsigned long iterations;
    uint8_t salt[SCRAM_SALT_MAX];
    size_t salt_len;
    uint8_t stored_key[CRYPTO_MAX_DIGEST];
    uint8_t server_key[CRYPTO_MAX_DIGEST];
};

/* Decodes base64 text [p, p + n) of exactly want bytes (or at most
 * want when exact is false) into out; returns the length or -1. */
static ssize_t scram_b64(const char *p, size_t n, uint8_t *out, size_t want, bool exact)
{
    if (base64_decoded_max(n) > want + 3) return -1;
    uint8_t tmp[SCRAM_SALT_MAX + 4];
    ssize_t got = base64_decode_strict(p, n, tmp);
    if (got <= 0 || (size_t)got > want || (exact && (size_t)got != want)) return -1;
    memcpy(out, tmp, (size_t)got);
    return got;
}

/* Parses "SCRAM-SHA-256$4096:salt$stored:server"; false if it is not one. */
static bool scram_parse(const char *s, size_t len, struct scram_secret *out)
{
    const char *p;
    if (len > 14 && !strncmp(s, "SCRAM-SHA-256$", 14)) out->h = CRYPTO_SHA256, p = s + 14;
    else if (len > 12 && !strncmp(s, "SCRAM-SHA-1$", 12)) out->h = CRYPTO_SHA1, p = s + 12;
    else return false;
    const char *end = s + len;
    unsigned long it = 0;
    if (p >= end || *p < '1' || *p > '9') return false;
    while (p < end && *p >= '0' && *p <= '9') {
        it = it * 10 + (unsigned long)(*p++ - '0');
        if (it > 0xffffffffUL) return false;
    }
    if (p >= end || *p++ != ':') return false;
    const char *dollar = memchr(p, '$', (size_t)(end - p));
    if (!dollar) return false;
    ssize_t sl = scram_b64(p, (size_t)(dollar - p), out->salt, SCRAM_SALT_MAX, false);
    if (sl < 0) return false;
    p = dollar + 1;
    const char *colon = memchr(p, ':', (size_t)(end - p));
    if (!colon) return false;
    size_t dl = crypto_hash_size(out->h);
    if (scram_b64(p, (size_t)(colon - p), out->stored_key, dl, true) < 0) return false;
    if (scram_b64(colon + 1, (size_t)(end - colon - 1), out->server_key, dl, true) < 0)
        return false;
    out->iterations = it;
    out->salt_len = (size_t)sl;
    return true;
}

/* SaltedPassword -> StoredKey and ServerKey (RFC 5802 3). */
static bool scram_keys(enum crypto_hash h, const char *pw, size_t pwlen, const uint8_t *salt,
                       size_t slen, unsigned long it, uint8_t *stored, uint8_t *server)
{
    uint8_t salted[CRYPTO_MAX_DIGEST], client[CRYPTO_MAX_DIGEST];
    size_t dl = crypto_hash_size(h);
    bool ok = crypto_pbkdf2(h, pw, pwlen, salt, slen, it, salted, dl) &&
              crypto_hmac(h, salted, dl, "Client Key", 10, client) &&
              crypto_digest(h, client, dl, stored) &&
              crypto_hmac(h, salted, dl, "Server Key", 10, server);
    passhash_wipe(salted, sizeof salted);
    passhash_wipe(client, sizeof client);
    return ok;
}

enum passhash_verdict passhash_classify(const char *hash, size_t len,
                                        const struct passhash_limits *lim,
                                        enum passhash_kind *kind)
{
    if (len == 0 || memchr(hash, '\0', len)) return PASSHASH_UNSUPPORTED;
    struct scram_secret sc;
    if (scram_parse(hash, len, &sc)) {
        *kind = sc.h == CRYPTO_SHA256 ? PASSHASH_SCRAM_SHA256_SECRET : PASSHASH_SCRAM_SHA1_SECRET;
        return (long)sc.iterations > lim->rounds ? PASSHASH_TOO_COSTLY : PASSHASH_OK;
    }
    static const struct {
        const char *prefix;
        enum passhash_kind kind;
    } argon2[] = {
        {"$argon2id$", PASSHASH_ARGON2ID},
        {"$argon2i$", PASSHASH_ARGON2I},
        {"$argon2d$", PASSHASH_ARGON2D},
    };
    for (size_t i = 0; i < sizeof argon2 / sizeof argon2[0]; i++) {
        size_t n = strlen(argon2[i].prefix);
        if (!strncmp(hash, argon2[i].prefix, n)) {
            *kind = argon2[i].kind;
            return argon2_cost(hash + n, lim);
        }
    }
    switch (crypt_checksalt(hash)) {
    case CRYPT_SALT_OK:
    case CRYPT_SALT_METHOD_LEGACY:
    case CRYPT_SALT_TOO_CHEAP: break;
    default: return PASSHASH_UNSUPPORTED; /* "*", "!", disabled or unknown methods */
    }
    *kind = PASSHASH_CRYPT;
    return crypt_cost(hash, lim);
}

/* Equal lengths and bytes, in time that depends only on the lengths (the
 * length of a crypt output is fixed by its method, not by the password). */
static bool equal_ct(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen) return false;
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < alen; i++) diff |= (unsigned char)a[i] ^ (unsigned char)b[i];
    return diff == 0;
}

int passhash_verify(enum passhash_kind kind, const char *pw, size_t pwlen, const char *hash,
                    char *err, size_t errlen)
{
    if (kind == PASSHASH_SCRAM_SHA256_SECRET || kind == PASSHASH_SCRAM_SHA1_SECRET) {
        struct scram_secret sc;
        if (!scram_parse(hash, strlen(hash), &sc)) return -1;
        uint8_t stored[CRYPTO_MAX_DIGEST], server[CRYPTO_MAX_DIGEST];
        if (!scram_keys(sc.h, pw, pwlen, sc.salt, sc.salt_len, sc.iterations, stored, server)) {
            snprintf(err, errlen, "SCRAM key derivation failed");
            return -2;
        }
        int r = crypto_equal(stored, sc.stored_key, crypto_hash_size(sc.h)) ? 1 : 0;
        passhash_wipe(stored, sizeof stored);
        passhash_wipe(server, sizeof server);
        return r;
    }
    if (kind != PASSHASH_CRYPT) {
        argon2_type type = kind == PASSHASH_ARGON2I   ? Argon2_i
                           : kind == PASSHASH_ARGON2D ? Argon2_d
                                                      : Argon2_id;
        /* argon2_verify recomputes the tag and compares it in constant time. */
        int rc = argon2_verify(hash, pw, pwlen, type);
        if (rc == ARGON2_OK) return 1;
        if (rc == ARGON2_VERIFY_MISMATCH) return 0;
        if (rc == ARGON2_MEMORY_ALLOCATION_ERROR || rc == ARGON2_THREAD_FAIL) {
            snprintf(err, errlen, "%s", argon2_error_message(rc));
            return -2;
        }
        return -1;
    }
    struct crypt_data *cd = calloc(1, sizeof *cd);
    if (!cd) {
        snprintf(err, errlen, "out of memory");
        return -2;
    }
    /* crypt_rn wants a NUL-terminated phrase: pw has no NUL (checked). */
    char *phrase = malloc(pwlen + 1);
    if (!phrase) {
        free(cd);
        snprintf(err, errlen, "out of memory");
        return -2;
    }
    memcpy(phrase, pw, pwlen);
    phrase[pwlen] = '\0';
    errno = 0;
    const char *out = crypt_rn(phrase, hash, cd, sizeof *cd);
    int result;
    if (!out) {
        /* ERANGE: longer than any phrase crypt(3) hashes (512 bytes), so no
         * crypt hash can be of it. */
        result = errno == ERANGE ? 0 : -1;
    } else if (out[0] == '*') {
        result = -1; /* crypt's failure token: a setting it cannot use */
    } else if (strlen(out) != strlen(hash)) {
        /* The method fixes the length of its output: a stored string of
         * another length is no hash of that method ("plaintext" would
         * otherwise pass for a DES salt). */
        result = -1;
    } else {
        result = equal_ct(out, strlen(out), hash, strlen(hash)) ? 1 : 0;
    }
    passhash_wipe(phrase, pwlen);
    free(phrase);
    passhash_wipe(cd, sizeof *cd);
    free(cd);
    return result;
}

enum passhash_method passhash_method_parse(const char *name)
{
    if (!name || !strcmp(name, "yescrypt")) return PASSHASH_YESCRYPT;
    if (!strcmp(name, "bcrypt")) return PASSHASH_BCRYPT;
    if (!strcmp(name, "sha512crypt")) return PASSHASH_SHA512CRYPT;
    if (!strcmp(name, "argon2id")) return PASSHASH_ARGON2ID_METHOD;
    if (!strcmp(name, "scram-sha-256")) return PASSHASH_SCRAM_SHA_256;
    if (!strcmp(name, "scram-sha-1")) return PASSHASH_SCRAM_SHA_1;
    return PASSHASH_METHOD_UNKNOWN;
}

static char *hash_argon2id(const char *pw, size_t pwlen, char *err, size_t errlen)
{
    unsigned char salt[HASH_ARGON2_SALT];
    if (getrandom(salt, sizeof salt, 0) != (ssize_t)sizeof salt) {
        snprintf(err, errlen, "no random salt: %s", strerror(errno));
        return NULL;
    }
    size_t n = argon2_encodedlen(HASH_ARGON2_T, HASH_ARGON2_M_KIB, HASH_ARGON2_P, sizeof salt,
                                 HASH_ARGON2_LEN, Argon2_id);
    char *out = malloc(n);
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int rc = argon2id_hash_encoded(HASH_ARGON2_T, HASH_ARGON2_M_KIB, HASH_ARGON2_P, pw, pwlen,
                                   salt, sizeof salt, HASH_ARGON2_LEN, out, n);
    if (rc != ARGON2_OK) {
        free(out);
        snprintf(err, errlen, "argon2id: %s", argon2_error_message(rc));
        return NULL;
    }
    return out;
}

static char *hash_scram(enum passhash_method m, const char *pw, size_t pwlen, char *err,
                       size_t errlen)
{
    enum crypto_hash h = m == PASSHASH_SCRAM_SHA_256 ? CRYPTO_SHA256 : CRYPTO_SHA1;
    const char *name = h == CRYPTO_SHA256 ? "SCRAM-SHA-256" : "SCRAM-SHA-1";
    uint8_t salt[SCRAM_SALT_LEN], stored[CRYPTO_MAX_DIGEST], server[CRYPTO_MAX_DIGEST];
    if (!crypto_random(salt, sizeof salt)) {
        snprintf(err, errlen, "no random salt: %s", strerror(errno));
        return NULL;
    }
    if (!scram_keys(h, pw, pwlen, salt, sizeof salt, SCRAM_ITERATIONS, stored, server)) {
        snprintf(err, errlen, "SCRAM key derivation failed");
        return NULL;
    }
    size_t dl = crypto_hash_size(h);
    char salt64[64], stored64[100], server64[100];
    base64_encode(salt, sizeof salt, salt64);
    base64_encode(stored, dl, stored64);
    base64_encode(server, dl, server64);
    size_t cap = strlen(name) + strlen(salt64) + strlen(stored64) + strlen(server64) + 16;
    char *out = malloc(cap);
    if (!out) snprintf(err, errlen, "out of memory");
    else snprintf(out, cap, "%s$%d:%s$%s:%s", name, SCRAM_ITERATIONS, salt64, stored64, server64);
    passhash_wipe(stored, sizeof stored);
    passhash_wipe(server, sizeof server);
    return out;
}

char *passhash_hash(enum passhash_method m, const char *pw, size_t pwlen, char *err,
                    size_t errlen)
{
    if (!passhash_method_supported(m)) {
        snprintf(err, errlen, "unsupported method");
        return NULL;
    }
    if (memchr(pw, '\0', pwlen)) {
        snprintf(err, errlen, "password contains NUL");
        return NULL;
    }
    if (m == PASSHASH_ARGON2ID_METHOD) return hash_argon2id(pw, pwlen, err, errlen);
    if (m == PASSHASH_SCRAM_SHA_256 || m == PASSHASH_SCRAM_SHA_1) return hash_scram(m, pw, pwlen, err, errlen);
    const char *prefix = m == PASSHASH_BCRYPT ? "$2b$" : m == PASSHASH_SHA512CRYPT ? "$6$" : "$y$";
    unsigned long count = m == PASSHASH_BCRYPT ? HASH_BCRYPT_COST : 0;
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    /* NULL random bytes: libxcrypt takes them from the OS (getrandom). */
    if (!crypt_gensalt_rn(prefix, count, NULL, 0, setting, sizeof setting)) {
        snprintf(err, errlen, "no salt: %s", strerror(errno));
        return NULL;
    }
    struct crypt_data *cd = calloc(1, sizeof *cd);
    char *phrase = malloc(pwlen + 1);
    char *out = NULL;
    if (!cd || !phrase) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    memcpy(phrase, pw, pwlen);
    phrase[pwlen] = '\0';
    errno = 0;
    const char *h = crypt_rn(phrase, setting, cd, sizeof *cd);
    if (!h || h[0] == '*') {
        snprintf(err, errlen, "%s", errno == ERANGE ? "password too long" : "hashing failed");
        goto done;
    }
    if (!(out = strdup(h))) snprintf(err, errlen, "out of memory");
done:
    if (phrase) {
        passhash_wipe(phrase, pwlen);
        free(phrase);
    }
    if (cd) {
        passhash_wipe(cd, sizeof *cd);
        free(cd);
    }
    return out;
}
