/* l_dns.c — smtpd.dns.query(name, qtype), smtpd.dns.reverse(ip [, opts]),
 * smtpd.dns.dnsbl(ip, zone) (async-api.md 5), three wait kinds in the shape
 * of l_sleep.c: validate -> hook_wait_check -> try at once (a cached
 * answer returns without yielding) -> record the wait -> lua_yield. The
 * query's callback wakes the hook; cancel (hook_timeout, disconnect,
 * shutdown) detaches the open queries, whose late answers only fill the
 * cache. The resolver of a generation is a vm_resource holding a shared
 * dns_resolver. Knows no SMTP. */
#include "l_dns.h"

#include <arpa/inet.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lua_hook.h"
#include "lua_vm.h"

/* reverse{confirm = true}: PTR names checked forward at most. */
#define L_DNS_CONFIRM_MAX 10
/* "x.x. ... .ip6.arpa" with a DNSBL zone instead of ip6.arpa. */
#define L_DNS_QNAME_MAX (64 + DNS_NAME_MAX + 2)

/* ------------------------------------------------------------------------
 * The generation's resolver */

struct l_dns_gen {
    struct vm_resource res; /* first */
    struct dns_resolver *r;
};

static const char l_dns_kind = 0;

static void l_dns_gen_close(struct vm_resource *res, struct vm *vm)
{
    struct l_dns_gen *g = (struct l_dns_gen *)res;
    dns_resolver_put(g->r);
    free(g);
}

struct dns_resolver *l_dns_resolver(struct vm *vm, char *err, size_t errlen)
{
    struct l_dns_gen *g = (struct l_dns_gen *)vm_resource_find(vm, &l_dns_kind);
    if (g) return g->r;
    if (!vm->loop) {
        snprintf(err, errlen, "the generation is not on the event loop yet");
        return NULL;
    }
    struct dns_config c = {vm->resolver, vm->resolver_timeout, vm->resolver_cache_size};
    if (c.timeout <= 0) c.timeout = DNS_DEFAULT_TIMEOUT;
    g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->r = dns_resolver_get(vm->loop, &c, err, errlen);
    if (!g->r) {
        free(g);
        return NULL;
    }
    g->res.kind = &l_dns_kind;
    g->res.close = l_dns_gen_close;
    vm_resource_add(vm, &g->res);
    return g->r;
}

/* ------------------------------------------------------------------------
 * The wait record */

enum l_dns_op { L_DNS_QUERY, L_DNS_REVERSE, L_DNS_DNSBL };

struct l_dns_wait;

/* One forward lookup of reverse{confirm = true}. */
struct l_dns_fwd {
    struct l_dns_wait *dw;
    struct dns_query *q;
    char *name;
    bool confirmed;
};

struct l_dns_wait {
    struct hook_wait wait; /* first: the hook layer hands this back */
    struct hook_state *hook;
    struct dns_resolver *r;
    enum l_dns_op op;
    enum dns_type type;
    bool starting; /* the binding is still running: it pushes the result */
    bool done;
    bool confirm;
    int addrlen; /* 4 or 16 */
    unsigned char addr[16];
    struct dns_query *q;
    /* The result. */
    enum dns_status st;
    struct dns_answer *ans;
    /* reverse{confirm = true} */
    struct l_dns_fwd fwd[L_DNS_CONFIRM_MAX];
    int nfwd, pending;
    enum dns_status fwd_err;
};

static void l_dns_free(struct l_dns_wait *dw)
{
    dns_query_cancel(dw->q);
    for (int i = 0; i < dw->nfwd; i++) {
        dns_query_cancel(dw->fwd[i].q);
        free(dw->fwd[i].name);
    }
    free(dw->ans);
    free(dw);
}

static void l_dns_cancel(struct hook_wait *w)
{
    l_dns_free((struct l_dns_wait *)w);
}

