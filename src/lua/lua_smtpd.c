/* lua_smtpd.c — the `smtpd` module handler scripts require: AuthResult,
 * LoginPassword, auth_mechanism, MISSING, null, strict base64 helpers, and
 * the Lua library modules reached as fields (smtpd.redis, smtpd.client,
 * smtpd.handlers). Built
 * into the server and, on its own, as the Lua C module smtpd.so that the
 * binding specs load into LuaJIT. Must not know sessions or policies. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "base64.h"
#include "lua_bind.h"

/* Same bound as policy.h; kept here so the module stands alone. */
#define MECHANISM_NAME_MAX 64

bool lbind_is_udata(lua_State *L, int idx, const char *tname)
{
    if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return false;
    luaL_getmetatable(L, tname);
    bool same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

struct getfields_keys {
    const char *const *keys;
    int n;
};

static int getfields_protected(lua_State *L)
{
    const struct getfields_keys *k = lua_touserdata(L, 2);
    for (int i = 0; i < k->n; i++) lua_getfield(L, 1, k->keys[i]);
    return k->n;
}

int lbind_getfields(lua_State *L, int idx, const char *const *keys, int n)
{
    if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
    if (lua_type(L, idx) == LUA_TTABLE && !lua_getmetatable(L, idx)) {
        /* A plain table (the usual session and envelope): reading it runs
         * no script code and cannot fail, so it needs no protected call,
         * which costs more than the reads themselves. */
        for (int i = 0; i < n; i++) lua_getfield(L, idx, keys[i]);
        return 0;
    }
    struct getfields_keys k = {keys, n};
    /* The C function is made once per state and kept in the registry: this
     * runs after every hook, and a fresh closure each time is garbage. */
    lua_pushlightuserdata(L, (void *)getfields_protected);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        lua_pushcfunction(L, getfields_protected);
        lua_pushlightuserdata(L, (void *)getfields_protected);
        lua_pushvalue(L, -2);
        lua_rawset(L, LUA_REGISTRYINDEX);
    }
    lua_pushvalue(L, idx);
    lua_pushlightuserdata(L, &k);
    return lua_pcall(L, 2, n, 0);
}

void lbind_rawsetfield(lua_State *L, int idx, const char *key)
{
    if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
    lua_pushstring(L, key);
    lua_insert(L, -2);
    lua_rawset(L, idx);
}

void lbind_rawgetfield(lua_State *L, int idx, const char *key)
{
    if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
    lua_pushstring(L, key);
    lua_rawget(L, idx);
}

void lbind_push_quoted(lua_State *L, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            luaL_addchar(&b, '\\');
            luaL_addchar(&b, (char)c);
        } else if (c < 0x20 || c >= 0x7f) {
            char esc[5] = {'\\', 'x', hex[c >> 4], hex[c & 15], 0};
            luaL_addstring(&b, esc);
        } else luaL_addchar(&b, (char)c);
    }
    luaL_addchar(&b, '"');
    luaL_pushresult(&b);
}

bool lbind_is_missing(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TUSERDATA) return false;
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    lua_getfield(L, LUA_REGISTRYINDEX, MISSING_KEY);
    bool same = lua_rawequal(L, -1, idx);
    lua_pop(L, 1);
    return same;
}

void lbind_push_mechanism_name(lua_State *L, int idx)
{
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    lua_getfield(L, LUA_REGISTRYINDEX, MECHANISM_NAMES_KEY);
    lua_pushvalue(L, idx);
    lua_rawget(L, -2);
    lua_remove(L, -2);
}

/* Upper-cases a mechanism name, then validates it (aiosmtpd's
 * VALID_AUTHMECH), so the error shows the name upper-cased as aiosmtpd does. */
