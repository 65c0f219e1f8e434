/* l_socket.c — smtpd.socket.tcp(): cosockets over TCP, TLS and UNIX sockets
 * (async-api.md 4), a wait kind on the hook layer's one machinery, shaped
 * like l_sleep.c. Every yielding method validates its arguments, checks the
 * context (hook_wait_check), tries the operation at once (buffered input is
 * returned without yielding), and only then arms its ev_io and ev_timer,
 * records the wait and yields; the event side wakes the hook with the
 * result, and cancel (hook_timeout, disconnect, shutdown) stops the events.
 *
 * A socket belongs to the hook that made it: it sits in that hook's cleanup
 * scope while it holds a connection, and is closed when the run ends unless
 * setkeepalive handed the connection to the generation's pool (a
 * struct vm_resource, closed when the generation retires). Idle pooled
 * connections are watched: one the peer closes or writes to is dropped.
 *
 * Must not block the loop (no getaddrinfo: names go to the resolver, see
 * l_socket_connect_addrs), must not buffer more than a receive returns plus
 * one read, and knows no SMTP. */
#include "l_socket.h"

#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "dns.h"
#include "l_dns.h"
#include "lua_bind.h"
#include "lua_hook.h"
#include "lua_vm.h"
#include "tls.h"

#define SOCKET_CONNECT_TIMEOUT 10.0
#define SOCKET_SEND_TIMEOUT 10.0
#define SOCKET_READ_TIMEOUT 30.0
#define SOCKET_KEEPALIVE_IDLE 60.0
#define SOCKET_POOL_SIZE 32
/* Reads one receive makes per event before it lets the loop breathe: a
 * peer that writes faster than we read cannot starve everyone else. */
#define SOCKET_READS_PER_STEP 64
/* At most this many candidate addresses per connect (A + AAAA answers). */
#define SOCKET_CANDIDATES_MAX 16
/* sock:send gathers an array's small pieces into one write of up to this. */
#define SOCKET_GATHER 4096

enum sock_op { OP_NONE, OP_CONNECT, OP_HANDSHAKE, OP_SEND, OP_RECV, OP_RESOLVE };
enum { T_CONNECT, T_SEND, T_READ };

/* The TLS settings a connection was made with: part of its pool key. */
struct sock_tls {
    bool on;
    bool verify;
    char *server_name; /* may be NULL */
    char *cafile;      /* NULL: the system bundle */
};

struct sock {
    struct hook_wait wait; /* first: the hook layer hands this back */
    struct hook_resource res;
    struct hook_state *owner; /* the hook whose run the socket lives in, or NULL */
    bool in_scope;
    struct vm *vm;
    struct netc c;  /* c.fd < 0: no connection */
    struct buf in;  /* received, not yet returned */
    struct buf out; /* what a blocked or timed-out send still has to send */
    double timeouts[3];
    ev_io io;
    /* io was started on this very connection, so libev has its fd
     * registered: re-arming only changes the events. ev_io_set would flag
     * the fd as new, and libev answers that with an epoll_ctl each time. */
    bool io_on_conn;
    ev_timer timer;
    enum sock_op op;
    int anchor;     /* registry ref to the userdata while it waits */
    bool timed_out; /* some operation on this connection timed out */
    bool used;      /* sent or received since connect (a reused one may not swap) */
    bool keepalive; /* handed to the pool: this object is unusable */
    bool kick;      /* feed the watcher once armed: input is ready now */
    int reused;
    double idle; /* the idle timeout it was pooled with, for a put-back */
    /* The target, for the pool key and a fresh connect. */
    char *key;  /* the pool key: pool name, or host:port */
    struct pool_conn *spare; /* the entry its pooled connection came in, for the way back */
    char *host; /* as given (for SNI when it is a name) */
    struct netc_addr addr;
    /* connect */
    struct netc_addr *cands;
    size_t n_cands, i_cand;
    int last_err;
    bool then_handshake; /* sslhandshake swapped a pooled connection for a fresh one */
    /* The session that handshake offers, anchored while it connects. */
    const struct tls_session *offer;
    int offer_ref;
    /* TLS */
    struct sock_tls tls; /* what the connection runs (or the handshake asked for) */
    /* receive */
    struct netc_want want;
    char *delim; /* receiveuntil's pattern, owned while it waits */
    /* send */
    size_t send_total;
    /* resolve (OP_RESOLVE): the resolver's query, dropped on cancel */
    void (*query_cancel)(void *query);
    void *query;
    char errbuf[256];
};

static const char *const op_names[] = {"a socket",  "sock:connect", "sock:sslhandshake",
                                       "sock:send", "sock:receive", "sock:connect (resolving)"};

/* ------------------------------------------------------------ the pools */

struct pool_conn {
    struct pool_conn *next, *prev;
    struct pool *pool;
    struct netc c;
    struct netc_addr addr;
    struct sock_tls tls;
    int reused;
    double idle_timeout;
    ev_io io;
    ev_timer idle;
};

struct pool {
    struct pool *next;
    struct pools *owner;
    char *key;
    int n, size;
    struct pool_conn *head; /* most recently pooled first */
};

struct pools {
    struct vm_resource res; /* first */
    struct vm *vm;
    struct pool *list;
};

static const char pools_kind = 0;

static void tls_settings_free(struct sock_tls *t)
{
    free(t->server_name);
    free(t->cafile);
    memset(t, 0, sizeof *t);
}

static bool str_same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool tls_same(const struct sock_tls *a, const struct sock_tls *b)
{
    if (a->on != b->on) return false;
    if (!a->on) return true;
    return a->verify == b->verify && str_same(a->server_name, b->server_name) &&
           (!a->verify || str_same(a->cafile, b->cafile));
}

static void pool_conn_unlink(struct pool_conn *pc)
{
    struct pool *p = pc->pool;
    struct vm *vm = p->owner->vm;
    ev_io_stop(vm->loop, &pc->io);
    ev_timer_stop(vm->loop, &pc->idle);
    if (pc->prev)
        pc->prev->next = pc->next;
    else
        p->head = pc->next;
    if (pc->next) pc->next->prev = pc->prev;
    pc->next = pc->prev = NULL;
    p->n--;
}

/* An empty pool goes (pools are made again on demand). */
static void pool_maybe_free(struct pool *p)
{
    if (p->n > 0) return;
    struct pool **pp = &p->owner->list;
    while (*pp != p)
        pp = &(*pp)->next;
    *pp = p->next;
    free(p->key);
    free(p);
}

static void pool_conn_free(struct pool_conn *pc)
{
    tls_settings_free(&pc->tls);
    free(pc);
}

/* Drops an idle connection: unlinks it and closes it (its pool stays). */
static void pool_conn_close(struct pool_conn *pc, bool goodbye)
{
    pool_conn_unlink(pc);
    netc_close(&pc->c, goodbye);
    pool_conn_free(pc);
}

static void pool_conn_drop(struct pool_conn *pc, bool goodbye)
{
    struct pool *p = pc->pool;
    pool_conn_close(pc, goodbye);
    pool_maybe_free(p);
}

/* An idle connection became readable: the peer closed it or says something
 * nobody asked for. Either way it cannot serve the next user. */
static void pool_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    pool_conn_drop(w->data, false);
}

