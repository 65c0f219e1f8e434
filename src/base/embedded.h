/* embedded.h — Lua files compiled into the binary by cmake/Embed.cmake. */
#ifndef LUASMTPD_EMBEDDED_H
#define LUASMTPD_EMBEDDED_H

#include <stddef.h>

struct embedded_file {
    const char *name; /* module name, e.g. "smtpd.mechanisms" */
    const char *data;
    size_t size;
};

/* Ends with an entry whose name is NULL. */
extern const struct embedded_file embedded_files[];

#endif
