/* l_sqlite.h — smtpd.sqlite (async-api.md 6): SQLite statements on the
 * thread pool. */
#ifndef LUASMTPD_L_SQLITE_H
#define LUASMTPD_L_SQLITE_H

#include <lua.h>

#define L_SQLITE_DB_MT "smtpd.sqlite.db"

/* Adds smtpd.sqlite to the state's smtpd module (the server side only). */
void l_sqlite_register(lua_State *L);

#endif
