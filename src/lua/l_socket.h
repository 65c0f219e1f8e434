/* l_socket.h — smtpd.socket.tcp(): TCP, TLS and UNIX cosockets, a wait kind
 * in one file (async-api.md 4), with the per-generation keepalive pools. */
#ifndef LUASMTPD_L_SOCKET_H
#define LUASMTPD_L_SOCKET_H

#include <stddef.h>

#include <lua.h>

#include "client.h"

/* Adds smtpd.socket (tcp) to the state's smtpd module (the server side
 * only: the module built for spec/bindings has no hooks to suspend). */
void l_socket_register(lua_State *L);

/* The socket methods' default read limit when the vm sets none. */
#define SOCKET_LINE_MAX_DEFAULT 65536

/* For the DNS integration: continues sock:connect on the socket userdata at
 * stack index idx of L (a hook's coroutine, inside the binding) with the
 * candidate addresses, tried in order (a literal is a list of one). Returns
 * as sock:connect does: pushes true or nil, err and returns their count, or
 * yields until one connects, all fail or the connect timeout passes.
 * Yields. */
int l_socket_connect_addrs(lua_State *L, int idx, const struct netc_addr *addrs, size_t n);

#endif
