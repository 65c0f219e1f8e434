/* dns.c — c-ares on the libev loop (dns.h): resolvers shared per
 * configuration, queries with their own deadline, the TTL cache, and the
 * conversion of c-ares's parsed replies into dns_answer blocks.
 *
 * Re-entrancy: c-ares calls our query callback from inside ares_query (an
 * immediate failure) and ares_process_fd; the callback may start queries or
 * drop the last hold on the resolver. So a resolver is only destroyed
 * outside every c-ares call (`depth`), and a query is only freed once
 * c-ares has let go of it (`in_ares`) and its caller has either had the
 * result or detached. Must not block: no getaddrinfo, no thread. Knows no
 * Lua. */
#include "dns.h"

#include <ares.h>
#include <arpa/inet.h>
#include <ctype.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* RFC 1035 3.2.2 / RFC 3596 / RFC 2782 type codes, and class IN. */
enum {
    RR_A = 1,
    RR_NS = 2,
    RR_CNAME = 5,
    RR_SOA = 6,
    RR_PTR = 12,
    RR_MX = 15,
    RR_TXT = 16,
    RR_AAAA = 28,
    RR_SRV = 33
};
#define RR_CLASS_IN 1
/* c-ares's own tries per server: short, since our timer bounds the query. */
#define DNS_ARES_TRIES 2
#define DNS_ARES_MIN_TIMEOUT_MS 100
/* Cache buckets at most (the entries are bounded by cache_size). */
#define DNS_CACHE_MAX_BUCKETS (1u << 20)

static const struct {
    const char *name;
    int rr;
} dns_types[] = {
    [DNS_A] = {"A", RR_A},       [DNS_AAAA] = {"AAAA", RR_AAAA}, [DNS_MX] = {"MX", RR_MX},
    [DNS_TXT] = {"TXT", RR_TXT}, [DNS_PTR] = {"PTR", RR_PTR},    [DNS_CNAME] = {"CNAME", RR_CNAME},
    [DNS_NS] = {"NS", RR_NS},    [DNS_SRV] = {"SRV", RR_SRV},
};
#define DNS_NTYPES (sizeof dns_types / sizeof dns_types[0])

const char *dns_strerror(enum dns_status st)
{
    switch (st) {
    case DNS_OK:
        return NULL;
    case DNS_NOTFOUND:
        return "name not found";
    case DNS_NODATA:
        return "no data";
    case DNS_TIMEOUT:
        return "timeout";
    case DNS_SERVFAIL:
        return "server failure";
    case DNS_BADNAME:
        return "bad name";
    }
    return "server failure";
}

bool dns_type_parse(const char *s, enum dns_type *out)
{
    for (size_t i = 0; i < DNS_NTYPES; i++) {
        if (!strcmp(s, dns_types[i].name)) {
            *out = (enum dns_type)i;
            return true;
        }
    }
    return false;
}

const char *dns_type_name(enum dns_type t)
{
    return dns_types[t].name;
}

/* ------------------------------------------------------------------------
 * Names */

bool dns_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 1 && name[0] == '.') return true;
    if (n > 0 && name[n - 1] == '.') n--;
    if (n == 0 || n > DNS_NAME_MAX) return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '.') {
            if (label == 0) return false;
            label = 0;
            continue;
        }
        if (c <= ' ' || c >= 0x7f || c == '\\') return false;
        if (++label > DNS_LABEL_MAX) return false;
    }
    return label > 0;
}

bool dns_reverse_name(const unsigned char *addr, int addrlen, const char *zone, char *out,
                      size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t used = 0;
    int w;
    if (addrlen == 4) {
        w = snprintf(out, cap, "%u.%u.%u.%u.", addr[3], addr[2], addr[1], addr[0]);
        if (w < 0 || (size_t)w >= cap) return false;
        used = (size_t)w;
        if (!zone) zone = "in-addr.arpa";
    } else if (addrlen == 16) {
        if (cap < 64 + 1) return false;
        for (int i = 15; i >= 0; i--) {
            out[used++] = hex[addr[i] & 0xf];
            out[used++] = '.';
            out[used++] = hex[addr[i] >> 4];
            out[used++] = '.';
        }
        if (!zone) zone = "ip6.arpa";
    } else {
        return false;
    }
    w = snprintf(out + used, cap - used, "%s", zone);
    return w >= 0 && (size_t)w < cap - used;
}

/* One server of a `resolver` list: "1.2.3.4", "1.2.3.4:53", "::1",
 * "[::1]:53". */
