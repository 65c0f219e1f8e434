/* lua_authresult.c — the AuthResult class: what a mechanism or an
 * authenticator returns (auth-api.md 2 and 4.4). A userdata so that
 * tostring() is ours and can never show auth_data, which often holds
 * credentials. message and auth_data live in the userdata's environment
 * table. Must not interpret results (auth.c does). */
#include "lua_bind.h"

#include <string.h>

struct authresult {
    bool success;
    bool handled;
};

bool l_authresult_is(lua_State *L, int idx) { return lbind_is_udata(L, idx, AUTHRESULT_MT); }

static struct authresult *check_authresult(lua_State *L, int idx)
{
    if (!l_authresult_is(L, idx))
        luaL_error(L, "expected AuthResult, got %s", luaL_typename(L, idx));
    return lua_touserdata(L, idx);
}

/* smtpd.AuthResult{ success = bool, handled = bool, message = string, auth_data = any } */
int l_authresult_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "success");
    if (lua_type(L, -1) != LUA_TBOOLEAN)
        return luaL_error(L, "AuthResult: success must be a boolean, got %s",
                          luaL_typename(L, -1));
    bool success = lua_toboolean(L, -1);
    lua_getfield(L, 1, "handled");
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN)
        return luaL_error(L, "AuthResult: handled must be a boolean, got %s",
                          luaL_typename(L, -1));
    bool handled = lua_isnil(L, -1) ? true : lua_toboolean(L, -1);
    lua_getfield(L, 1, "message");
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "AuthResult: message must be a string, got %s",
                          luaL_typename(L, -1));
    lua_pop(L, 3);

    struct authresult *r = lua_newuserdata(L, sizeof *r);
    r->success = success;
    r->handled = handled;
    lua_createtable(L, 0, 2);
    lua_getfield(L, 1, "message");
    lua_setfield(L, -2, "message");
    lua_getfield(L, 1, "auth_data");
    lua_setfield(L, -2, "auth_data");
    lua_setfenv(L, -2);
    luaL_getmetatable(L, AUTHRESULT_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_authresult_index(lua_State *L)
{
    struct authresult *r = check_authresult(L, 1);
    const char *key = luaL_checkstring(L, 2);
    if (!strcmp(key, "success")) lua_pushboolean(L, r->success);
    else if (!strcmp(key, "handled")) lua_pushboolean(L, r->handled);
    else if (!strcmp(key, "message") || !strcmp(key, "auth_data")) {
        lua_getfenv(L, 1);
        lua_getfield(L, -1, key);
    } else lua_pushnil(L);
    return 1;
}

static int l_authresult_tostring(lua_State *L)
{
    struct authresult *r = check_authresult(L, 1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, r->success ? "AuthResult(success=true" : "AuthResult(success=false");
    luaL_addstring(&b, r->handled ? ", handled=true, message=" : ", handled=false, message=");
    lua_getfenv(L, 1);
    lua_getfield(L, -1, "message");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 2);
        luaL_addstring(&b, "nil");
    } else {
        size_t n;
        const char *m = lua_tolstring(L, -1, &n);
        lbind_push_quoted(L, m, n);
        lua_replace(L, -3);
        lua_pop(L, 1);
        luaL_addvalue(&b);
    }
    /* auth_data is never shown: it usually carries the credentials. */
    luaL_addstring(&b, ", auth_data=...)");
    luaL_pushresult(&b);
    return 1;
}

void l_authresult_register(lua_State *L)
{
    luaL_newmetatable(L, AUTHRESULT_MT);
    lua_pushcfunction(L, l_authresult_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_authresult_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "AuthResult");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}
