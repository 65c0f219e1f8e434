/* script_store.h — the handler script the master last validated, kept in a
 * memfd that every worker inherits, so a worker started later (or told to
 * reload) runs exactly the bytes the master checked, not whatever the file
 * holds by then. The master is the only writer. */
#ifndef LUASMTPD_SCRIPT_STORE_H
#define LUASMTPD_SCRIPT_STORE_H

#include <stdbool.h>
#include <stddef.h>

/* A new, empty store (close-on-exec; the master clears that for workers).
 * Returns the descriptor, or -1 with a message in err. */
int script_store_create(char *err, size_t errlen);

/* Replaces the stored script. Readers never see a half-written one. */
bool script_store_write(int fd, const char *src, size_t len, char *err, size_t errlen);

/* A malloc'd copy of the stored script (NUL-terminated; *len excludes the
 * NUL), or NULL with a message in err. The caller frees it. */
char *script_store_read(int fd, size_t *len, char *err, size_t errlen);

#endif