static void l_dns_push_record(lua_State *L, enum dns_type t, const struct dns_record *r)
{
    lua_createtable(L, 0, 5);
    switch (t) {
    case DNS_A:
    case DNS_AAAA:
        lua_pushlstring(L, r->data, r->len);
        lua_setfield(L, -2, "address");
        break;
    case DNS_MX:
        lua_pushlstring(L, r->data, r->len);
        lua_setfield(L, -2, "exchange");
        lua_pushinteger(L, (lua_Integer)r->priority);
        lua_setfield(L, -2, "preference");
        break;
    case DNS_TXT:
        lua_pushlstring(L, r->data, r->len);
        lua_setfield(L, -2, "text");
        break;
    case DNS_PTR:
    case DNS_CNAME:
    case DNS_NS:
        lua_pushlstring(L, r->data, r->len);
        lua_setfield(L, -2, "name");
        break;
    case DNS_SRV:
        lua_pushlstring(L, r->data, r->len);
        lua_setfield(L, -2, "target");
        lua_pushinteger(L, (lua_Integer)r->port);
        lua_setfield(L, -2, "port");
        lua_pushinteger(L, (lua_Integer)r->priority);
        lua_setfield(L, -2, "priority");
        lua_pushinteger(L, (lua_Integer)r->weight);
        lua_setfield(L, -2, "weight");
        break;
    }
    lua_pushnumber(L, (lua_Number)r->ttl);
    lua_setfield(L, -2, "ttl");
}

static int l_dns_push_error(lua_State *L, enum dns_status st)
{
    lua_pushnil(L);
    lua_pushstring(L, dns_strerror(st));
    return 2;
}