static bool dns_server_valid(const char *s, size_t n)
{
    char buf[64];
    unsigned char addr[16];
    if (n == 0 || n >= sizeof buf) return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    const char *host = buf, *port = NULL;
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (!close) return false;
        *close = '\0';
        host = buf + 1;
        if (close[1] == ':')
            port = close + 2;
        else if (close[1])
            return false;
        if (inet_pton(AF_INET6, host, addr) != 1) return false;
    } else if (inet_pton(AF_INET6, buf, addr) == 1) {
        return true;
    } else {
        char *colon = strchr(buf, ':');
        if (colon) {
            *colon = '\0';
            port = colon + 1;
        }
        if (inet_pton(AF_INET, host, addr) != 1) return false;
    }
    if (port) {
        char *end;
        long p = strtol(port, &end, 10);
        if (!*port || *end || p < 1 || p > 65535) return false;
    }
    return true;
}

bool dns_servers_valid(const char *csv, char *err, size_t errlen)
{
    const char *p = csv;
    if (!*p) {
        snprintf(err, errlen, "option 'resolver' must list at least one server");
        return false;
    }
    while (*p) {
        p += strspn(p, " ");
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m > 0 && p[m - 1] == ' ')
            m--;
        if (!dns_server_valid(p, m)) {
            snprintf(err, errlen,
                     "option 'resolver': bad server '%.*s' (expected an IP address with an "
                     "optional :port, e.g. \"127.0.0.1:5353\" or \"[::1]:53\")",
                     (int)(m > 64 ? 64 : m), p);
            return false;
        }
        p += n;
        if (*p == ',') p++;
    }
    return true;
}

/* ------------------------------------------------------------------------
 * Parsing: c-ares's parsers for the data, a walk of the sections (with
 * ares_expand_name, so c-ares's bounds checks apply) for TTLs, CNAME and
 * the SOA. */

struct dns_rr {
    int section; /* 0 answer, 1 authority, 2 additional */
    int type, cls;
    uint32_t ttl;
    const unsigned char *rdata;
    int rdlen;
};

typedef void (*dns_rr_visit)(void *ctx, const struct dns_rr *rr, const unsigned char *abuf,
                             int alen);

static bool dns_skip_name(const unsigned char **p, const unsigned char *abuf, int alen)
{
    char *s;
    long enclen;
    if (*p >= abuf + alen) return false;
    if (ares_expand_name(*p, abuf, alen, &s, &enclen) != ARES_SUCCESS) return false;
    ares_free_string(s);
    *p += enclen;
    return true;
}

static unsigned dns_u16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}
static uint32_t dns_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Visits every RR of the first `sections` sections; false if the reply
 * does not parse that far. */
static bool dns_walk(const unsigned char *abuf, int alen, int sections, dns_rr_visit visit,
                     void *ctx)
{
    if (alen < 12) return false;
    const unsigned char *p = abuf + 12, *end = abuf + alen;
    unsigned counts[3] = {dns_u16(abuf + 6), dns_u16(abuf + 8), dns_u16(abuf + 10)};
    for (unsigned i = dns_u16(abuf + 4); i > 0; i--) {
        if (!dns_skip_name(&p, abuf, alen) || end - p < 4) return false;
        p += 4;
    }
    for (int s = 0; s < sections && s < 3; s++) {
        for (unsigned i = 0; i < counts[s]; i++) {
            if (!dns_skip_name(&p, abuf, alen) || end - p < 10) return false;
            struct dns_rr rr = {s,    (int)dns_u16(p),    (int)dns_u16(p + 2), dns_u32(p + 4),
                                NULL, (int)dns_u16(p + 8)};
            /* RFC 2181 8: a TTL with the top bit set is zero. */
            if (rr.ttl & 0x80000000u) rr.ttl = 0;
            p += 10;
            if (end - p < rr.rdlen) return false;
            rr.rdata = p;
            p += rr.rdlen;
            visit(ctx, &rr, abuf, alen);
        }
    }
    return true;
}

struct dns_ttl_ctx {
    int type;
    bool found;
    uint32_t ttl;
};

static void dns_min_ttl_visit(void *ctx, const struct dns_rr *rr, const unsigned char *abuf,
                              int alen)
{
    struct dns_ttl_ctx *c = ctx;
    if (rr->section != 0 || rr->type != c->type) return;
    if (!c->found || rr->ttl < c->ttl) c->ttl = rr->ttl;
    c->found = true;
}

/* The TTL of the answer's RRset of that type (RFC 2181 5.2: one TTL per
 * RRset; the smallest if a server sends several). */
static uint32_t dns_rrset_ttl(const unsigned char *abuf, int alen, int type)
{
    struct dns_ttl_ctx c = {type, false, 0};
    if (!dns_walk(abuf, alen, 1, dns_min_ttl_visit, &c)) return 0;
    return c.found ? c.ttl : 0;
}