static void pool_on_idle(struct ev_loop *loop, ev_timer *w, int revents)
{
    pool_conn_drop(w->data, true);
}

static void pools_drop_all(struct pools *ps)
{
    while (ps->list)
        pool_conn_drop(ps->list->head, true);
}

static void pools_retire(struct vm_resource *r, struct vm *vm)
{
    pools_drop_all((struct pools *)r);
}

static void pools_close(struct vm_resource *r, struct vm *vm)
{
    pools_drop_all((struct pools *)r);
    free(r);
}

static struct pools *pools_of(struct vm *vm, bool create)
{
    struct pools *ps = (struct pools *)vm_resource_find(vm, &pools_kind);
    if (ps || !create) return ps;
    ps = calloc(1, sizeof *ps);
    if (!ps) return NULL;
    ps->res.kind = &pools_kind;
    ps->res.retire = pools_retire;
    ps->res.close = pools_close;
    ps->vm = vm;
    vm_resource_add(vm, &ps->res);
    return ps;
}

static struct pool *pool_find(struct pools *ps, const char *key)
{
    for (struct pool *p = ps ? ps->list : NULL; p; p = p->next)
        if (strcmp(p->key, key) == 0) return p;
    return NULL;
}

/* ------------------------------------------------------------ the socket */

static void sock_scope_leave(struct sock *s)
{
    if (s->in_scope) hook_resource_remove(&s->res);
    s->in_scope = false;
}

/* Stops the events of the running operation. */
static void sock_stop(struct sock *s)
{
    if (s->op == OP_RESOLVE && s->query_cancel) s->query_cancel(s->query);
    s->query_cancel = NULL;
    s->query = NULL;
    if (s->vm->loop) {
        ev_io_stop(s->vm->loop, &s->io);
        ev_timer_stop(s->vm->loop, &s->timer);
    }
    s->op = OP_NONE;
    free(s->delim);
    s->delim = NULL;
}

static void sock_drop_offer(struct sock *s)
{
    if (s->offer_ref != LUA_NOREF) luaL_unref(s->vm->L, LUA_REGISTRYINDEX, s->offer_ref);
    s->offer_ref = LUA_NOREF;
    s->offer = NULL;
}

static void sock_unanchor(struct sock *s)
{
    if (s->anchor != LUA_NOREF) luaL_unref(s->vm->L, LUA_REGISTRYINDEX, s->anchor);
    s->anchor = LUA_NOREF;
}

/* Closes the connection (not the object: it may connect again). */
static void sock_disconnect(struct sock *s, bool goodbye)
{
    sock_stop(s);
    if (s->c.fd >= 0) netc_close(&s->c, goodbye);
    s->c.fd = -1;
    buf_free(&s->in);
    buf_free(&s->out);
    free(s->cands);
    s->cands = NULL;
    s->n_cands = s->i_cand = 0;
    s->then_handshake = false;
    sock_drop_offer(s);
    sock_scope_leave(s);
}

/* The hook's run ended with the socket still connected. */
static void sock_release(struct hook_resource *r)
{
    struct sock *s = (struct sock *)((char *)r - offsetof(struct sock, res));
    s->in_scope = false;
    sock_disconnect(s, true);
    s->owner = NULL;
}

/* hook_timeout, disconnect, shutdown: the hook will not be resumed. The
 * connection itself goes with the hook's scope. */
static void sock_cancel(struct hook_wait *w)
{
    struct sock *s = (struct sock *)w;
    sock_stop(s);
    sock_unanchor(s);
}

static void sock_scope_enter(struct sock *s, struct hook_state *h)
{
    if (!s->owner) s->owner = h;
    if (!s->in_scope && s->owner) {
        hook_resource_add(s->owner, &s->res);
        s->in_scope = true;
    }
}

/* The socket argument of a method, checked for ownership: another hook's
 * socket is a programming error. */
static struct sock *sock_arg(lua_State *L, int idx)
{
    struct sock *s = luaL_checkudata(L, idx, SOCKET_MT);
    if (s->owner && hook_running(L) != s->owner) luaL_error(L, "socket belongs to another session");
    return s;
}

