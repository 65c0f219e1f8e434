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

/* The resolver's side of connect to a name (async-api.md 5). In
 * sock:connect, where a name is found, the binding starts its query
 * (dns_lookup_host) with a callback and returns l_socket_resolve_wait(L, sock, cancel, query): the hook waits on
 * the socket's own record, under the connect timeout, and cancel(query)
 * detaches the query if the wait ends first (timeout, disconnect). The
 * query's callback calls l_socket_resolved with the addresses (A and AAAA
 * answers as netc_addr, port filled in), tried in order, or with err
 * ("name not found", ...); after cancel(query) it must not. The socket is
 * argument 1 of the binding (it is anchored from there). The hook resumes with true or nil, err
 * once a candidate connects or all fail. Nothing happens if the wait has ended. */
struct l_socket;
struct l_socket *l_socket_check(lua_State *L, int idx);
int l_socket_resolve_wait(lua_State *L, struct l_socket *s, void (*cancel)(void *query),
                          void *query);
void l_socket_resolved(struct l_socket *s, const struct netc_addr *addrs, size_t n,
                       const char *err);

#endif
