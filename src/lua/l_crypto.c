/* l_crypto.c — smtpd.crypto: the primitives the shipped SASL mechanisms
 * are written with (mechanisms.md), from crypto.c (mbedTLS). None yields:
 * each is microseconds, but pbkdf2's loop is bounded (PBKDF2_MAX_ITERATIONS)
 * because it runs on the event loop. Knows no SMTP; keeps no secret. */
#include "lua_bind.h"

#include <string.h>

#include "crypto.h"

/* PBKDF2 runs on the loop: SCRAM's 4096 (RFC 7677 4) with room to spare,
 * never a stored secret's arbitrary count (a SCRAM secret needs none). */
#define PBKDF2_MAX_ITERATIONS 100000
#define RANDOM_MAX 1024

static enum crypto_hash check_hash(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    enum crypto_hash h = crypto_hash_parse(name);
    if (h == CRYPTO_HASH_UNKNOWN)
        luaL_argerror(L, idx,
                      lua_pushfstring(L,
                                      "unknown hash '%s' (expected md5, sha1, sha256, "
                                      "sha384 or sha512)",
                                      name));
    return h;
}

/* smtpd.crypto.hash(alg, data) → the raw digest. */
static int l_crypto_hash(lua_State *L)
{
    enum crypto_hash h = check_hash(L, 1);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    uint8_t out[CRYPTO_MAX_DIGEST];
    if (!crypto_digest(h, data, n, out)) return luaL_error(L, "smtpd.crypto.hash failed");
    lua_pushlstring(L, (const char *)out, crypto_hash_size(h));
    return 1;
}

/* smtpd.crypto.hmac(alg, key, data) → the raw MAC. */
static int l_crypto_hmac(lua_State *L)
{
    enum crypto_hash h = check_hash(L, 1);
    size_t kl, n;
    const char *key = luaL_checklstring(L, 2, &kl);
    const char *data = luaL_checklstring(L, 3, &n);
    uint8_t out[CRYPTO_MAX_DIGEST];
    if (!crypto_hmac(h, key, kl, data, n, out)) return luaL_error(L, "smtpd.crypto.hmac failed");
    lua_pushlstring(L, (const char *)out, crypto_hash_size(h));
    explicit_bzero(out, sizeof out);
    return 1;
}

/* smtpd.crypto.pbkdf2(alg, password, salt, iterations [, length]) → raw key. */
static int l_crypto_pbkdf2(lua_State *L)
{
    enum crypto_hash h = check_hash(L, 1);
    size_t pl, sl;
    const char *pw = luaL_checklstring(L, 2, &pl);
    const char *salt = luaL_checklstring(L, 3, &sl);
    lua_Integer it = luaL_checkinteger(L, 4);
    lua_Integer len = luaL_optinteger(L, 5, (lua_Integer)crypto_hash_size(h));
    if (it < 1 || it > PBKDF2_MAX_ITERATIONS)
        return luaL_argerror(L, 4,
                             "iterations must be 1 to "
                             "100000");
    if (len < 1 || len > CRYPTO_MAX_DIGEST) return luaL_argerror(L, 5, "length must be 1 to 64");
    uint8_t out[CRYPTO_MAX_DIGEST];
    if (!crypto_pbkdf2(h, pw, pl, salt, sl, (unsigned long)it, out, (size_t)len))
        return luaL_error(L, "smtpd.crypto.pbkdf2 failed");
    lua_pushlstring(L, (const char *)out, (size_t)len);
    explicit_bzero(out, sizeof out);
    return 1;
}

/* smtpd.crypto.equal(a, b) → true when equal; time depends on the lengths only. */
static int l_crypto_equal(lua_State *L)
{
    size_t an, bn;
    const char *a = luaL_checklstring(L, 1, &an);
    const char *b = luaL_checklstring(L, 2, &bn);
    lua_pushboolean(L, an == bn && crypto_equal(a, b, an));
    return 1;
}

/* smtpd.crypto.xor(a, b) → a XOR b (equal lengths). */
static int l_crypto_xor(lua_State *L)
{
    size_t an, bn;
    const char *a = luaL_checklstring(L, 1, &an);
    const char *b = luaL_checklstring(L, 2, &bn);
    if (an != bn)
        return luaL_error(L, "smtpd.crypto.xor: lengths differ (%d and %d)", (int)an, (int)bn);
    luaL_Buffer buf;
    luaL_buffinit(L, &buf);
    for (size_t i = 0; i < an; i++)
        luaL_addchar(&buf, (char)(a[i] ^ b[i]));
    luaL_pushresult(&buf);
    return 1;
}

/* smtpd.crypto.random(n) → n bytes from the OS. */
static int l_crypto_random(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    if (n < 0 || n > RANDOM_MAX) return luaL_argerror(L, 1, "must be 0 to 1024");
    uint8_t out[RANDOM_MAX];
    if (!crypto_random(out, (size_t)n)) return luaL_error(L, "smtpd.crypto.random: no entropy");
    lua_pushlstring(L, (const char *)out, (size_t)n);
    return 1;
}

static const luaL_Reg crypto_functions[] = {
    {"hash", l_crypto_hash},
    {"hmac", l_crypto_hmac},
    {"pbkdf2", l_crypto_pbkdf2},
    {"equal", l_crypto_equal},
    {"xor", l_crypto_xor},
    {"random", l_crypto_random},
    {NULL, NULL},
};

void l_crypto_register(lua_State *L)
{
    lua_newtable(L);
    luaL_register(L, NULL, crypto_functions);
    lua_setfield(L, -2, "crypto");
}
