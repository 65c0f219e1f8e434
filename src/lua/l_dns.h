/* l_dns.h — smtpd.dns.query / reverse / dnsbl (async-api.md 5): wait kinds
 * on the hook layer over the c-ares resolver of src/async/dns.h. */
#ifndef LUASMTPD_L_DNS_H
#define LUASMTPD_L_DNS_H

#include <stddef.h>

#include <lua.h>

#include "dns.h"

struct vm;

/* Adds the `dns` table to the state's smtpd module (the server side only). */
void l_dns_register(lua_State *L);

/* The resolver a generation uses: made on first use on vm->loop with the
 * generation's options (vm->resolver, resolver_timeout,
 * resolver_cache_size) and shared by every generation with the same ones,
 * cache included. Borrowed: valid while vm is open (a query in flight
 * holds the resolver itself). NULL with err set if vm is not on a loop yet
 * or c-ares cannot be set up.
 *
 * For the cosockets' connect: resolve a name with
 *   struct dns_lookup *l = dns_lookup_host(l_dns_resolver(h->vm, ...), host, done, ud);
 * l == NULL means done already ran (a literal, a cached name, a bad name:
 * do not yield then); otherwise arm the wait with l and cancel it with
 * dns_lookup_cancel(l). See dns.h. */
struct dns_resolver *l_dns_resolver(struct vm *vm, char *err, size_t errlen);

#endif
