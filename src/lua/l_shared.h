/* l_shared.h — smtpd.shared.NAME, the shared dictionaries (async-api.md 7). */
#ifndef LUASMTPD_L_SHARED_H
#define LUASMTPD_L_SHARED_H

#include <lua.h>

/* Adds the `shared` table to the state's smtpd module. Its dictionaries are
 * this process's (shdict_process_region), set by the app layer at start-up. */
void l_shared_register(lua_State *L);

#endif