/* Pushes what the script gets back; returns how many values. */
static int l_dns_push_result(lua_State *L, struct l_dns_wait *dw)
{
    if (dw->op == L_DNS_DNSBL && (dw->st == DNS_NOTFOUND || dw->st == DNS_NODATA)) {
        lua_pushboolean(L, 0); /* not listed */
        return 1;
    }
    if (dw->st != DNS_OK) return l_dns_push_error(L, dw->st);
    int n = 0;
    switch (dw->op) {
    case L_DNS_QUERY:
        lua_createtable(L, (int)dw->ans->n, 0);
        for (size_t i = 0; i < dw->ans->n; i++) {
            l_dns_push_record(L, dw->type, &dw->ans->rec[i]);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    case L_DNS_DNSBL:
        lua_createtable(L, (int)dw->ans->n, 0);
        for (size_t i = 0; i < dw->ans->n; i++) {
            lua_pushlstring(L, dw->ans->rec[i].data, dw->ans->rec[i].len);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    case L_DNS_REVERSE:
        lua_newtable(L);
        if (dw->confirm) {
            for (int i = 0; i < dw->nfwd; i++) {
                if (!dw->fwd[i].confirmed) continue;
                lua_pushstring(L, dw->fwd[i].name);
                lua_rawseti(L, -2, ++n);
            }
        } else {
            for (size_t i = 0; i < dw->ans->n; i++) {
                lua_pushlstring(L, dw->ans->rec[i].data, dw->ans->rec[i].len);
                lua_rawseti(L, -2, (int)i + 1);
            }
        }
        break;
    }
    return 1;
}

/* The operation is over: the binding pushes the result if it still runs;
 * otherwise wake the hook with it. */
static void l_dns_finish(struct l_dns_wait *dw)
{
    dw->done = true;
    if (dw->starting) return;
    struct hook_state *h = dw->hook;
    lua_State *co = hook_wake_begin(h, &dw->wait);
    if (!co) { /* the wait ended meanwhile (cannot happen: cancel frees dw) */
        l_dns_free(dw);
        return;
    }
    int n = l_dns_push_result(co, dw);
    l_dns_free(dw);
    hook_wake_finish(h, n);
}

static void l_dns_keep(struct l_dns_wait *dw, enum dns_status st, const struct dns_answer *a)
{
    dw->st = st;
    if (st == DNS_OK) {
        dw->ans = dns_answer_copy(a);
        if (!dw->ans) dw->st = DNS_SERVFAIL;
    }
}

static void l_dns_on_answer(void *ud, enum dns_status st, const struct dns_answer *a)
{
    struct l_dns_wait *dw = ud;
    dw->q = NULL;
    l_dns_keep(dw, st, a);
    l_dns_finish(dw);
}

/* Forward-confirmed reverse DNS: a name counts if one of its addresses is
 * the one asked about. */
static void l_dns_confirm_done(struct l_dns_wait *dw)
{
    int ok = 0;
    for (int i = 0; i < dw->nfwd; i++)
        ok += dw->fwd[i].confirmed;
    /* A name that may yet confirm (its lookup failed for now) makes the
     * answer temporary; otherwise none confirms: not found. */
    dw->st = ok ? DNS_OK : dw->fwd_err != DNS_OK ? dw->fwd_err : DNS_NOTFOUND;
    l_dns_finish(dw);
}

static void l_dns_on_forward(void *ud, enum dns_status st, const struct dns_answer *a)
{
    struct l_dns_fwd *f = ud;
    struct l_dns_wait *dw = f->dw;
    f->q = NULL;
    if (st == DNS_OK) {
        int family = dw->addrlen == 4 ? AF_INET : AF_INET6;
        unsigned char addr[16];
        for (size_t i = 0; i < a->n && !f->confirmed; i++)
            if (inet_pton(family, a->rec[i].data, addr) == 1 &&
                !memcmp(addr, dw->addr, (size_t)dw->addrlen))
                f->confirmed = true;
    } else if (st == DNS_TIMEOUT || st == DNS_SERVFAIL) {
        dw->fwd_err = st;
    }
    if (--dw->pending == 0) l_dns_confirm_done(dw);
}

static void l_dns_on_ptr(void *ud, enum dns_status st, const struct dns_answer *a)
{
    struct l_dns_wait *dw = ud;
    dw->q = NULL;
    if (st != DNS_OK || !dw->confirm) {
        l_dns_keep(dw, st, a);
        l_dns_finish(dw);
        return;
    }
    for (size_t i = 0; i < a->n && dw->nfwd < L_DNS_CONFIRM_MAX; i++) {
        char *name = strdup(a->rec[i].data);
        if (!name) continue;
        struct l_dns_fwd *f = &dw->fwd[dw->nfwd++];
        f->dw = dw;
        f->name = name;
    }
    /* One count per name and one for this loop, so that answers from the
     * cache (called back at once) cannot finish dw under it. */
    dw->pending = dw->nfwd + 1;
    enum dns_type t = dw->addrlen == 4 ? DNS_A : DNS_AAAA;
    for (int i = 0; i < dw->nfwd; i++)
        dw->fwd[i].q = dns_query(dw->r, dw->fwd[i].name, t, l_dns_on_forward, &dw->fwd[i]);
    if (--dw->pending == 0) l_dns_confirm_done(dw);
}

/* ------------------------------------------------------------------------
 * The bindings */

/* The common part after the binding started its query: return the result
 * at once if it is in, else wait. */
static int l_dns_suspend(lua_State *L, struct l_dns_wait *dw)
{
    dw->starting = false;
    if (dw->done) {
        /* Pushed as the wake-up path does, outside the hook's heap limit:
         * the result is bounded (DNS_MAX_RECORDS), and a memory error here
         * would lose dw. */
        struct vm *vm = vm_of(L);
        bool in_hook = vm->in_hook;
        vm->in_hook = false;
        int n = l_dns_push_result(L, dw);
        vm->in_hook = in_hook;
        l_dns_free(dw);
        return n;
    }
    hook_wait_set(dw->hook, &dw->wait);
    return lua_yield(L, 0);
}

/* Checks the context and makes the record; NULL (with nil, err pushed:
 * *nret) when no resolver can be had. */
static struct l_dns_wait *l_dns_begin(lua_State *L, const char *binding, enum l_dns_op op,
                                      int *nret)
{
    struct hook_state *h = hook_wait_check(L, binding);
    char err[256];
    struct dns_resolver *r = l_dns_resolver(h->vm, err, sizeof err);
    if (!r) {
        log_msg(LOG_ERROR, h->sid, "%s: no resolver: %s", binding, err);
        *nret = l_dns_push_error(L, DNS_SERVFAIL);
        return NULL;
    }
    struct l_dns_wait *dw = calloc(1, sizeof *dw);
    if (!dw) luaL_error(L, "%s: out of memory", binding);
    dw->wait.what = binding;
    dw->wait.cancel = l_dns_cancel;
    dw->hook = h;
    dw->r = r;
    dw->op = op;
    dw->starting = true;
    return dw;
}

/* A string argument without NUL bytes (a NUL would cut the name short). */
static const char *l_dns_check_name(lua_State *L, int idx, bool *bad)
{
    size_t len;
    const char *s = luaL_checklstring(L, idx, &len);
    *bad = strlen(s) != len;
    return s;
}

/* An IPv4 or IPv6 address; an IPv4-mapped IPv6 one counts as IPv4. */
static void l_dns_check_ip(lua_State *L, int idx, unsigned char addr[16], int *len)
{
    const char *s = luaL_checkstring(L, idx);
    unsigned char a6[16];
    if (inet_pton(AF_INET, s, addr) == 1) {
        *len = 4;
    } else if (inet_pton(AF_INET6, s, a6) == 1) {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (!memcmp(a6, mapped, 12)) {
            memcpy(addr, a6 + 12, 4);
            *len = 4;
        } else {
            memcpy(addr, a6, 16);
            *len = 16;
        }
    } else {
        luaL_argerror(L, idx, "expected an IPv4 or IPv6 address");
    }
}

static int l_dns_query(lua_State *L)
{
    bool bad;
    const char *name = l_dns_check_name(L, 1, &bad);
    const char *qtype = luaL_checkstring(L, 2);
    enum dns_type t;
    if (!dns_type_parse(qtype, &t))
        return luaL_argerror(L, 2,
                             "expected \"A\", \"AAAA\", \"MX\", \"TXT\", \"PTR\", "
                             "\"CNAME\", \"NS\" or \"SRV\"");
    int nret;
    struct l_dns_wait *dw = l_dns_begin(L, "smtpd.dns.query", L_DNS_QUERY, &nret);
    if (!dw) return nret;
    dw->type = t;
    if (bad) {
        dw->st = DNS_BADNAME;
        dw->done = true;
    } else {
        dw->q = dns_query(dw->r, name, t, l_dns_on_answer, dw);
    }
    return l_dns_suspend(L, dw);
}

static int l_dns_reverse(lua_State *L)
{
    unsigned char addr[16];
    int addrlen;
    l_dns_check_ip(L, 1, addr, &addrlen);
    bool confirm = false;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "confirm");
        if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
            return luaL_argerror(L, 2, "confirm must be a boolean");
        confirm = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    char qname[L_DNS_QNAME_MAX];
    dns_reverse_name(addr, addrlen, NULL, qname, sizeof qname);
    int nret;
    struct l_dns_wait *dw = l_dns_begin(L, "smtpd.dns.reverse", L_DNS_REVERSE, &nret);
    if (!dw) return nret;
    dw->type = DNS_PTR;
    dw->confirm = confirm;
    dw->addrlen = addrlen;
    memcpy(dw->addr, addr, (size_t)addrlen);
    dw->q = dns_query(dw->r, qname, DNS_PTR, l_dns_on_ptr, dw);
    return l_dns_suspend(L, dw);
}

static int l_dns_dnsbl(lua_State *L)
{
    unsigned char addr[16];
    int addrlen;
    l_dns_check_ip(L, 1, addr, &addrlen);
    bool bad;
    const char *zone = l_dns_check_name(L, 2, &bad);
    char qname[L_DNS_QNAME_MAX];
    if (!bad) bad = !dns_reverse_name(addr, addrlen, zone, qname, sizeof qname);
    int nret;
    struct l_dns_wait *dw = l_dns_begin(L, "smtpd.dns.dnsbl", L_DNS_DNSBL, &nret);
    if (!dw) return nret;
    dw->type = DNS_A;
    if (bad) {
        dw->st = DNS_BADNAME;
        dw->done = true;
    } else {
        dw->q = dns_query(dw->r, qname, DNS_A, l_dns_on_answer, dw);
    }
    return l_dns_suspend(L, dw);
}

void l_dns_register(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"query", l_dns_query},
        {"reverse", l_dns_reverse},
        {"dnsbl", l_dns_dnsbl},
        {NULL, NULL},
    };
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd");
    lua_call(L, 1, 1);
    lua_createtable(L, 0, 3);
    luaL_register(L, NULL, fns);
    lua_setfield(L, -2, "dns");
    lua_pop(L, 1);
}
