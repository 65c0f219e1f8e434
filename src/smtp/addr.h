/* addr.h — parsing the address argument of MAIL FROM: / RCPT TO: / VRFY the
 * way aiosmtpd 1.4 does (its _getaddr, built on Python's
 * email._header_value_parser get_angle_addr / get_addr_spec), so replies
 * match the reference byte for byte. Pure functions, no I/O, no allocation. */
#ifndef LUASMTPD_ADDR_H
#define LUASMTPD_ADDR_H

#include <stddef.h>

enum addr_status {
    ADDR_OK,        /* an address was parsed; see addr/rest */
    ADDR_EMPTY,     /* the argument was empty: aiosmtpd's ('', '') */
    ADDR_MALFORMED, /* aiosmtpd's (None, None): "553 5.1.3 Error: malformed address" */
};

struct addr_result {
    /* The addr-spec as aiosmtpd's address.addr_spec renders it (quoted local
     * parts re-quoted as Python does, "<>" for the null path), written into
     * the caller's buffer and NUL-terminated. */
    char *addr;
    size_t addr_len;
    /* What follows the address in the argument (the mail parameters), a
     * pointer into the input; not stripped, exactly like Python's `rest`. */
    const char *rest;
    size_t rest_len;
};

/* Parses arg[0..len). out->addr must point at a caller-owned buffer of
 * addr_cap bytes; an address that does not fit is ADDR_MALFORMED. */
enum addr_status addr_parse(const char *arg, size_t len, struct addr_result *out, size_t addr_cap);

#endif
