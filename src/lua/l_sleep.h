/* l_sleep.h — smtpd.sleep(seconds), a wait kind in one file. */
#ifndef LUASMTPD_L_SLEEP_H
#define LUASMTPD_L_SLEEP_H

#include <lua.h>

/* Adds sleep to the state's smtpd module (the server side only: the
 * module built for spec/bindings has no hooks to suspend). */
void l_sleep_register(lua_State *L);

#endif
