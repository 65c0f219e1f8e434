/* dns.h — asynchronous DNS on the libev loop with c-ares (async-api.md 5).
 *
 * A resolver is one c-ares channel driven by ev_io watchers (one per socket
 * c-ares opens, through its socket-state callback) and one ev_timer for
 * c-ares's own retransmissions; no thread per query and no blocking call.
 * Every query has its own ev_timer for the whole query (`timeout`), so a
 * caller gets DNS_TIMEOUT on time whatever c-ares's tries do. Answers are
 * cached by (type, name) for their TTL (negative answers for the SOA's
 * negative TTL, RFC 2308), at most `cache_size` entries, least recently
 * used out first.
 *
 * Resolvers are shared in the process: dns_resolver_get returns the live
 * resolver with the same configuration on the same loop, or makes one. A
 * resolver lives while someone holds it or a query of it is in flight.
 *
 * C callbacks only: this layer knows no lua_State. */
#ifndef LUASMTPD_DNS_H
#define LUASMTPD_DNS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNS_DEFAULT_TIMEOUT 5.0
#define DNS_DEFAULT_CACHE_SIZE 10000L
/* RFC 1035 2.3.4 (names), 3.2.1 (labels). */
#define DNS_NAME_MAX 253
#define DNS_LABEL_MAX 63
/* Records kept of one answer; more are dropped (an SMTP policy never needs
 * them and a hostile zone must not make us allocate without bound). */
#define DNS_MAX_RECORDS 256
/* A cached answer is kept at most this long whatever its TTL says. */
#define DNS_MAX_TTL 86400u

enum dns_type { DNS_A, DNS_AAAA, DNS_MX, DNS_TXT, DNS_PTR, DNS_CNAME, DNS_NS, DNS_SRV };

enum dns_status {
    DNS_OK,
    DNS_NOTFOUND, /* NXDOMAIN */
    DNS_NODATA,   /* the name exists, no record of that type */
    DNS_TIMEOUT,
    DNS_SERVFAIL, /* SERVFAIL, REFUSED, no server answering, a malformed answer */
    DNS_BADNAME,
};

/* The contract's error strings: "name not found", "no data", "timeout",
 * "server failure", "bad name" (NULL for DNS_OK). Static. */
const char *dns_strerror(enum dns_status st);

/* "A", "AAAA", ... -> type; false if unknown. */
bool dns_type_parse(const char *s, enum dns_type *out);
const char *dns_type_name(enum dns_type t);

/* One record. `data` is NUL-terminated and `len` long (TXT may hold NUL
 * bytes): the address text (A/AAAA), the exchange (MX), the text of one
 * record's strings joined (TXT), the name (PTR/CNAME/NS), the target (SRV).
 * Names carry no trailing dot. */
struct dns_record {
    uint32_t ttl;
    const char *data;
    size_t len;
    unsigned priority; /* MX preference, SRV priority */
    unsigned weight;   /* SRV */
    unsigned port;     /* SRV */
};

/* One block: the records and their strings. */
struct dns_answer {
    size_t n;
    size_t size; /* bytes of the whole block */
    struct dns_record rec[];
};

/* Parses a DNS reply of a query of type t into *out (malloc'ed, one block;
 * free() it) with c-ares's parsers (ares_parse_*_reply) and, for the TTLs
 * and CNAME, a walk of the answer section with ares_expand_name. Returns
 * DNS_OK (and *out with n >= 1), DNS_NODATA, or DNS_SERVFAIL for a reply
 * that does not parse. Pure: the fuzz target calls it on arbitrary bytes. */
enum dns_status dns_parse_answer(enum dns_type t, const unsigned char *abuf, int alen,
                                 struct dns_answer **out);
/* A copy of a (one malloc'ed block; free() it), or NULL. */
struct dns_answer *dns_answer_copy(const struct dns_answer *a);