static int push_fail(lua_State *L, const char *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* Starts s->io on the connection for want (the watcher is stopped). */
static void sock_arm(struct sock *s, int want)
{
    if (s->io_on_conn && s->io.fd == s->c.fd)
        ev_io_modify(&s->io, want);
    else
        ev_io_set(&s->io, s->c.fd, want);
    ev_io_start(s->vm->loop, &s->io);
    s->io_on_conn = true;
}

/* Arms the running operation's events and yields. */
static int sock_yield(lua_State *L, struct sock *s, struct hook_state *h, enum sock_op op, int want,
                      double timeout)
{
    s->op = op;
    s->wait.what = op_names[op];
    s->wait.cancel = sock_cancel;
    sock_arm(s, want);
    if (s->kick) ev_feed_event(s->vm->loop, &s->io, want);
    s->kick = false;
    if (timeout > 0) {
        ev_timer_set(&s->timer, timeout, 0.);
        ev_timer_start(s->vm->loop, &s->timer);
    }
    lua_pushvalue(L, 1);
    s->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    hook_wait_set(h, &s->wait);
    return lua_yield(L, 0);
}

/* Changes the direction the running operation waits for. */
static void sock_rearm(struct sock *s, int want)
{
    if (s->io.fd == s->c.fd && (s->io.events & (EV_READ | EV_WRITE)) == want &&
        ev_is_active(&s->io))
        goto kick;
    ev_io_stop(s->vm->loop, &s->io);
    sock_arm(s, want);
kick:
    /* A receive that stopped to let the loop breathe comes back at once
     * (fed after arming: stopping a watcher drops its pending event). */
    if (s->kick) ev_feed_event(s->vm->loop, &s->io, want);
    s->kick = false;
}

/* The operation ended: returns the coroutine to push its results on, or
 * NULL (nothing to do: the wait had ended). Events are stopped either way. */
static lua_State *sock_wake_begin(struct sock *s)
{
    sock_stop(s);
    lua_State *co = hook_wake_begin(s->owner, &s->wait);
    if (!co) sock_unanchor(s);
    return co;
}

static void sock_wake_finish(struct sock *s, int nargs)
{
    struct hook_state *h = s->owner;
    sock_unanchor(s); /* the results are pushed: s may go once the hook runs */
    hook_wake_finish(h, nargs);
}

/* ------------------------------------------------------------- connect */

/* Tries the candidates from s->i_cand on: 1 connected, 0 in progress (fd
 * set, wait for writability), -1 all failed (s->last_err). */
static int sock_connect_try(struct sock *s)
{
    while (s->i_cand < s->n_cands) {
        const struct netc_addr *a = &s->cands[s->i_cand++];
        bool in_progress;
        int err = 0;
        int fd = netc_connect_start(a, &in_progress, &err);
        if (fd < 0) {
            s->last_err = err;
            continue;
        }
        s->c.fd = fd;
        s->c.drained = false;
        s->io_on_conn = false;
        s->addr = *a;
        return in_progress ? 0 : 1;
    }
    return -1;
}

static const char *sock_connect_error(struct sock *s)
{
    return netc_strerror(s->last_err, s->errbuf, sizeof s->errbuf);
}

static int sock_tls_begin(struct sock *s, const struct tls_session *offer, int *want,
                          const char **err);
static void sock_push_session(lua_State *L, struct sock *s);

int l_socket_connect_addrs(lua_State *L, int idx, const struct netc_addr *addrs, size_t n)
{
    struct sock *s = luaL_checkudata(L, idx, SOCKET_MT);
    struct hook_state *h = hook_wait_check(L, "sock:connect");
    if (idx != 1) {
        /* sock_yield anchors the socket from index 1. */
        lua_pushvalue(L, idx);
        lua_replace(L, 1);
    }
    if (n > SOCKET_CANDIDATES_MAX) n = SOCKET_CANDIDATES_MAX;
    if (s->c.fd >= 0) sock_disconnect(s, true);
    free(s->cands);
    s->cands = malloc((n ? n : 1) * sizeof *addrs);
    if (!s->cands) return luaL_error(L, "sock:connect: out of memory");
    memcpy(s->cands, addrs, n * sizeof *addrs);
    s->n_cands = n;
    s->i_cand = 0;
    s->last_err = ECONNREFUSED;
    sock_scope_enter(s, h);
    int r = sock_connect_try(s);
    if (r < 0) {
        const char *e = sock_connect_error(s);
        sock_disconnect(s, false);
        return push_fail(L, e);
    }
    if (r > 0 && s->then_handshake) {
        /* sslhandshake's fresh connection: go on with the handshake. */
        s->then_handshake = false;
        int want = EV_READ;
        const char *e = NULL;
        r = sock_tls_begin(s, s->offer, &want, &e);
        if (r >= 0) sock_drop_offer(s);
        if (r < 0) return push_fail(L, e);
        if (r > 0) {
            sock_push_session(L, s);
            return 1;
        }
        return sock_yield(L, s, h, OP_HANDSHAKE, want, s->timeouts[T_CONNECT]);
    }
    if (r > 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    return sock_yield(L, s, h, OP_CONNECT, EV_WRITE, s->timeouts[T_CONNECT]);
}

static void sock_on_io(struct ev_loop *loop, ev_io *w, int revents);

/* Hands a stopped watcher, and with it libev's registration of its fd, to
 * another owner: the connection moves between a socket and its pool
 * without libev ever taking the fd for a new one (an epoll_ctl each time). */
static void io_hand_over(ev_io *to, const ev_io *from, void (*cb)(struct ev_loop *, ev_io *, int),
                         void *data, int events)
{
    *to = *from;
    ev_set_cb(to, cb);
    to->data = data;
    ev_io_modify(to, events);
}

/* Takes the most recently pooled connection for s->key, if any. With tls,
 * only one made with exactly those TLS settings. */
static bool sock_take_pooled(struct sock *s, const struct sock_tls *tls)
{
    struct pool *p = pool_find(pools_of(s->vm, false), s->key);
    if (!p) return false;
    struct pool_conn *pc = p->head, *next;
    for (; pc; pc = next) {
        next = pc->next;
        if (tls && !tls_same(&pc->tls, tls)) continue;
        /* The peer closed it or spoke, and the loop saw it but has not run
         * pool_on_io yet. (Asking the kernel here too would cost a syscall
         * per reuse and still race with the peer.) */
        if (!ev_is_pending(&pc->io)) break;
        pool_conn_close(pc, false);
    }
    if (!pc) {
        pool_maybe_free(p);
        return false;
    }
    pool_conn_unlink(pc);
    pool_maybe_free(p);
    s->c = pc->c;
    s->c.drained = false;
    io_hand_over(&s->io, &pc->io, sock_on_io, s, EV_READ);
    s->io_on_conn = true;
    s->idle = pc->idle_timeout;
    s->addr = pc->addr;
    s->reused = pc->reused + 1;
    tls_settings_free(&s->tls);
    s->tls = pc->tls;
    memset(&pc->tls, 0, sizeof pc->tls);
    /* Kept for this socket's setkeepalive: a pooled round trip allocates
     * no pool entry. */
    free(s->spare);
    s->spare = pc;
    return true;
}

/* Moves s's connection (idle, nothing unread) into the pool for s->key,
 * which keeps at most size (0: as it is, or the default) connections:
 * the least recently pooled goes first. False, with the connection still
 * s's, when there is no pool to put it in (a retired generation, no
 * memory). */
static bool pool_put(struct sock *s, double idle, int size)
{
    struct pools *ps = s->vm->retired ? NULL : pools_of(s->vm, true);
    if (!ps || !s->key) return false;
    struct pool *p = pool_find(ps, s->key);
    struct pool_conn *pc = s->spare ? s->spare : calloc(1, sizeof *pc);
    if (!pc) return false;
    s->spare = NULL;
    memset(pc, 0, sizeof *pc);
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p || !(p->key = strdup(s->key))) {
            free(p);
            free(pc);
            return false;
        }
        p->owner = ps;
        p->size = SOCKET_POOL_SIZE;
        p->next = ps->list;
        ps->list = p;
    }
    if (size > 0) p->size = size;
    while (p->n >= p->size) {
        struct pool_conn *last = p->head;
        while (last->next)
            last = last->next;
        pool_conn_close(last, true);
    }
    pc->pool = p;
    pc->c = s->c;
    pc->addr = s->addr;
    pc->tls = s->tls;
    memset(&s->tls, 0, sizeof s->tls);
    pc->reused = s->reused;
    pc->idle_timeout = idle;
    pc->next = p->head;
    if (p->head) p->head->prev = pc;
    p->head = pc;
    p->n++;
    if (s->io_on_conn && s->io.fd == pc->c.fd) {
        ev_io_stop(s->vm->loop, &s->io); /* a no-op: the operation ended */
        io_hand_over(&pc->io, &s->io, pool_on_io, pc, EV_READ);
    } else {
        ev_io_init(&pc->io, pool_on_io, pc->c.fd, EV_READ);
        pc->io.data = pc;
    }
    ev_timer_init(&pc->idle, pool_on_idle, idle, 0.);
    pc->idle.data = pc;
    ev_io_start(s->vm->loop, &pc->io);
    if (idle > 0) ev_timer_start(s->vm->loop, &pc->idle);
    s->c.fd = -1;
    s->c.tls = NULL;
    return true;
}

/* ------------------------------------------------------------ names */

/* connect to a name: its A then AAAA addresses from the process's
 * resolver and its cache (async-api.md 4 and 5), tried in order. The
 * query is the socket's wait (l_socket_resolve_wait) under the connect
 * timeout; a cached answer or a literal-like name ("localhost") comes
 * back inside dns_lookup_host and connects without waiting for DNS. */
struct name_query {
    struct sock *s;
    int port;
    bool in_binding; /* done runs inside dns_lookup_host: the binding goes on */
    struct dns_lookup *lookup;
    struct netc_addr addrs[SOCKET_CANDIDATES_MAX];
    size_t n;
    char err[64];
};