static void dns_soa_visit(void *ctx, const struct dns_rr *rr, const unsigned char *abuf, int alen)
{
    struct dns_ttl_ctx *c = ctx;
    if (rr->section != 1 || rr->type != RR_SOA || c->found) return;
    const unsigned char *p = rr->rdata, *end = rr->rdata + rr->rdlen;
    /* MNAME, RNAME, then SERIAL REFRESH RETRY EXPIRE MINIMUM. */
    if (!dns_skip_name(&p, abuf, alen) || p > end || !dns_skip_name(&p, abuf, alen) || end - p < 20)
        return;
    uint32_t minimum = dns_u32(p + 16);
    if (minimum & 0x80000000u) minimum = 0;
    c->ttl = rr->ttl < minimum ? rr->ttl : minimum;
    c->found = true;
}

bool dns_negative_ttl(const unsigned char *abuf, int alen, uint32_t *ttl)
{
    struct dns_ttl_ctx c = {RR_SOA, false, 0};
    if (!dns_walk(abuf, alen, 2, dns_soa_visit, &c) || !c.found) return false;
    *ttl = c.ttl;
    return true;
}

/* Collects records, then packs them into one block. */
struct dns_builder {
    struct dns_record rec[DNS_MAX_RECORDS];
    char *str[DNS_MAX_RECORDS];
    size_t n, bytes;
    bool oom;
};

static void dns_builder_add(struct dns_builder *b, const void *data, size_t len, uint32_t ttl,
                            unsigned priority, unsigned weight, unsigned port)
{
    if (b->n == DNS_MAX_RECORDS || b->oom) return;
    char *s = malloc(len + 1);
    if (!s) {
        b->oom = true;
        return;
    }
    if (len) memcpy(s, data, len);
    s[len] = '\0';
    b->str[b->n] = s;
    b->rec[b->n] = (struct dns_record){ttl, NULL, len, priority, weight, port};
    b->n++;
    b->bytes += len + 1;
}

static void dns_builder_free(struct dns_builder *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->str[i]);
    free(b);
}

/* Packs b (and frees it): DNS_OK with *out, DNS_NODATA if it is empty. */
static enum dns_status dns_builder_finish(struct dns_builder *b, struct dns_answer **out)
{
    if (b->oom) {
        dns_builder_free(b);
        return DNS_SERVFAIL;
    }
    if (b->n == 0) {
        dns_builder_free(b);
        return DNS_NODATA;
    }
    size_t head = sizeof(struct dns_answer) + b->n * sizeof(struct dns_record);
    struct dns_answer *a = malloc(head + b->bytes);
    if (!a) {
        dns_builder_free(b);
        return DNS_SERVFAIL;
    }
    a->n = b->n;
    a->size = head + b->bytes;
    char *s = (char *)a + head;
    for (size_t i = 0; i < b->n; i++) {
        a->rec[i] = b->rec[i];
        memcpy(s, b->str[i], b->rec[i].len + 1);
        a->rec[i].data = s;
        s += b->rec[i].len + 1;
    }
    dns_builder_free(b);
    *out = a;
    return DNS_OK;
}

static void dns_cname_visit(void *ctx, const struct dns_rr *rr, const unsigned char *abuf, int alen)
{
    struct dns_builder *b = ctx;
    if (rr->section != 0 || rr->type != RR_CNAME || rr->cls != RR_CLASS_IN) return;
    char *name;
    long enclen;
    if (rr->rdlen < 1 || ares_expand_name(rr->rdata, abuf, alen, &name, &enclen) != ARES_SUCCESS)
        return;
    if (enclen <= rr->rdlen) dns_builder_add(b, name, strlen(name), rr->ttl, 0, 0, 0);
    ares_free_string(name);
}

/* A hostent's names (NS, PTR): its aliases, or its name when it has none. */
static void dns_add_hostent_names(struct dns_builder *b, const struct hostent *h, uint32_t ttl)
{
    size_t before = b->n;
    for (char **a = h->h_aliases; a && *a; a++)
        dns_builder_add(b, *a, strlen(*a), ttl, 0, 0, 0);
    if (b->n == before && h->h_name && *h->h_name)
        dns_builder_add(b, h->h_name, strlen(h->h_name), ttl, 0, 0, 0);
}

static enum dns_status dns_parse_status(int rc)
{
    return rc == ARES_ENODATA ? DNS_NODATA : DNS_SERVFAIL;
}

/* TXT: the strings of one record joined (record_start marks each record's
 * first string). */
static void dns_add_txt(struct dns_builder *b, const struct ares_txt_ext *t, uint32_t ttl)
{
    while (t) {
        size_t len = 0;
        const struct ares_txt_ext *r = t;
        do {
            len += r->length;
            r = r->next;
        } while (r && !r->record_start);
        char *buf = malloc(len + 1);
        if (!buf) {
            b->oom = true;
            return;
        }
        size_t off = 0;
        for (const struct ares_txt_ext *x = t; x != r; x = x->next) {
            if (x->length) memcpy(buf + off, x->txt, x->length);
            off += x->length;
        }
        dns_builder_add(b, buf, len, ttl, 0, 0, 0);
        free(buf);
        t = r;
    }
}