/* The negative TTL of a reply (RFC 2308 5: min(SOA TTL, SOA MINIMUM) of the
 * authority section's SOA), or false if it has none or does not parse. */
bool dns_negative_ttl(const unsigned char *abuf, int alen, uint32_t *ttl);

/* Checks a query name: 1..253 octets (a trailing dot allowed), labels of
 * 1..63, printable ASCII without space or backslash; "." alone is the root. */
bool dns_name_valid(const char *name);

/* Checks a `resolver` option: comma-separated servers, each an IPv4
 * address with an optional :port, or an IPv6 address, bare or as
 * [addr]:port. On error writes why to err. */
bool dns_servers_valid(const char *csv, char *err, size_t errlen);

struct dns_config {
    const char *servers; /* "127.0.0.1:5353,..." or NULL: /etc/resolv.conf */
    double timeout;      /* seconds for a whole query, > 0 */
    long cache_size;     /* entries, 0 = no cache */
};

struct dns_resolver;

/* The process's resolver for this configuration on loop: a live one with
 * the same settings, or a new one. The caller holds it (dns_resolver_put).
 * NULL with err set if c-ares cannot be set up. */
struct dns_resolver *dns_resolver_get(struct ev_loop *loop, const struct dns_config *c, char *err,
                                      size_t errlen);
void dns_resolver_put(struct dns_resolver *r);

/* Entries in r's cache now (for tests and logs). */
size_t dns_cache_count(const struct dns_resolver *r);

/* The result of a query: st, and for DNS_OK the answer, valid only during
 * the call (copy what you keep). */
typedef void (*dns_query_cb)(void *ud, enum dns_status st, const struct dns_answer *a);

struct dns_query;

/* Asks for records of type t of name. Returns NULL when cb was already
 * called, before dns_query returned: a cached answer, a bad name
 * (DNS_BADNAME), or a query c-ares refused at once. Otherwise returns a
 * handle and calls cb exactly once later from the loop, unless
 * dns_query_cancel comes first. A cached answer's TTLs are what is left
 * of them. */
struct dns_query *dns_query(struct dns_resolver *r, const char *name, enum dns_type t,
                            dns_query_cb cb, void *ud);
/* Detaches q: cb is never called; if c-ares still answers, the answer only
 * goes into the cache. q is invalid after. */
void dns_query_cancel(struct dns_query *q);

/* Host lookup for outbound connections (the cosockets' connect): the A and
 * then the AAAA addresses of name, asked in parallel through r and its
 * cache, reported in that order. An IP literal is its own answer;
 * "localhost" and names under ".localhost" are 127.0.0.1 and ::1 (RFC 6761
 * 6.3), since /etc/hosts is not consulted. done gets the addresses as text
 * (n >= 1, err NULL) or n = 0 and err, one of dns_strerror's strings
 * ("name not found" when neither type has an address); ips is valid only
 * during the call. Returns NULL when done was already called, before
 * dns_lookup_host returned (a literal, a cached name, a bad name);
 * otherwise a handle, and done is called exactly once later unless
 * dns_lookup_cancel comes first. */
typedef void (*dns_host_cb)(void *ud, const char *const *ips, int n, const char *err);
struct dns_lookup;
struct dns_lookup *dns_lookup_host(struct dns_resolver *r, const char *name, dns_host_cb done,
                                   void *ud);
/* Detaches l: done is never called; l is invalid after. */
void dns_lookup_cancel(struct dns_lookup *l);

/* The reverse-lookup name of an IPv4 (4 octets) or IPv6 (16) address:
 * "d.c.b.a.in-addr.arpa" / the 32 nibbles ".ip6.arpa", or with zone
 * instead of the arpa suffix (DNSBL, RFC 5782 2.1, 2.4). Writes at most
 * cap bytes; false if they do not fit. */
bool dns_reverse_name(const unsigned char *addr, int addrlen, const char *zone, char *out,
                      size_t cap);

#endif