static void name_query_done(void *ud, const char *const *ips, int n, const char *err)
{
    struct name_query *q = ud;
    q->n = 0;
    for (int i = 0; !err && i < n && q->n < SOCKET_CANDIDATES_MAX; i++)
        if (netc_addr_parse(ips[i], q->port, &q->addrs[q->n]) == 1) q->n++;
    snprintf(q->err, sizeof q->err, "%s", err ? err : "name not found");
    if (q->in_binding) return;
    q->lookup = NULL;
    struct sock *s = q->s;
    struct netc_addr addrs[SOCKET_CANDIDATES_MAX];
    size_t na = q->n;
    char e[sizeof q->err];
    memcpy(addrs, q->addrs, na * sizeof addrs[0]);
    memcpy(e, q->err, sizeof e);
    free(q); /* before the hook resumes: the socket no longer points at it */
    l_socket_resolved((struct l_socket *)s, addrs, na, na ? NULL : e);
}

/* The wait ended first (connect timeout, hook_timeout, disconnect): the
 * query is detached and its answer, if any, only fills the cache. */
static void name_query_cancel(void *query)
{
    struct name_query *q = query;
    if (q->lookup) dns_lookup_cancel(q->lookup);
    free(q);
}

static int sock_connect_name(lua_State *L, struct sock *s, const char *host, int port)
{
    char err[256];
    struct dns_resolver *r = l_dns_resolver(s->vm, err, sizeof err);
    if (!r) return push_fail(L, err);
    struct name_query *q = calloc(1, sizeof *q);
    if (!q) return luaL_error(L, "sock:connect: out of memory");
    q->s = s;
    q->port = port;
    q->in_binding = true;
    struct dns_lookup *l = dns_lookup_host(r, host, name_query_done, q);
    q->in_binding = false;
    if (!l) {
        /* Answered at once: connect to what came back, or fail now. */
        struct netc_addr addrs[SOCKET_CANDIDATES_MAX];
        size_t n = q->n;
        memcpy(addrs, q->addrs, n * sizeof addrs[0]);
        if (!n) {
            lua_pushnil(L);
            lua_pushstring(L, q->err);
            free(q);
            return 2;
        }
        free(q);
        lua_settop(L, 1);
        return l_socket_connect_addrs(L, 1, addrs, n);
    }
    q->lookup = l;
    lua_settop(L, 1);
    return l_socket_resolve_wait(L, (struct l_socket *)s, name_query_cancel, q);
}

static int l_socket_connect(lua_State *L)
{
    struct sock *s = sock_arg(L, 1);
    const char *host = luaL_checkstring(L, 2);
    bool is_unix = netc_addr_is_unix(host);
    int port = 0, opt_idx = 4;
    if (is_unix) {
        /* No port: the options may come third. */
        if (lua_istable(L, 3)) opt_idx = 3;
    } else {
        lua_Number pn = luaL_checknumber(L, 3);
        if (!(pn >= 1 && pn <= 65535) || pn != floor(pn))
            return luaL_argerror(L, 3, "expected a port number 1-65535");
        port = (int)pn;
    }
    const char *pool_name = NULL;
    if (!lua_isnoneornil(L, opt_idx)) {
        luaL_checktype(L, opt_idx, LUA_TTABLE);
        lua_getfield(L, opt_idx, "pool");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "sock:connect: pool must be a string");
            pool_name = lua_tostring(L, -1);
        }
    }
    struct netc_addr addr;
    int lit = is_unix ? netc_addr_parse(host, port, &addr) : 0;
    if (lit < 0) return luaL_argerror(L, 2, "a unix socket path must be 1-107 bytes");
    struct hook_state *h = hook_wait_check(L, "sock:connect");

    /* A new connection replaces whatever the object had. */
    sock_disconnect(s, true);
    s->keepalive = false;
    s->timed_out = false;
    s->used = false;
    s->reused = 0;
    tls_settings_free(&s->tls);
    free(s->key);
    free(s->host);
    s->host = strdup(host);
    if (pool_name) {
        s->key = strdup(pool_name);
    } else {
        size_t n = strlen(host) + 16;
        s->key = malloc(n);
        if (s->key) {
            if (is_unix)
                snprintf(s->key, n, "%s", host);
            else
                snprintf(s->key, n, "%s:%d", host, port);
        }
    }
    if (!s->host || !s->key) return luaL_error(L, "sock:connect: out of memory");

    if (sock_take_pooled(s, NULL)) {
        sock_scope_enter(s, h);
        lua_pushboolean(L, 1);
        return 1;
    }
    /* An IP literal is parsed only now that a connection must be made.
     * Names are the resolver's (async-api.md 5); never getaddrinfo on the
     * loop. */
    if (!is_unix) lit = netc_addr_parse(host, port, &addr);
    if (lit == 0) return sock_connect_name(L, s, s->host, port);
    lua_settop(L, 1);
    return l_socket_connect_addrs(L, 1, &addr, 1);
}

/* ------------------------------------------------------------ handshake */

static void sock_push_session(lua_State *L, struct sock *s)
{
    struct tls_session **box = lua_newuserdata(L, sizeof *box);
    *box = s->c.tls ? tls_client_session(s->c.tls) : NULL;
    luaL_getmetatable(L, SOCKET_SESSION_MT);
    lua_setmetatable(L, -2);
}

/* One handshake step: 1 done, 0 waiting (*want set), -1 failed (err set,
 * the connection closed). */
static int sock_handshake_step(struct sock *s, int *want, const char **err)
{
    int r = tls_client_handshake(s->c.tls, want);
    if (r == 1) return 1;
    if (r == CONN_AGAIN) return 0;
    snprintf(s->errbuf, sizeof s->errbuf, "%s", r == 0 ? "closed" : tls_client_error(s->c.tls));
    *err = s->errbuf;
    sock_disconnect(s, false);
    return -1;
}

/* Starts TLS on the connected socket with the settings in s->tls, offering
 * offer (may be NULL) for resumption: as sock_handshake_step. */
static int sock_tls_begin(struct sock *s, const struct tls_session *offer, int *want,
                          const char **err)
{
    struct tls_client_config *cfg =
        tls_client_config_get(s->tls.cafile, s->tls.verify, s->errbuf, sizeof s->errbuf);
    if (cfg) {
        /* Bytes read before TLS must never pass as if they came through it. */
        buf_free(&s->in);
        s->c.tls =
            tls_client_new(s->c.fd, cfg, s->tls.server_name, offer, s->errbuf, sizeof s->errbuf);
        tls_client_config_release(cfg);
    }
    if (!s->c.tls) {
        *err = s->errbuf;
        sock_disconnect(s, false);
        return -1;
    }
    return sock_handshake_step(s, want, err);
}

static bool pool_put(struct sock *s, double idle, int size);

static char *opt_string(lua_State *L, int t, const char *name)
{
    lua_getfield(L, t, name);
    char *v = NULL;
    if (!lua_isnil(L, -1)) {
        v = strdup(lua_tostring(L, -1));
        if (!v) luaL_error(L, "sock:sslhandshake: out of memory");
    }
    lua_pop(L, 1);
    return v;
}

