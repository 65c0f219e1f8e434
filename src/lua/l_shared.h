/* l_shared.h — smtpd.shared.NAME, the shared dictionaries (async-api.md 7). */
#ifndef LUASMTPD_L_SHARED_H
#define LUASMTPD_L_SHARED_H

#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

/* Adds the `shared` table to the state's smtpd module. Its dictionaries are
 * this process's (shdict_process_region), set by the app layer at start-up. */
void l_shared_register(lua_State *L);

/* Start-up, before the first generation loads in a process that creates
 * the dictionaries (a single process, the master, -t): calls at its top
 * level go to provisional dictionaries, as the real ones are made from the
 * options that top level returns. */
void l_shared_startup_begin(void);
/* The real dictionaries exist (shdict_process_region; NULL if none): copies
 * what the top level stored into them, frees the provisional ones, and
 * ends provisional mode. False with a message in err when the top level
 * used a dictionary the option shared_dict does not declare. */
bool l_shared_startup_end(char *err, size_t errlen);

#endif