enum dns_status dns_parse_answer(enum dns_type t, const unsigned char *abuf, int alen,
                                 struct dns_answer **out)
{
    *out = NULL;
    if (!abuf || alen < 12) return DNS_SERVFAIL;
    struct dns_builder *b = calloc(1, sizeof *b);
    if (!b) return DNS_SERVFAIL;
    int rc = ARES_SUCCESS;
    char text[INET6_ADDRSTRLEN];
    switch (t) {
    case DNS_A: {
        struct ares_addrttl tt[DNS_MAX_RECORDS];
        int n = DNS_MAX_RECORDS;
        rc = ares_parse_a_reply(abuf, alen, NULL, tt, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n; i++) {
            if (inet_ntop(AF_INET, &tt[i].ipaddr, text, sizeof text))
                dns_builder_add(b, text, strlen(text), tt[i].ttl < 0 ? 0 : (uint32_t)tt[i].ttl, 0,
                                0, 0);
        }
        break;
    }
    case DNS_AAAA: {
        struct ares_addr6ttl tt[DNS_MAX_RECORDS];
        int n = DNS_MAX_RECORDS;
        rc = ares_parse_aaaa_reply(abuf, alen, NULL, tt, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n; i++) {
            if (inet_ntop(AF_INET6, &tt[i].ip6addr, text, sizeof text))
                dns_builder_add(b, text, strlen(text), tt[i].ttl < 0 ? 0 : (uint32_t)tt[i].ttl, 0,
                                0, 0);
        }
        break;
    }
    case DNS_MX: {
        struct ares_mx_reply *mx = NULL;
        rc = ares_parse_mx_reply(abuf, alen, &mx);
        if (rc == ARES_SUCCESS) {
            uint32_t ttl = dns_rrset_ttl(abuf, alen, RR_MX);
            for (struct ares_mx_reply *m = mx; m; m = m->next)
                dns_builder_add(b, m->host, strlen(m->host), ttl, m->priority, 0, 0);
        }
        if (mx) ares_free_data(mx);
        break;
    }
    case DNS_TXT: {
        struct ares_txt_ext *txt = NULL;
        rc = ares_parse_txt_reply_ext(abuf, alen, &txt);
        if (rc == ARES_SUCCESS) dns_add_txt(b, txt, dns_rrset_ttl(abuf, alen, RR_TXT));
        if (txt) ares_free_data(txt);
        break;
    }
    case DNS_SRV: {
        struct ares_srv_reply *srv = NULL;
        rc = ares_parse_srv_reply(abuf, alen, &srv);
        if (rc == ARES_SUCCESS) {
            uint32_t ttl = dns_rrset_ttl(abuf, alen, RR_SRV);
            for (struct ares_srv_reply *s = srv; s; s = s->next)
                dns_builder_add(b, s->host, strlen(s->host), ttl, s->priority, s->weight, s->port);
        }
        if (srv) ares_free_data(srv);
        break;
    }
    case DNS_NS: {
        struct hostent *h = NULL;
        rc = ares_parse_ns_reply(abuf, alen, &h);
        if (rc == ARES_SUCCESS && h) dns_add_hostent_names(b, h, dns_rrset_ttl(abuf, alen, RR_NS));
        if (h) ares_free_hostent(h);
        break;
    }
    case DNS_PTR: {
        /* The address only fills the hostent's address list, which we do
         * not use. */
        static const unsigned char any[16];
        struct hostent *h = NULL;
        rc = ares_parse_ptr_reply(abuf, alen, any, 4, AF_INET, &h);
        if (rc == ARES_SUCCESS && h) dns_add_hostent_names(b, h, dns_rrset_ttl(abuf, alen, RR_PTR));
        if (h) ares_free_hostent(h);
        break;
    }
    case DNS_CNAME:
        if (!dns_walk(abuf, alen, 1, dns_cname_visit, b)) rc = ARES_EBADRESP;
        break;
    }
    if (rc != ARES_SUCCESS) {
        dns_builder_free(b);
        return dns_parse_status(rc);
    }
    return dns_builder_finish(b, out);
}

struct dns_answer *dns_answer_copy(const struct dns_answer *a);

/* A copy of a with `age` seconds taken off every TTL (a cached answer). */
static struct dns_answer *dns_answer_aged(const struct dns_answer *a, uint32_t age)
{
    struct dns_answer *c = malloc(a->size);
    if (!c) return NULL;
    memcpy(c, a, a->size);
    for (size_t i = 0; i < c->n; i++) {
        c->rec[i].data = (const char *)c + (a->rec[i].data - (const char *)a);
        c->rec[i].ttl = c->rec[i].ttl > age ? c->rec[i].ttl - age : 0;
    }
    return c;
}