static int l_socket_sslhandshake(lua_State *L)
{
    struct sock *s = sock_arg(L, 1);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    else {
        lua_settop(L, 1);
        lua_newtable(L);
    }
    lua_getfield(L, 2, "verify");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        return luaL_error(L, "sock:sslhandshake: verify must be a boolean, got %s",
                          luaL_typename(L, -1));
    /* Only verify = false written out turns verification off. */
    bool verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 2, "session");
    const struct tls_session *offer = NULL;
    if (!lua_isnil(L, -1)) {
        if (!lbind_is_udata(L, -1, SOCKET_SESSION_MT))
            return luaL_error(L,
                              "sock:sslhandshake: session must be what a handshake returned, "
                              "got %s",
                              luaL_typename(L, -1));
        offer = *(struct tls_session **)lua_touserdata(L, -1);
    }
    lua_pop(L, 1);
    lua_getfield(L, 2, "server_name");
    lua_getfield(L, 2, "cafile");
    for (int i = -2; i < 0; i++)
        if (!lua_isnil(L, i) && lua_type(L, i) != LUA_TSTRING)
            return luaL_error(L, "sock:sslhandshake: %s must be a string, got %s",
                              i == -2 ? "server_name" : "cafile", luaL_typename(L, i));
    lua_pop(L, 2);
    struct hook_state *h = hook_wait_check(L, "sock:sslhandshake");
    if (s->c.fd < 0 || s->op != OP_NONE) return push_fail(L, "closed");

    struct sock_tls want = {true, verify, opt_string(L, 2, "server_name"),
                            verify ? opt_string(L, 2, "cafile") : NULL};
    struct netc_addr probe;
    if (!want.server_name && s->host && netc_addr_parse(s->host, 0, &probe) == 0)
        want.server_name = strdup(s->host); /* a name: SNI, and the name checked */
    if (verify && !want.server_name) {
        tls_settings_free(&want);
        sock_disconnect(s, false);
        return push_fail(L, "certificate verify failed: no server_name to check the "
                            "certificate against");
    }
    if (s->reused > 0 && tls_same(&s->tls, &want)) {
        /* A pooled connection made with exactly these settings. */
        tls_settings_free(&want);
        sock_push_session(L, s);
        return 1;
    }
    if (s->reused > 0 && !s->used) {
        /* A pooled connection made for other TLS settings (or none) goes
         * back unused; one made with these is taken, or a fresh one made. */
        s->reused--; /* it goes back as it came */
        if (!pool_put(s, s->idle, 0)) sock_disconnect(s, true);
        s->c.fd = -1;
        s->c.tls = NULL;
        s->reused = 0;
        if (sock_take_pooled(s, &want)) {
            tls_settings_free(&want);
            sock_scope_enter(s, h);
            sock_push_session(L, s);
            return 1;
        }
        tls_settings_free(&s->tls);
        s->tls = want;
        struct netc_addr a = s->addr;
        if (offer) {
            /* Offered once the fresh connection is up. */
            lua_getfield(L, 2, "session");
            s->offer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
            s->offer = offer;
        }
        lua_settop(L, 1);
        s->then_handshake = true;
        return l_socket_connect_addrs(L, 1, &a, 1);
    }
    if (s->c.tls) {
        tls_settings_free(&want);
        return luaL_error(L, "sock:sslhandshake: the connection is in TLS already");
    }
    tls_settings_free(&s->tls);
    s->tls = want;
    s->used = true;
    int wantdir = EV_READ;
    const char *e = NULL;
    int r = sock_tls_begin(s, offer, &wantdir, &e);
    if (r < 0) return push_fail(L, e);
    if (r > 0) {
        sock_push_session(L, s);
        return 1;
    }
    return sock_yield(L, s, h, OP_HANDSHAKE, wantdir, s->timeouts[T_CONNECT]);
}

/* ---------------------------------------------------------------- send */

/* Sends s->out: 1 all sent, 0 waiting (*want), -1 failed (err). */
static int sock_flush(struct sock *s, int *want, const char **err)
{
    while (buf_len(&s->out) > 0) {
        int e = 0;
        ssize_t n = netc_send(&s->c, buf_head(&s->out), buf_len(&s->out), want, &e);
        if (n > 0) {
            buf_consume(&s->out, (size_t)n);
            continue;
        }
        if (n == NETC_AGAIN) return 0;
        *err = e ? netc_strerror(e, s->errbuf, sizeof s->errbuf) : "closed";
        return -1;
    }
    buf_free(&s->out);
    return 1;
}

/* Sends len bytes at p, or queues what the socket does not take (and
 * everything once something is queued) in s->out: the same bytes are
 * retried, as TLS needs for the write it holds. False with *err set on a
 * failure (the socket is closed), or with *err NULL if memory ran out. */
static bool sock_send_bytes(struct sock *s, const char *p, size_t len, bool *queued, int *want,
                            const char **err)
{
    size_t off = 0;
    while (!*queued && off < len) {
        int e = 0;
        ssize_t n = netc_send(&s->c, p + off, len - off, want, &e);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n == NETC_AGAIN) {
            *queued = true;
            break;
        }
        *err = e ? netc_strerror(e, s->errbuf, sizeof s->errbuf) : "closed";
        sock_disconnect(s, false);
        return false;
    }
    if (*queued && off < len && !buf_append(&s->out, p + off, len - off)) {
        *err = NULL;
        sock_disconnect(s, false);
        return false;
    }
    return true;
}

static int l_socket_send(lua_State *L)
{
    struct sock *s = sock_arg(L, 1);
    int t = lua_type(L, 2);
    if (t != LUA_TTABLE && t != LUA_TSTRING && t != LUA_TNUMBER)
        return luaL_argerror(L, 2, "expected a string or an array of strings");
    size_t n_pieces = t == LUA_TTABLE ? lua_objlen(L, 2) : 1, total = 0;
    /* Small pieces are gathered into one write (one syscall, one TLS
     * record), so an array costs no more than the string it spells. The
     * first pass checks every piece (nothing is sent if one is wrong) and
     * gathers them while they fit; only a larger array takes a second pass
     * that sends as it goes. */
    char gather[SOCKET_GATHER];
    size_t gathered = 0;
    bool fits = true;
    for (size_t i = 1; i <= n_pieces; i++) {
        if (t == LUA_TTABLE) lua_rawgeti(L, 2, (int)i);
        size_t len;
        const char *p = lua_tolstring(L, t == LUA_TTABLE ? -1 : 2, &len);
        if (!p)
            return luaL_error(L, "sock:send: expected an array of strings, got %s at [%d]",
                              luaL_typename(L, -1), (int)i);
        total += len;
        if (fits && gathered + len <= sizeof gather) {
            memcpy(gather + gathered, p, len);
            gathered += len;
        } else {
            fits = false;
        }
        if (t == LUA_TTABLE) lua_pop(L, 1); /* still anchored by the table */
    }
    struct hook_state *h = hook_wait_check(L, "sock:send");
    if (s->c.fd < 0 || s->op != OP_NONE) return push_fail(L, "closed");
    s->used = true;
    s->send_total = total;
    int want = EV_WRITE;
    const char *err = NULL;
    /* What a timed-out send left goes first, then this call's data. */
    bool queued = buf_len(&s->out) > 0;
    if (fits) {
        if (gathered && !sock_send_bytes(s, gather, gathered, &queued, &want, &err))
            return err ? push_fail(L, err) : luaL_error(L, "sock:send: out of memory");
    } else if (t != LUA_TTABLE) {
        size_t len;
        const char *p = lua_tolstring(L, 2, &len);
        if (!sock_send_bytes(s, p, len, &queued, &want, &err))
            return err ? push_fail(L, err) : luaL_error(L, "sock:send: out of memory");
    } else {
        gathered = 0;
        int base = lua_gettop(L);
        for (size_t i = 1; i <= n_pieces + 1; i++) {
            size_t len = 0;
            const char *p = NULL;
            lua_settop(L, base); /* the previous piece has been used */
            if (i <= n_pieces) {
                /* On the stack while used: a number's string exists only there. */
                lua_rawgeti(L, 2, (int)i);
                p = lua_tolstring(L, -1, &len);
                if (gathered + len <= sizeof gather) {
                    memcpy(gather + gathered, p, len);
                    gathered += len;
                    continue;
                }
            }
            /* The gathered bytes go first; then a piece too big to gather. */
            if (gathered && !sock_send_bytes(s, gather, gathered, &queued, &want, &err))
                return err ? push_fail(L, err) : luaL_error(L, "sock:send: out of memory");
            gathered = 0;
            if (i > n_pieces) break;
            if (len < sizeof gather) {
                memcpy(gather, p, len);
                gathered = len;
            } else if (!sock_send_bytes(s, p, len, &queued, &want, &err)) {
                return err ? push_fail(L, err) : luaL_error(L, "sock:send: out of memory");
            }
        }
        lua_settop(L, base);
    }
    if (queued) {
        int r = sock_flush(s, &want, &err);
        if (r < 0) {
            sock_disconnect(s, false);
            return push_fail(L, err);
        }
        if (r == 0) return sock_yield(L, s, h, OP_SEND, want, s->timeouts[T_SEND]);
    }
    lua_pushinteger(L, (lua_Integer)total);
    return 1;
}