static bool mechanism_name_valid(char *name, size_t n)
{
    for (size_t i = 0; i < n && name[i]; i++) name[i] = (char)toupper((unsigned char)name[i]);
    if (n == 0 || n >= MECHANISM_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int mark_mechanism(lua_State *L, int fn_idx, int name_idx)
{
    luaL_checktype(L, fn_idx, LUA_TFUNCTION);
    lua_getfield(L, LUA_REGISTRYINDEX, MECHANISM_NAMES_KEY);
    lua_pushvalue(L, fn_idx);
    lua_pushvalue(L, name_idx);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_pushvalue(L, fn_idx);
    return 1;
}

static int l_auth_mechanism_decorate(lua_State *L)
{
    return mark_mechanism(L, 1, lua_upvalueindex(1));
}

/* smtpd.auth_mechanism(name, fn) → fn; smtpd.auth_mechanism(name) → a
 * function that marks its argument (aiosmtpd's decorator form). */
static int l_auth_mechanism(lua_State *L)
{
    size_t n;
    const char *raw = luaL_checklstring(L, 1, &n);
    char name[MECHANISM_NAME_MAX + 1];
    size_t copy = n < MECHANISM_NAME_MAX ? n : MECHANISM_NAME_MAX;
    memcpy(name, raw, copy);
    name[copy] = '\0';
    if (memchr(raw, '\0', n) || !mechanism_name_valid(name, n))
        return luaL_error(L, "Invalid AUTH mechanism name: %s", name);
    bool decorator_form = lua_isnoneornil(L, 2);
    lua_settop(L, 2);
    lua_pushstring(L, name);
    if (decorator_form) {
        lua_pushcclosure(L, l_auth_mechanism_decorate, 1);
        return 1;
    }
    return mark_mechanism(L, 2, 3);
}

/* smtpd.b64decode(s) → bytes, or nil if s is not strict base64. */
static int l_b64decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    size_t max = base64_decoded_max(n);
    uint8_t *out = lua_newuserdata(L, max ? max : 1);
    ssize_t got = base64_decode_strict(s, n, out);
    if (got < 0) return 0;
    lua_pushlstring(L, (const char *)out, (size_t)got);
    return 1;
}

/* smtpd.b64encode(s) → base64 text. */
static int l_b64encode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char *out = lua_newuserdata(L, base64_encoded_len(n) + 1);
    size_t len = base64_encode((const uint8_t *)s, n, out);
    lua_pushlstring(L, out, len);
    return 1;
}

static int l_missing_tostring(lua_State *L)
{
    lua_pushliteral(L, "MISSING");
    return 1;
}

static int l_null_tostring(lua_State *L)
{
    lua_pushliteral(L, "null");
    return 1;
}

/* A unique value kept in the registry under key: a one-byte userdata whose
 * tostring is name and whose metatable is locked. */
static void push_sentinel(lua_State *L, const char *key, const char *name, lua_CFunction tostring)
{
    lua_getfield(L, LUA_REGISTRYINDEX, key);
    if (!lua_isnil(L, -1)) return;
    lua_pop(L, 1);
    lua_newuserdata(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, key);
}

/* Fields of the module that are Lua library modules (lua/smtpd/NAME.lua,
 * embedded in the binary), loaded with require on first use so a script
 * that never touches them pays nothing. */
static const char *const lazy_modules[] = {"redis", "client", "handlers", NULL};

static int l_smtpd_index(lua_State *L)
{
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
    for (int i = 0; k && lazy_modules[i]; i++) {
        if (strcmp(k, lazy_modules[i])) continue;
        lua_getglobal(L, "require");
        lua_pushfstring(L, "smtpd.%s", k);
        lua_call(L, 1, 1);
        lua_pushvalue(L, 2);
        lua_pushvalue(L, -2);
        lua_rawset(L, 1); /* later reads find it without the metamethod */
        return 1;
    }
    return 0;
}

int luaopen_smtpd(lua_State *L)
{
    l_authresult_register(L);
    l_loginpassword_register(L);

    lua_newtable(L); /* the module */
    lua_pushcfunction(L, l_authresult_new);
    lua_setfield(L, -2, "AuthResult");
    lua_pushcfunction(L, l_loginpassword_new);
    lua_setfield(L, -2, "LoginPassword");
    lua_pushcfunction(L, l_auth_mechanism);
    lua_setfield(L, -2, "auth_mechanism");
    lua_pushcfunction(L, l_b64decode);
    lua_setfield(L, -2, "b64decode");
    lua_pushcfunction(L, l_b64encode);
    lua_setfield(L, -2, "b64encode");
    lua_pushliteral(L, LUASMTPD_VERSION);
    lua_setfield(L, -2, "_VERSION");
    l_authdata_register(L);
    lua_pushcfunction(L, l_authdata_new);
    lua_setfield(L, -2, "auth_data");
    lua_pushcfunction(L, l_loginpassword_set_verify);
    lua_setfield(L, -2, "_loginpassword_verify");
    l_crypto_register(L);

    push_sentinel(L, MISSING_KEY, "MISSING", l_missing_tostring);
    lua_setfield(L, -2, "MISSING");
    /* smtpd.null: a nil bulk or array in a Redis reply (async-api.md 8), a
     * value where nil would end an array. */
    push_sentinel(L, NULL_KEY, "null", l_null_tostring);
    lua_setfield(L, -2, "null");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_smtpd_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);

    lua_getfield(L, LUA_REGISTRYINDEX, MECHANISM_NAMES_KEY);
    if (lua_isnil(L, -1)) {
        lua_newtable(L); /* weak keys: marking a function must not keep it alive */
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, MECHANISM_NAMES_KEY);
    }
    lua_pop(L, 1);
    return 1;
}
