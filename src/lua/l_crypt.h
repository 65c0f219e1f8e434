/* l_crypt.h — smtpd.crypt (async-api.md 6): verify and hash passwords on
 * the thread pool. */
#ifndef LUASMTPD_L_CRYPT_H
#define LUASMTPD_L_CRYPT_H

#include <lua.h>

/* Adds smtpd.crypt to the state's smtpd module (the server side only). */
void l_crypt_register(lua_State *L);

#endif