struct dns_answer *dns_answer_copy(const struct dns_answer *a)
{
    return dns_answer_aged(a, 0);
}

/* ------------------------------------------------------------------------
 * Resolvers */

struct dns_sock {
    struct dns_sock *next;
    struct dns_resolver *r;
    ev_io io;
};

struct dns_centry {
    struct dns_centry *hnext;       /* bucket chain */
    struct dns_centry *prev, *next; /* LRU list, most recent first */
    uint32_t hash;
    double stored, expires;
    enum dns_status st;
    struct dns_answer *ans; /* DNS_OK only */
    char key[];
};

struct dns_resolver {
    struct dns_resolver *next; /* the process's list */
    struct ev_loop *loop;
    ares_channel ch;
    char *servers;
    double timeout;
    long cache_size;
    int refs;  /* holders and queries in flight */
    int depth; /* inside a c-ares call */
    ev_timer tick;
    struct dns_sock *socks;
    struct dns_centry **buckets;
    size_t nbuckets, count;
    struct dns_centry *lru_head, *lru_tail;
};

struct dns_query {
    struct dns_resolver *r;
    dns_query_cb cb;
    void *ud;
    ev_timer timer;
    bool in_ares;  /* c-ares still points at us */
    bool done;     /* the caller had its result or detached */
    bool starting; /* inside dns_query: the caller frees us */
    enum dns_type type;
    char key[DNS_NAME_MAX + 16];
};

static struct dns_resolver *dns_resolvers;

static void dns_resolver_maybe_free(struct dns_resolver *r);

/* Rearms the retransmission timer from what c-ares waits for. */
static void dns_tick_arm(struct dns_resolver *r)
{
    struct timeval tv;
    ev_timer_stop(r->loop, &r->tick);
    if (ares_timeout(r->ch, NULL, &tv)) {
        ev_timer_set(&r->tick, (double)tv.tv_sec + tv.tv_usec / 1e6, 0.);
        ev_timer_start(r->loop, &r->tick);
    }
}

static void dns_process(struct dns_resolver *r, ares_socket_t rfd, ares_socket_t wfd)
{
    r->refs++; /* a callback may drop the last hold */
    r->depth++;
    ares_process_fd(r->ch, rfd, wfd);
    r->depth--;
    dns_tick_arm(r);
    r->refs--;
    dns_resolver_maybe_free(r);
}

static void dns_on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    dns_process(t->data, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

static void dns_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct dns_sock *s = w->data;
    int fd = w->fd;
    dns_process(s->r, revents & EV_READ ? fd : ARES_SOCKET_BAD,
                revents & EV_WRITE ? fd : ARES_SOCKET_BAD);
}

/* c-ares opened, changed or closed one of its sockets. */
static void dns_on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns_resolver *r = data;
    struct dns_sock **pp = &r->socks, *s;
    while ((s = *pp) && s->io.fd != fd)
        pp = &s->next;
    if (!readable && !writable) {
        if (s) {
            ev_io_stop(r->loop, &s->io);
            *pp = s->next;
            free(s);
        }
        return;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return; /* the query times out on our timer */
        s->r = r;
        ev_io_init(&s->io, dns_on_io, fd, 0);
        s->io.data = s;
        s->next = r->socks;
        r->socks = s;
    }
    ev_io_stop(r->loop, &s->io);
    ev_io_set(&s->io, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    ev_io_start(r->loop, &s->io);
}

static void dns_cache_clear(struct dns_resolver *r);