/* ------------------------------------------------------------- receive */

enum recv_result { R_DONE, R_WAIT, R_EOF, R_TOO_LONG, R_ERROR };

/* Looks at the buffer, reading while it cannot answer and the socket has
 * data. R_DONE: *ret bytes of s->in's head are the result, *consume to
 * drop. R_WAIT: *want says for what. */
static enum recv_result sock_recv_step(struct sock *s, size_t *ret, size_t *consume, int *want,
                                       const char **err)
{
    for (int reads = 0;; reads++) {
        enum netc_scan_result r =
            netc_scan(buf_head(&s->in), buf_len(&s->in), &s->want, ret, consume);
        if (r == NETC_DONE) return R_DONE;
        if (r == NETC_TOO_LONG) return R_TOO_LONG;
        if (reads == SOCKET_READS_PER_STEP) {
            /* Let the loop serve others; come back at once. */
            *want = EV_READ;
            s->kick = true;
            return R_WAIT;
        }
        size_t room = netc_read_size(&s->want, buf_len(&s->in));
        /* Into an empty buffer, read on the stack and keep only what came:
         * a reply is a few bytes, and a 16 KiB malloc and free per read
         * cost more than the copy. */
        char scratch[NETC_READ_CHUNK];
        bool direct = buf_len(&s->in) > 0;
        char *w = direct ? buf_reserve(&s->in, room) : scratch;
        if (!w) {
            *err = "out of memory";
            return R_ERROR;
        }
        int e = 0;
        ssize_t n = netc_recv(&s->c, w, room, want, &e);
        if (n > 0) {
            if (direct) {
                buf_commit(&s->in, (size_t)n);
            } else if (!buf_append(&s->in, scratch, (size_t)n)) {
                *err = "out of memory";
                return R_ERROR;
            }
            continue;
        }
        if (n == 0) return R_EOF;
        if (n == NETC_AGAIN) return R_WAIT;
        *err = e ? netc_strerror(e, s->errbuf, sizeof s->errbuf) : "closed";
        return R_ERROR;
    }
}

/* Pushes the outcome of a finished receive (not R_WAIT); returns the count. */
static int sock_recv_push(lua_State *L, struct sock *s, enum recv_result r, size_t ret,
                          size_t consume, const char *err)
{
    switch (r) {
    case R_DONE:
        lua_pushlstring(L, buf_head(&s->in), ret);
        buf_consume(&s->in, consume);
        if (buf_len(&s->in) == 0) buf_free(&s->in);
        return 1;
    case R_EOF:
        if (s->want.kind == NETC_ALL) {
            lua_pushlstring(L, buf_len(&s->in) ? buf_head(&s->in) : "", buf_len(&s->in));
            sock_disconnect(s, true);
            return 1;
        }
        err = "closed";
        /* fall through */
    case R_ERROR:
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushlstring(L, buf_len(&s->in) ? buf_head(&s->in) : "", buf_len(&s->in));
        sock_disconnect(s, false);
        return 3;
    case R_TOO_LONG:
        sock_disconnect(s, false);
        return push_fail(L, "line too long");
    case R_WAIT:
        break;
    }
    return 0;
}

static size_t sock_line_max(struct sock *s)
{
    return s->vm->socket_line_max ? s->vm->socket_line_max : SOCKET_LINE_MAX_DEFAULT;
}

/* The receive of s->want, after the context check. */
static int sock_recv_start(lua_State *L, struct sock *s, struct hook_state *h, const char *delim,
                           size_t dlen)
{
    if (s->c.fd < 0 || s->op != OP_NONE) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushliteral(L, "");
        return 3;
    }
    s->used = true;
    if (delim) {
        s->delim = malloc(dlen);
        if (!s->delim) return luaL_error(L, "sock:receive: out of memory");
        memcpy(s->delim, delim, dlen);
        s->want.delim = s->delim;
        s->want.dlen = dlen;
    }
    size_t ret, consume;
    int want = EV_READ;
    const char *err = NULL;
    enum recv_result r = sock_recv_step(s, &ret, &consume, &want, &err);
    if (r != R_WAIT) {
        int n = sock_recv_push(L, s, r, ret, consume, err);
        free(s->delim);
        s->delim = NULL;
        return n;
    }
    /* sock_yield rebinds the watcher to the direction asked for. A fed
     * event (the step stopped to let the loop breathe) survives the set. */
    return sock_yield(L, s, h, OP_RECV, want, s->timeouts[T_READ]);
}

static int l_socket_receive(lua_State *L)
{
    struct sock *s = sock_arg(L, 1);
    struct netc_want w = {.kind = NETC_LINE};
    int t = lua_type(L, 2);
    if (t == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, 2);
        if (!(n >= 0) || n != floor(n) || n > 1e15)
            return luaL_argerror(L, 2, "expected a byte count >= 0");
        w.kind = NETC_COUNT;
        w.n = (size_t)n;
    } else if (t == LUA_TSTRING) {
        const char *p = lua_tostring(L, 2);
        if (!strcmp(p, "*l") || !strcmp(p, "l"))
            w.kind = NETC_LINE;
        else if (!strcmp(p, "*a") || !strcmp(p, "a"))
            w.kind = NETC_ALL;
        else
            return luaL_argerror(L, 2, "expected \"*l\", \"*a\" or a byte count");
    } else if (t != LUA_TNONE && t != LUA_TNIL) {
        return luaL_argerror(L, 2, "expected \"*l\", \"*a\" or a byte count");
    }
    if (w.kind == NETC_LINE) w.n = sock_line_max(s);
    struct hook_state *h = hook_wait_check(L, "sock:receive");
    s->want = w;
    if (w.kind == NETC_COUNT && w.n == 0 && s->c.fd >= 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    return sock_recv_start(L, s, h, NULL, 0);
}

