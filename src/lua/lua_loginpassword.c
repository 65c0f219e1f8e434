/* lua_loginpassword.c — the LoginPassword class: what built-in PLAIN and
 * LOGIN hand to the authenticator (auth-api.md 2). A userdata so that
 * tostring() never shows the password. Fields are raw byte strings kept in
 * the userdata's environment table. */
#include "lua_bind.h"

#include <string.h>

static void check_loginpassword(lua_State *L, int idx)
{
    if (!lbind_is_udata(L, idx, LOGINPASSWORD_MT))
        luaL_error(L, "expected LoginPassword, got %s", luaL_typename(L, idx));
}

/* smtpd.LoginPassword(login, password[, authzid]) */
int l_loginpassword_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TSTRING);
    luaL_checktype(L, 2, LUA_TSTRING);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TSTRING);
    lua_settop(L, 3); /* slot 3 is the authzid (or nil) from here on */
    lua_newuserdata(L, 1);
    lua_createtable(L, 0, 3);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "login");
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "password");
    if (!lua_isnoneornil(L, 3)) {
        lua_pushvalue(L, 3);
        lua_setfield(L, -2, "authzid");
    }
    lua_setfenv(L, -2);
    luaL_getmetatable(L, LOGINPASSWORD_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_loginpassword_index(lua_State *L)
{
    check_loginpassword(L, 1);
    /* verify: the class-wide method the mechanisms module installed. */
    if (lua_type(L, 2) == LUA_TSTRING && !strcmp(lua_tostring(L, 2), "verify")) {
        lua_getfield(L, LUA_REGISTRYINDEX, LOGINPASSWORD_VERIFY_KEY);
        return 1;
    }
    lua_getfenv(L, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int l_loginpassword_tostring(lua_State *L)
{
    check_loginpassword(L, 1);
    lua_getfenv(L, 1);
    lua_getfield(L, -1, "login");
    size_t n;
    const char *login = lua_tolstring(L, -1, &n);
    lua_pushliteral(L, "LoginPassword(login=");
    lbind_push_quoted(L, login, n);
    lua_pushliteral(L, ", password=...)");
    lua_concat(L, 3);
    return 1;
}

/* Two LoginPassword values are equal when login and password are. */
static int l_loginpassword_eq(lua_State *L)
{
    check_loginpassword(L, 1);
    check_loginpassword(L, 2);
    lua_getfenv(L, 1);
    lua_getfenv(L, 2);
    bool eq = true;
    for (int i = 0; i < 2 && eq; i++) {
        const char *k = i == 0 ? "login" : "password";
        lua_getfield(L, 3, k);
        lua_getfield(L, 4, k);
        eq = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    lua_pushboolean(L, eq);
    return 1;
}

void l_loginpassword_register(lua_State *L)
{
    luaL_newmetatable(L, LOGINPASSWORD_MT);
    lua_pushcfunction(L, l_loginpassword_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_loginpassword_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, l_loginpassword_eq);
    lua_setfield(L, -2, "__eq");
    lua_pushliteral(L, "LoginPassword");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}
