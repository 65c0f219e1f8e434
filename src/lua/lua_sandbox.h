/* lua_sandbox.h — limits on what a handler script can do to the process:
 * os.exit raises, finalizers a script installs cannot raise, and a Lua
 * panic is logged before the process aborts. */
#ifndef LUASMTPD_LUA_SANDBOX_H
#define LUASMTPD_LUA_SANDBOX_H

#include <lua.h>

/* Call once on a new state, after luaL_openlibs and before any script code. */
void l_sandbox_open(lua_State *L);

#endif