/* The iterator receiveuntil returns: upvalue 1 the socket, 2 the pattern. */
static int l_socket_until_iter(lua_State *L)
{
    lua_settop(L, 0);
    lua_pushvalue(L, lua_upvalueindex(1));
    struct sock *s = sock_arg(L, 1);
    size_t dlen;
    const char *d = lua_tolstring(L, lua_upvalueindex(2), &dlen);
    struct hook_state *h = hook_wait_check(L, "sock:receiveuntil");
    s->want = (struct netc_want){.kind = NETC_UNTIL, .n = sock_line_max(s)};
    return sock_recv_start(L, s, h, d, dlen);
}

static int l_socket_receiveuntil(lua_State *L)
{
    sock_arg(L, 1);
    size_t dlen;
    luaL_checklstring(L, 2, &dlen);
    if (dlen == 0) return luaL_argerror(L, 2, "the pattern must not be empty");
    lua_settop(L, 2);
    lua_pushcclosure(L, l_socket_until_iter, 2);
    return 1;
}

/* ---------------------------------------------------------- the events */

static void sock_connect_event(struct sock *s)
{
    int e = netc_connect_result(s->c.fd);
    if (e != 0) {
        s->last_err = e;
        ev_io_stop(s->vm->loop, &s->io); /* its fd is about to close */
        netc_close(&s->c, false);
        int r = sock_connect_try(s);
        if (r == 0) {
            sock_rearm(s, EV_WRITE);
            return;
        }
        if (r < 0) {
            lua_State *co = sock_wake_begin(s);
            const char *err = sock_connect_error(s);
            if (!co) return;
            lua_pushnil(co);
            lua_pushstring(co, err);
            sock_disconnect(s, false);
            sock_wake_finish(s, 2);
            return;
        }
    }
    if (s->then_handshake) {
        s->then_handshake = false;
        const char *fail = NULL;
        int want = EV_READ;
        int r = sock_tls_begin(s, s->offer, &want, &fail);
        if (r >= 0) sock_drop_offer(s);
        if (r == 0) {
            s->op = OP_HANDSHAKE;
            s->wait.what = op_names[OP_HANDSHAKE];
            sock_rearm(s, want);
            return;
        }
        lua_State *co = sock_wake_begin(s);
        if (!co) return;
        if (r > 0) {
            sock_push_session(co, s);
            sock_wake_finish(s, 1);
            return;
        }
        lua_pushnil(co);
        lua_pushstring(co, fail);
        sock_wake_finish(s, 2);
        return;
    }
    lua_State *co = sock_wake_begin(s);
    if (!co) return;
    lua_pushboolean(co, 1);
    sock_wake_finish(s, 1);
}

static void sock_handshake_event(struct sock *s)
{
    int want = EV_READ;
    const char *err = NULL;
    int r = sock_handshake_step(s, &want, &err);
    if (r == 0) {
        sock_rearm(s, want);
        return;
    }
    /* On failure the step closed the connection and stopped the events. */
    lua_State *co = sock_wake_begin(s);
    if (!co) return;
    if (r > 0) {
        sock_push_session(co, s);
        sock_wake_finish(s, 1);
        return;
    }
    lua_pushnil(co);
    lua_pushstring(co, err);
    sock_wake_finish(s, 2);
}

static void sock_send_event(struct sock *s)
{
    int want = EV_WRITE;
    const char *err = NULL;
    int r = sock_flush(s, &want, &err);
    if (r == 0) {
        sock_rearm(s, want);
        return;
    }
    lua_State *co = sock_wake_begin(s);
    if (!co) return;
    if (r > 0) {
        lua_pushinteger(co, (lua_Integer)s->send_total);
        sock_wake_finish(s, 1);
        return;
    }
    lua_pushnil(co);
    lua_pushstring(co, err);
    sock_disconnect(s, false);
    sock_wake_finish(s, 2);
}

static void sock_recv_event(struct sock *s)
{
    size_t ret, consume;
    int want = EV_READ;
    const char *err = NULL;
    enum recv_result r = sock_recv_step(s, &ret, &consume, &want, &err);
    if (r == R_WAIT) {
        sock_rearm(s, want);
        return;
    }
    /* The delimiter is read by the scan: stop the events, keep it. */
    char *delim = s->delim;
    s->delim = NULL;
    lua_State *co = sock_wake_begin(s);
    if (!co) {
        free(delim);
        return;
    }
    int n = sock_recv_push(co, s, r, ret, consume, err);
    free(delim);
    sock_wake_finish(s, n);
}

static void sock_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct sock *s = w->data;
    switch (s->op) {
    case OP_CONNECT:
        sock_connect_event(s);
        break;
    case OP_HANDSHAKE:
        sock_handshake_event(s);
        break;
    case OP_SEND:
        sock_send_event(s);
        break;
    case OP_RECV:
        sock_recv_event(s);
        break;
    case OP_NONE:
    case OP_RESOLVE:
        ev_io_stop(loop, w);
        break;
    }
}

static void sock_on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct sock *s = t->data;
    enum sock_op op = s->op;
    s->timed_out = true;
    lua_State *co = sock_wake_begin(s);
    if (!co) return;
    lua_pushnil(co);
    lua_pushliteral(co, "timeout");
    int n = 2;
    if (op == OP_RECV) {
        /* As OpenResty: what came so far is returned (and consumed); the
         * socket stays usable. */
        lua_pushlstring(co, buf_len(&s->in) ? buf_head(&s->in) : "", buf_len(&s->in));
        buf_free(&s->in);
        n = 3;
    } else if (op == OP_CONNECT || op == OP_HANDSHAKE) {
        /* Half a connection or half a handshake cannot be picked up. */
        sock_disconnect(s, false);
    }
    /* OP_SEND: the rest stays in s->out, sent before the next send's data. */
    sock_wake_finish(s, n);
}

/* ------------------------------------------------------- other methods */

static double timeout_arg(lua_State *L, int idx)
{
    lua_Number t = luaL_checknumber(L, idx);
    if (!(t >= 0) || isinf(t)) luaL_argerror(L, idx, "expected a number of seconds >= 0");
    return t;
}

static int l_socket_settimeout(lua_State *L)
{
    struct sock *s = sock_arg(L, 1);
    double t = timeout_arg(L, 2);
    s->timeouts[T_CONNECT] = s->timeouts[T_SEND] = s->timeouts[T_READ] = t;
    return 0;
}

static int l_socket_settimeouts(lua_State *L)
{
    struct sock *s = sock_arg(L, 1);
    double c = timeout_arg(L, 2), w = timeout_arg(L, 3), r = timeout_arg(L, 4);
    s->timeouts[T_CONNECT] = c;
    s->timeouts[T_SEND] = w;
    s->timeouts[T_READ] = r;
    return 0;
}

