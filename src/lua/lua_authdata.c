/* lua_authdata.c — the auth_data classes of the shipped mechanisms
 * (mechanisms.md 1): CramMD5, Scram, OAuthToken, External. Each is a
 * userdata whose fields live in its environment table, with the
 * mechanism's `verify` closure beside them; tostring() shows only the
 * login (or authzid), never a token, a challenge response or a key. Also
 * LoginPassword's class-wide `verify` (a Lua function the mechanisms module
 * installs: it yields on the thread pool, which a C method could not).
 * Must not know SMTP: the closures do the talking. */
#include "lua_bind.h"

#include <string.h>

struct authdata_class {
    const char *name;
    const char *mt;
    const char *const *fields; /* readable by name */
    const char *shown;         /* the one field tostring shows */
};

static const char *const cram_fields[] = {"login", "challenge", NULL};
static const char *const scram_fields[] = {"login", "authzid", "mechanism", NULL};
static const char *const oauth_fields[] = {"login", "token", "host", "port", "mechanism", NULL};
static const char *const external_fields[] = {"authzid", "peercert", NULL};

static const struct authdata_class classes[] = {
    {"CramMD5", CRAMMD5_MT, cram_fields, "login"},
    {"Scram", SCRAM_MT, scram_fields, "login"},
    {"OAuthToken", OAUTHTOKEN_MT, oauth_fields, "login"},
    {"External", EXTERNAL_MT, external_fields, "authzid"},
};
#define N_CLASSES (sizeof classes / sizeof classes[0])

static const struct authdata_class *class_of(lua_State *L, int idx)
{
    for (size_t i = 0; i < N_CLASSES; i++)
        if (lbind_is_udata(L, idx, classes[i].mt)) return &classes[i];
    return NULL;
}

bool l_authdata_is(lua_State *L, int idx)
{
    return class_of(L, idx) != NULL;
}

/* smtpd.auth_data(class, fields, verify) → a CramMD5 / Scram / OAuthToken /
 * External holding the named fields (others are ignored) and verify. */
int l_authdata_new(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    const struct authdata_class *c = NULL;
    for (size_t i = 0; i < N_CLASSES; i++)
        if (!strcmp(classes[i].name, name)) c = &classes[i];
    if (!c)
        return luaL_error(L,
                          "auth_data: unknown class '%s' (expected CramMD5, Scram, OAuthToken "
                          "or External)",
                          name);
    lua_newuserdata(L, 1);
    lua_createtable(L, 0, 6);
    for (const char *const *f = c->fields; *f; f++) {
        lua_getfield(L, 2, *f);
        lua_setfield(L, -2, *f);
    }
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "verify");
    lua_setfenv(L, -2);
    luaL_getmetatable(L, c->mt);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_authdata_index(lua_State *L)
{
    const struct authdata_class *c = class_of(L, 1);
    if (!c) return luaL_error(L, "expected auth_data, got %s", luaL_typename(L, 1));
    const char *key = lua_tostring(L, 2);
    bool known = key && !strcmp(key, "verify");
    for (const char *const *f = c->fields; key && !known && *f; f++)
        known = !strcmp(*f, key);
    if (!known) return 0;
    lua_getfenv(L, 1);
    lua_getfield(L, -1, key);
    return 1;
}

static int l_authdata_tostring(lua_State *L)
{
    const struct authdata_class *c = class_of(L, 1);
    if (!c) return luaL_error(L, "expected auth_data, got %s", luaL_typename(L, 1));
    lua_getfenv(L, 1);
    lua_getfield(L, -1, c->shown);
    lua_pushfstring(L, "%s(%s=", c->name, c->shown);
    if (lua_type(L, -2) == LUA_TSTRING) {
        size_t n;
        const char *v = lua_tolstring(L, -2, &n);
        lbind_push_quoted(L, v, n);
    } else
        lua_pushliteral(L, "nil");
    lua_pushliteral(L, ", ...)");
    lua_concat(L, 3);
    return 1;
}

/* smtpd._loginpassword_verify(fn): installs LoginPassword:verify. */
int l_loginpassword_set_verify(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_pushvalue(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, LOGINPASSWORD_VERIFY_KEY);
    return 0;
}

void l_authdata_register(lua_State *L)
{
    for (size_t i = 0; i < N_CLASSES; i++) {
        luaL_newmetatable(L, classes[i].mt);
        lua_pushcfunction(L, l_authdata_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_authdata_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushstring(L, classes[i].name);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
}
