/* lua_bind.h — what the Lua binding files offer each other and the C side:
 * class registration, type checks, and the MISSING sentinel. */
#ifndef LUASMTPD_LUA_BIND_H
#define LUASMTPD_LUA_BIND_H

#include <stdbool.h>

#include <lauxlib.h>
#include <lua.h>

#define AUTHRESULT_MT "smtpd.AuthResult"
#define LOGINPASSWORD_MT "smtpd.LoginPassword"
#define SERVER_MT "smtpd.server"
#define CRAMMD5_MT "smtpd.CramMD5"
#define SCRAM_MT "smtpd.Scram"
#define OAUTHTOKEN_MT "smtpd.OAuthToken"
#define EXTERNAL_MT "smtpd.External"
#define LOGINPASSWORD_VERIFY_KEY "smtpd.LoginPassword.verify"
#define TIMER_MT "smtpd.timer" /* a handle of smtpd.timer.at/every (l_timer.c) */
#define SOCKET_MT "smtpd.socket.tcp"
#define SOCKET_SESSION_MT "smtpd.socket.session"
#define MISSING_KEY "smtpd.MISSING"
#define NULL_KEY "smtpd.null"
#define MECHANISM_NAMES_KEY "smtpd.mechanism_names"

/* lua_authresult.c */
void l_authresult_register(lua_State *L);
int l_authresult_new(lua_State *L);
bool l_authresult_is(lua_State *L, int idx);

/* lua_loginpassword.c */
void l_loginpassword_register(lua_State *L);
int l_loginpassword_new(lua_State *L);

/* lua_authdata.c: the auth_data classes of the shipped mechanisms
 * (metatables), smtpd.auth_data(class, fields, verify) and
 * smtpd._loginpassword_verify(fn). */
void l_authdata_register(lua_State *L);
int l_authdata_new(lua_State *L);
int l_loginpassword_set_verify(lua_State *L);
/* True for a CramMD5, Scram, OAuthToken or External. */
bool l_authdata_is(lua_State *L, int idx);

/* l_crypto.c: smtpd.crypto (hashes, HMAC, PBKDF2, constant-time compare,
 * OS random bytes), set on the module on top. */
void l_crypto_register(lua_State *L);

/* lua_smtpd.c */
int luaopen_smtpd(lua_State *L);
/* True if the value at idx is smtpd.MISSING. */
bool lbind_is_missing(lua_State *L, int idx);
/* Pushes the mechanism name given to smtpd.auth_mechanism() for the
 * function at idx, or nil. */
void lbind_push_mechanism_name(lua_State *L, int idx);
/* True if the userdata at idx has the metatable registered as tname. */
bool lbind_is_udata(lua_State *L, int idx, const char *tname);
/* Pushes a Lua-quoted rendering of s (like %q, but one line) for tostring. */
void lbind_push_quoted(lua_State *L, const char *s, size_t n);

/* Pushes t[keys[0]] .. t[keys[n-1]] for the table (or any value) at idx,
 * through its metamethods but inside a protected call, since a script's
 * __index may raise (a table without a metatable is read directly).
 * Returns 0, or a lua_pcall error code with the error message pushed
 * instead of the values. */
int lbind_getfields(lua_State *L, int idx, const char *const *keys, int n);
/* t[key] = value on top (popped) / pushes t[key], both raw: for the fields C
 * owns, where a script's metamethods have no say and cannot raise. */
void lbind_rawsetfield(lua_State *L, int idx, const char *key);
void lbind_rawgetfield(lua_State *L, int idx, const char *key);

/* lua_server.c */
void l_server_register(lua_State *L);

#endif
