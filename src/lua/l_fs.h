/* l_fs.h — smtpd.fs: durable local delivery off the loop (delivery.md 3). */
#ifndef LUASMTPD_L_FS_H
#define LUASMTPD_L_FS_H

#include <lua.h>

/* Adds smtpd.fs (deliver_maildir, append) and smtpd.log to the state's
 * smtpd module (the server side only). */
void l_fs_register(lua_State *L);

#endif