static void dns_resolver_maybe_free(struct dns_resolver *r)
{
    if (r->refs > 0 || r->depth > 0) return;
    for (struct dns_resolver **pp = &dns_resolvers; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    r->depth++;
    ares_destroy(r->ch); /* closes its sockets through dns_on_sock_state */
    r->depth--;
    while (r->socks) {
        struct dns_sock *s = r->socks;
        r->socks = s->next;
        ev_io_stop(r->loop, &s->io);
        free(s);
    }
    ev_timer_stop(r->loop, &r->tick);
    dns_cache_clear(r);
    free(r->buckets);
    free(r->servers);
    free(r);
}

static bool dns_same_servers(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

struct dns_resolver *dns_resolver_get(struct ev_loop *loop, const struct dns_config *c, char *err,
                                      size_t errlen)
{
    for (struct dns_resolver *r = dns_resolvers; r; r = r->next) {
        if (r->loop == loop && r->timeout == c->timeout && r->cache_size == c->cache_size &&
            dns_same_servers(r->servers, c->servers)) {
            r->refs++;
            return r;
        }
    }
    static bool lib_ready;
    if (!lib_ready) {
        int rc = ares_library_init(ARES_LIB_INIT_ALL);
        if (rc != ARES_SUCCESS) {
            snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
            return NULL;
        }
        lib_ready = true;
    }
    struct dns_resolver *r = calloc(1, sizeof *r);
    if (!r || (c->servers && !(r->servers = strdup(c->servers)))) {
        free(r);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->loop = loop;
    r->timeout = c->timeout > 0 ? c->timeout : DNS_DEFAULT_TIMEOUT;
    r->cache_size = c->cache_size;
    ev_init(&r->tick, dns_on_tick);
    r->tick.data = r;
    struct ares_options o;
    memset(&o, 0, sizeof o);
    o.sock_state_cb = dns_on_sock_state;
    o.sock_state_cb_data = r;
    o.tries = DNS_ARES_TRIES;
    /* One socket per server for the resolver's life, not one per burst. */
    o.flags = ARES_FLAG_STAYOPEN;
    /* c-ares waits t, then 2t: about our timeout in all. */
    int ms = (int)(r->timeout * 1000 / 3);
    o.timeout = ms < DNS_ARES_MIN_TIMEOUT_MS ? DNS_ARES_MIN_TIMEOUT_MS : ms;
    int rc = ares_init_options(
        &r->ch, &o, ARES_OPT_SOCK_STATE_CB | ARES_OPT_TRIES | ARES_OPT_TIMEOUTMS | ARES_OPT_FLAGS);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
        free(r->servers);
        free(r);
        return NULL;
    }
    if (r->servers && (rc = ares_set_servers_ports_csv(r->ch, r->servers)) != ARES_SUCCESS) {
        snprintf(err, errlen, "resolver '%s': %s", r->servers, ares_strerror(rc));
        ares_destroy(r->ch);
        free(r->servers);
        free(r);
        return NULL;
    }
    r->refs = 1;
    r->next = dns_resolvers;
    dns_resolvers = r;
    return r;
}

void dns_resolver_put(struct dns_resolver *r)
{
    if (!r) return;
    r->refs--;
    dns_resolver_maybe_free(r);
}

/* ------------------------------------------------------------------------
 * The cache */

size_t dns_cache_count(const struct dns_resolver *r)
{
    return r->count;
}

static uint32_t dns_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void dns_lru_unlink(struct dns_resolver *r, struct dns_centry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        r->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        r->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void dns_lru_push(struct dns_resolver *r, struct dns_centry *e)
{
    e->prev = NULL;
    e->next = r->lru_head;
    if (e->next)
        e->next->prev = e;
    else
        r->lru_tail = e;
    r->lru_head = e;
}

static void dns_cache_remove(struct dns_resolver *r, struct dns_centry *e)
{
    struct dns_centry **pp = &r->buckets[e->hash & (r->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    dns_lru_unlink(r, e);
    free(e->ans);
    free(e);
    r->count--;
}

static void dns_cache_clear(struct dns_resolver *r)
{
    while (r->lru_head)
        dns_cache_remove(r, r->lru_head);
}

static struct dns_centry *dns_cache_find(struct dns_resolver *r, const char *key)
{
    if (!r->buckets) return NULL;
    uint32_t h = dns_hash(key);
    for (struct dns_centry *e = r->buckets[h & (r->nbuckets - 1)]; e; e = e->hnext) {
        if (e->hash != h || strcmp(e->key, key)) continue;
        if (e->expires <= ev_now(r->loop)) {
            dns_cache_remove(r, e);
            return NULL;
        }
        dns_lru_unlink(r, e);
        dns_lru_push(r, e);
        return e;
    }
    return NULL;
}

/* Keeps what a query learnt (takes ans). */
static void dns_cache_store(struct dns_resolver *r, const char *key, enum dns_status st,
                            struct dns_answer *ans, uint32_t ttl)
{
    if (r->cache_size <= 0 || ttl == 0 ||
        (st != DNS_OK && st != DNS_NOTFOUND && st != DNS_NODATA)) {
        free(ans);
        return;
    }
    if (!r->buckets) {
        size_t n = 16;
        while (n < (size_t)r->cache_size && n < DNS_CACHE_MAX_BUCKETS)
            n *= 2;
        r->buckets = calloc(n, sizeof *r->buckets);
        if (!r->buckets) {
            free(ans);
            return;
        }
        r->nbuckets = n;
    }
    struct dns_centry *old = dns_cache_find(r, key);
    if (old) dns_cache_remove(r, old);
    while (r->count >= (size_t)r->cache_size && r->lru_tail)
        dns_cache_remove(r, r->lru_tail);
    size_t klen = strlen(key);
    struct dns_centry *e = malloc(sizeof *e + klen + 1);
    if (!e) {
        free(ans);
        return;
    }
    memcpy(e->key, key, klen + 1);
    e->hash = dns_hash(key);
    e->st = st;
    e->ans = ans;
    e->stored = ev_now(r->loop);
    e->expires = e->stored + (ttl > DNS_MAX_TTL ? DNS_MAX_TTL : ttl);
    struct dns_centry **b = &r->buckets[e->hash & (r->nbuckets - 1)];
    e->hnext = *b;
    *b = e;
    dns_lru_push(r, e);
    r->count++;
}

/* "A:example.org": the type and the name in lower case, without the
 * trailing dot. */
static void dns_key(char *out, size_t cap, enum dns_type t, const char *name)
{
    int w = snprintf(out, cap, "%s:", dns_types[t].name);
    size_t i = (size_t)w;
    for (; *name && i + 1 < cap; name++)
        out[i++] = (char)tolower((unsigned char)*name);
    if (i > (size_t)w + 1 && out[i - 1] == '.') i--;
    out[i] = '\0';
}

/* ------------------------------------------------------------------------
 * Queries */

static void dns_query_free(struct dns_query *q)
{
    struct dns_resolver *r = q->r;
    ev_timer_stop(r->loop, &q->timer);
    free(q);
    dns_resolver_put(r);
}

static void dns_on_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct dns_query *q = t->data;
    q->done = true;
    dns_query_cb cb = q->cb;
    q->cb = NULL;
    /* c-ares still has the query: its late answer only fills the cache. */
    if (cb) cb(q->ud, DNS_TIMEOUT, NULL);
}

static enum dns_status dns_status_of(int rc)
{
    switch (rc) {
    case ARES_SUCCESS:
        return DNS_OK;
    case ARES_ENOTFOUND:
        return DNS_NOTFOUND;
    case ARES_ENODATA:
        return DNS_NODATA;
    case ARES_ETIMEOUT:
        return DNS_TIMEOUT;
    case ARES_EBADNAME:
        return DNS_BADNAME;
    default:
        return DNS_SERVFAIL; /* SERVFAIL, REFUSED, connection refused, ... */
    }
}

/* The smallest TTL of an answer's records. */
static uint32_t dns_answer_ttl(const struct dns_answer *a)
{
    uint32_t ttl = a->n ? a->rec[0].ttl : 0;
    for (size_t i = 1; i < a->n; i++)
        if (a->rec[i].ttl < ttl) ttl = a->rec[i].ttl;
    return ttl;
}

static void dns_on_ares(void *arg, int rc, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_query *q = arg;
    struct dns_resolver *r = q->r;
    q->in_ares = false;
    enum dns_status st = dns_status_of(rc);
    struct dns_answer *ans = NULL;
    uint32_t ttl = 0;
    if (st == DNS_OK) {
        st = dns_parse_answer(q->type, abuf, alen, &ans);
        if (st == DNS_OK) ttl = dns_answer_ttl(ans);
    }
    if ((st == DNS_NOTFOUND || st == DNS_NODATA) && abuf && !dns_negative_ttl(abuf, alen, &ttl))
        ttl = 0;
    if (rc == ARES_EDESTRUCTION || rc == ARES_ECANCELLED) st = DNS_SERVFAIL, ttl = 0;
    if (!q->done) {
        q->done = true;
        ev_timer_stop(r->loop, &q->timer);
        dns_query_cb cb = q->cb;
        q->cb = NULL;
        if (cb) cb(q->ud, st, ans);
    }
    /* After the callback, which may start queries of its own. */
    dns_cache_store(r, q->key, st, ans, ttl);
    if (!q->starting) dns_query_free(q);
}

/* Answers from the cache; false on a miss. */
static bool dns_cache_answer(struct dns_resolver *r, const char *key, dns_query_cb cb, void *ud)
{
    if (r->cache_size <= 0) return false;
    struct dns_centry *e = dns_cache_find(r, key);
    if (!e) return false;
    if (e->st != DNS_OK) {
        cb(ud, e->st, NULL);
        return true;
    }
    double age = ev_now(r->loop) - e->stored;
    struct dns_answer *a = dns_answer_aged(e->ans, age > 0 ? (uint32_t)age : 0);
    if (!a) return false;
    cb(ud, DNS_OK, a);
    free(a);
    return true;
}

struct dns_query *dns_query(struct dns_resolver *r, const char *name, enum dns_type t,
                            dns_query_cb cb, void *ud)
{
    if (!dns_name_valid(name)) {
        cb(ud, DNS_BADNAME, NULL);
        return NULL;
    }
    char key[DNS_NAME_MAX + 16];
    dns_key(key, sizeof key, t, name);
    if (dns_cache_answer(r, key, cb, ud)) return NULL;
    struct dns_query *q = calloc(1, sizeof *q);
    if (!q) {
        cb(ud, DNS_SERVFAIL, NULL);
        return NULL;
    }
    q->r = r;
    r->refs++;
    q->cb = cb;
    q->ud = ud;
    q->type = t;
    memcpy(q->key, key, sizeof key);
    ev_timer_init(&q->timer, dns_on_timeout, r->timeout, 0.);
    q->timer.data = q;
    q->in_ares = true;
    q->starting = true;
    r->depth++;
    ares_query(r->ch, name, RR_CLASS_IN, dns_types[t].rr, dns_on_ares, q);
    r->depth--;
    q->starting = false;
    if (!q->in_ares) { /* c-ares answered at once: cb has run */
        dns_query_free(q);
        return NULL;
    }
    ev_timer_start(r->loop, &q->timer);
    dns_tick_arm(r);
    return q;
}

void dns_query_cancel(struct dns_query *q)
{
    if (!q) return;
    q->done = true;
    q->cb = NULL;
    ev_timer_stop(q->r->loop, &q->timer);
    /* c-ares keeps it until it answers or gives up (dns_on_ares frees it). */
}

/* ------------------------------------------------------------------------
 * Host lookups (A, then AAAA) */

struct dns_lookup {
    dns_host_cb done;
    void *ud;
    struct dns_query *q[2];
    int pending;
    enum dns_status st[2];
    char *ips[2][DNS_MAX_RECORDS];
    int n[2];
};

static void dns_lookup_free(struct dns_lookup *l)
{
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < l->n[k]; i++)
            free(l->ips[k][i]);
    free(l);
}

/* Both halves are in: tell the caller. */
static void dns_lookup_deliver(struct dns_lookup *l)
{
    const char *list[2 * DNS_MAX_RECORDS];
    int n = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < l->n[k]; i++)
            list[n++] = l->ips[k][i];
    const char *err = NULL;
    if (n == 0) {
        enum dns_status st = DNS_NOTFOUND;
        for (int k = 0; k < 2; k++)
            if (l->st[k] == DNS_TIMEOUT || (l->st[k] == DNS_SERVFAIL && st != DNS_TIMEOUT) ||
                (l->st[k] == DNS_BADNAME && st == DNS_NOTFOUND))
                st = l->st[k];
        err = dns_strerror(st == DNS_NODATA || st == DNS_OK ? DNS_NOTFOUND : st);
    }
    if (l->done) l->done(l->ud, list, n, err);
}

static void dns_lookup_half(struct dns_lookup *l, int k, enum dns_status st,
                            const struct dns_answer *a)
{
    l->q[k] = NULL;
    l->st[k] = st;
    for (size_t i = 0; a && i < a->n && l->n[k] < DNS_MAX_RECORDS; i++) {
        char *s = strdup(a->rec[i].data);
        if (s) l->ips[k][l->n[k]++] = s;
    }
    if (--l->pending == 0) {
        dns_lookup_deliver(l);
        dns_lookup_free(l);
    }
}

static void dns_lookup_on_a(void *ud, enum dns_status st, const struct dns_answer *a)
{
    dns_lookup_half(ud, 0, st, a);
}

static void dns_lookup_on_aaaa(void *ud, enum dns_status st, const struct dns_answer *a)
{
    dns_lookup_half(ud, 1, st, a);
}

static bool dns_is_localhost(const char *name)
{
    size_t n = strlen(name);
    if (n && name[n - 1] == '.') n--;
    static const char lh[] = "localhost";
    size_t m = sizeof lh - 1;
    return n >= m && !strncasecmp(name + n - m, lh, m) && (n == m || name[n - m - 1] == '.');
}

struct dns_lookup *dns_lookup_host(struct dns_resolver *r, const char *name, dns_host_cb done,
                                   void *ud)
{
    unsigned char addr[16];
    if (inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1) {
        done(ud, &name, 1, NULL);
        return NULL;
    }
    if (dns_is_localhost(name)) {
        static const char *const loopback[] = {"127.0.0.1", "::1"};
        done(ud, loopback, 2, NULL);
        return NULL;
    }
    struct dns_lookup *l = calloc(1, sizeof *l);
    if (!l) {
        done(ud, NULL, 0, dns_strerror(DNS_SERVFAIL));
        return NULL;
    }
    l->done = done;
    l->ud = ud;
    /* One count per half, one for this call: the last to finish delivers. */
    l->pending = 3;
    l->q[0] = dns_query(r, name, DNS_A, dns_lookup_on_a, l);
    l->q[1] = dns_query(r, name, DNS_AAAA, dns_lookup_on_aaaa, l);
    if (--l->pending == 0) {
        dns_lookup_deliver(l);
        dns_lookup_free(l);
        return NULL;
    }
    return l;
}

void dns_lookup_cancel(struct dns_lookup *l)
{
    if (!l) return;
    for (int k = 0; k < 2; k++)
        dns_query_cancel(l->q[k]);
    dns_lookup_free(l);
}