static int l_socket_close(lua_State *L)
{
    struct sock *s = sock_arg(L, 1);
    if (s->c.fd < 0) return push_fail(L, "closed");
    sock_disconnect(s, true);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_socket_getreusedtimes(lua_State *L)
{
    struct sock *s = sock_arg(L, 1);
    lua_pushinteger(L, s->reused);
    return 1;
}

static int l_socket_setkeepalive(lua_State *L)
{
    struct sock *s = sock_arg(L, 1);
    double idle = lua_isnoneornil(L, 2) ? SOCKET_KEEPALIVE_IDLE : timeout_arg(L, 2);
    int size = SOCKET_POOL_SIZE;
    if (!lua_isnoneornil(L, 3)) {
        lua_Number n = luaL_checknumber(L, 3);
        if (!(n >= 1 && n <= 1e6) || n != floor(n))
            return luaL_argerror(L, 3, "expected a pool size >= 1");
        size = (int)n;
    }
    if (s->c.fd < 0 || s->op != OP_NONE) return push_fail(L, "closed");
    /* A late reply must never reach the pool's next user. */
    if (s->timed_out || buf_len(&s->out) > 0) {
        sock_disconnect(s, false);
        return push_fail(L, "timeout");
    }
    /* Also what arrived but was not read yet, and a peer that has gone. */
    enum netc_idle st = buf_len(&s->in) > 0 ? NETC_IDLE_DATA : netc_idle_after_reads(&s->c);
    if (st != NETC_IDLE) {
        sock_disconnect(s, false);
        return push_fail(L, st == NETC_IDLE_DATA ? "unread data" : "closed");
    }
    /* A retired generation has no pool (nor does a process out of memory):
     * the connection is closed instead. */
    if (!pool_put(s, idle, size)) sock_disconnect(s, true);
    s->c.fd = -1;
    s->c.tls = NULL;
    sock_disconnect(s, true);
    s->keepalive = true;
    lua_pushboolean(L, 1);
    return 1;
}

static int l_socket_tostring(lua_State *L)
{
    struct sock *s = luaL_checkudata(L, 1, SOCKET_MT);
    if (s->c.fd >= 0)
        lua_pushfstring(L, "smtpd.socket.tcp (%s%s)", s->key ? s->key : "?",
                        s->c.tls ? ", tls" : "");
    else
        lua_pushliteral(L, "smtpd.socket.tcp (closed)");
    return 1;
}

static int l_socket_gc(lua_State *L)
{
    struct sock *s = luaL_checkudata(L, 1, SOCKET_MT);
    sock_disconnect(s, true);
    tls_settings_free(&s->tls);
    free(s->key);
    free(s->host);
    free(s->spare);
    s->key = s->host = NULL;
    s->spare = NULL;
    return 0;
}

static int l_socket_tcp(lua_State *L)
{
    struct sock *s = lua_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    s->vm = vm_of(L);
    s->owner = hook_running(L);
    s->c.fd = -1;
    s->anchor = LUA_NOREF;
    s->offer_ref = LUA_NOREF;
    s->res.release = sock_release;
    s->timeouts[T_CONNECT] = SOCKET_CONNECT_TIMEOUT;
    s->timeouts[T_SEND] = SOCKET_SEND_TIMEOUT;
    s->timeouts[T_READ] = SOCKET_READ_TIMEOUT;
    ev_init(&s->io, sock_on_io);
    s->io.data = s;
    ev_init(&s->timer, sock_on_timer);
    s->timer.data = s;
    luaL_getmetatable(L, SOCKET_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_session_gc(lua_State *L)
{
    struct tls_session **box = luaL_checkudata(L, 1, SOCKET_SESSION_MT);
    tls_session_free(*box);
    *box = NULL;
    return 0;
}

static int l_session_tostring(lua_State *L)
{
    lua_pushliteral(L, "smtpd.socket.session");
    return 1;
}

/* The metatables of sockets and TLS sessions. */
static void l_socket_metatables(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"connect", l_socket_connect},
        {"sslhandshake", l_socket_sslhandshake},
        {"send", l_socket_send},
        {"receive", l_socket_receive},
        {"receiveuntil", l_socket_receiveuntil},
        {"settimeout", l_socket_settimeout},
        {"settimeouts", l_socket_settimeouts},
        {"setkeepalive", l_socket_setkeepalive},
        {"close", l_socket_close},
        {"getreusedtimes", l_socket_getreusedtimes},
        {NULL, NULL},
    };
    luaL_newmetatable(L, SOCKET_MT);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_socket_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_socket_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "smtpd.socket.tcp");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);

    luaL_newmetatable(L, SOCKET_SESSION_MT);
    lua_pushcfunction(L, l_session_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_session_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "smtpd.socket.session");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

void l_socket_register(lua_State *L)
{
    /* smtpd.socket: a table of constructors (tcp; udp would go here). */
    static const luaL_Reg socket_fns[] = {
        {"tcp", l_socket_tcp},
        {NULL, NULL},
    };
    l_socket_metatables(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd");
    lua_call(L, 1, 1);
    lua_newtable(L);
    luaL_register(L, NULL, socket_fns);
    lua_setfield(L, -2, "socket");
    lua_pop(L, 1);
}

/* ------------------------------------------------- the resolver's side */

struct l_socket *l_socket_check(lua_State *L, int idx)
{
    return (struct l_socket *)sock_arg(L, idx);
}

int l_socket_resolve_wait(lua_State *L, struct l_socket *ls, void (*cancel)(void *query),
                          void *query)
{
    struct sock *s = (struct sock *)ls;
    struct hook_state *h = hook_wait_check(L, "sock:connect");
    sock_scope_enter(s, h);
    s->op = OP_RESOLVE;
    s->wait.what = op_names[OP_RESOLVE];
    s->wait.cancel = sock_cancel;
    s->query_cancel = cancel;
    s->query = query;
    if (s->timeouts[T_CONNECT] > 0) {
        ev_timer_set(&s->timer, s->timeouts[T_CONNECT], 0.);
        ev_timer_start(s->vm->loop, &s->timer);
    }
    lua_pushvalue(L, 1);
    s->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    hook_wait_set(h, &s->wait);
    return lua_yield(L, 0);
}

void l_socket_resolved(struct l_socket *ls, const struct netc_addr *addrs, size_t n,
                       const char *err)
{
    struct sock *s = (struct sock *)ls;
    if (s->op != OP_RESOLVE) return; /* cancelled meanwhile */
    s->query_cancel = NULL;          /* the query is over: nothing to cancel */
    s->query = NULL;
    if (n > SOCKET_CANDIDATES_MAX) n = SOCKET_CANDIDATES_MAX;
    free(s->cands);
    s->cands = n ? malloc(n * sizeof *addrs) : NULL;
    s->n_cands = s->cands ? n : 0;
    if (s->cands) memcpy(s->cands, addrs, n * sizeof *addrs);
    s->i_cand = 0;
    s->last_err = ECONNREFUSED;
    int r = err || !s->cands ? -1 : sock_connect_try(s);
    if (r == 0) {
        /* Connecting now: the same wait goes on, under the same timer. */
        s->op = OP_CONNECT;
        s->wait.what = op_names[OP_CONNECT];
        sock_rearm(s, EV_WRITE);
        return;
    }
    const char *e = err ? err : !s->cands && n ? "out of memory" : sock_connect_error(s);
    char copy[sizeof s->errbuf];
    snprintf(copy, sizeof copy, "%s", e);
    lua_State *co = sock_wake_begin(s);
    if (!co) return;
    if (r > 0) {
        lua_pushboolean(co, 1);
        sock_wake_finish(s, 1);
        return;
    }
    lua_pushnil(co);
    lua_pushstring(co, copy);
    sock_disconnect(s, false);
    sock_wake_finish(s, 2);
}
