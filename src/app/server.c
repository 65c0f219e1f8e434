/* server.c — listening sockets, accepting connections, the session
 * registry and graceful stop. Must not touch Lua stacks or parse SMTP. */
#include "server.h"

#include "lmtp.h"
#include "verbs.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "l_shared.h"
#include "l_dns.h"
#include "l_sleep.h"
#include "l_timer.h"
#include "l_crypt.h"
#include "l_fs.h"
#include "l_sqlite.h"
#include "l_socket.h"
#include "log.h"
#include "lua_bind.h"
#include "policy.h"
#include "session.h"

#define DEFAULT_HOST "localhost"
#define DEFAULT_PORT "8025"
/* Accepts per readiness event, so one busy listener can't starve the loop. */
#define ACCEPT_BATCH 64
/* When the process is out of descriptors, pause accepting this long rather
 * than spin on a listener that stays readable. */
#define ACCEPT_PAUSE_SECONDS 0.5

static ev_timer accept_pause;

static void format_addr(const struct sockaddr *sa, socklen_t len, char *host, size_t hostlen,
                        int *port)
{
    /* inet_ntop for the common families: getnameinfo costs far more. */
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, (socklen_t)hostlen);
        *port = ntohs(in->sin_port);
        return;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, (socklen_t)hostlen);
        else inet_ntop(AF_INET6, &in6->sin6_addr, host, (socklen_t)hostlen);
        *port = ntohs(in6->sin6_port);
        return;
    }
    char serv[16];
    if (getnameinfo(sa, len, host, hostlen, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV)) {
        snprintf(host, hostlen, "?");
        *port = 0;
        return;
    }
    /* Show IPv4-mapped IPv6 peers as plain IPv4. */
    if (!strncmp(host, "::ffff:", 7) && strchr(host + 7, '.'))
        memmove(host, host + 7, strlen(host + 7) + 1);
    *port = atoi(serv);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents);

static void resume_accepting(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct server *srv = w->data;
    if (srv->stopping) return;
    for (size_t i = 0; i < srv->n_listeners; i++) ev_io_start(loop, &srv->listeners[i].io);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    struct listener *l = w->data;
    struct server *srv = l->srv;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                log_msg(LOG_WARN, NULL, "accept: %s; pausing new connections for %.1fs",
                        strerror(errno), ACCEPT_PAUSE_SECONDS);
                for (size_t k = 0; k < srv->n_listeners; k++)
                    ev_io_stop(loop, &srv->listeners[k].io);
                accept_pause.data = srv;
                ev_timer_init(&accept_pause, resume_accepting, ACCEPT_PAUSE_SECONDS, 0.);
                ev_timer_start(loop, &accept_pause);
            }
            return; /* EAGAIN, or a connection that died in the backlog */
        }
        char host[SESSION_PEER_MAX];
        int port = 0;
        struct session_unix_peer unix_peer = {-1, -1, -1}, *up = NULL;
        if (l->is_unix) {
            /* The client's own address is unnamed: the listener's path says
             * where it came in, the kernel who it is. */
            snprintf(host, sizeof host, "%s", l->addr);
            listen_unix_peer(fd, &unix_peer.pid, &unix_peer.uid, &unix_peer.gid);
            up = &unix_peer;
        } else {
            /* Replies are already batched per pump; Nagle would only delay the
             * last segment of each (TLS handshake flights lost ~40 ms to it). */
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            format_addr((struct sockaddr *)&ss, len, host, sizeof host, &port);
        }
        /* The protocol is the current generation's: a reload that changes
         * `lmtp` applies to the connections accepted after it. */
        const struct verb_table *verbs = srv->host.policy && srv->host.policy->opt.lmtp
                                             ? &verbs_lmtp
                                             : &verbs_smtp;
        if (!session_new(&srv->host, verbs, fd, host, port, up,
                         l->implicit_tls ? *l->implicit_tls : NULL))
            log_msg(LOG_ERROR, NULL, "out of memory: dropped connection from %s", host);
    }
}

/* Splits "[HOST][:PORT]" (IPv6 hosts in brackets). */
static bool split_spec(const char *spec, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *h = spec, *p = NULL;
    size_t hl;
    /* A bare number is a port, as most daemons read it ("-l 8047"), not the
     * IPv4 address 0.0.31.111 that getaddrinfo would make of it. */
    if (spec[0] && strspn(spec, "0123456789") == strlen(spec)) {
        snprintf(host, hostlen, "%s", DEFAULT_HOST);
        snprintf(port, portlen, "%s", spec);
        return strlen(spec) < portlen && atoi(port) <= 65535;
    }
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || (close[1] && close[1] != ':')) return false;
        h = spec + 1;
        hl = (size_t)(close - h);
        p = close[1] ? close + 2 : NULL;
    } else {
        const char *colon = strrchr(spec, ':');
        if (colon && strchr(spec, ':') != colon) colon = NULL; /* bare IPv6 address */
        hl = colon ? (size_t)(colon - spec) : strlen(spec);
        p = colon ? colon + 1 : NULL;
    }
    if (hl >= hostlen) return false;
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (!host[0]) snprintf(host, hostlen, "%s", DEFAULT_HOST);
    snprintf(port, portlen, "%s", p && *p ? p : DEFAULT_PORT);
    for (const char *c = port; *c; c++)
        if (*c < '0' || *c > '9') return false;
    return atoi(port) <= 65535;
}

/* "unix:PATH": one UNIX-domain listener. */
static bool server_listen_unix(struct server *srv, const char *path,
                               struct tls_config **implicit_tls, int flags, char *err,
                               size_t errlen)
{
    if (srv->n_listeners == SERVER_MAX_LISTENERS) {
        snprintf(err, errlen, "--listen unix:%s: more than %d listeners", path,
                 SERVER_MAX_LISTENERS);
        return false;
    }
    struct listener *l = &srv->listeners[srv->n_listeners];
    char why[512];
    (void)flags; /* one listening socket, shared by inheritance, never reused by port */
    int fd = listen_unix(path, srv->unix_socket_mode, false, &l->file, why, sizeof why);
    if (fd < 0) {
        snprintf(err, errlen, "--listen %s", why);
        return false;
    }
    srv->n_listeners++;
    l->fd = fd;
    l->srv = srv;
    l->implicit_tls = implicit_tls;
    l->is_unix = true;
    l->owns_file = true;
    snprintf(l->addr, sizeof l->addr, "unix:%s", path);
    ev_io_init(&l->io, on_accept, fd, EV_READ);
    l->io.data = l;
    return true;
}

/* "unix-fd:N:PATH": a worker's copy of the master's UNIX listener. */
static bool server_adopt_unix(struct server *srv, const char *spec,
                              struct tls_config **implicit_tls, char *err, size_t errlen)
{
    char *end;
    long fd = strtol(spec, &end, 10);
    const char *path = end + 1;
    int type = 0;
    socklen_t tl = sizeof type;
    if (end == spec || *end != ':' || fd < 0 || fd > INT_MAX || !*path ||
        strlen(path) >= LISTEN_UNIX_PATH_MAX ||
        getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &tl) || type != SOCK_STREAM) {
        snprintf(err, errlen, "--listen unix-fd:%s: expected an inherited listening socket "
                 "as unix-fd:N:PATH", spec);
        return false;
    }
    if (srv->n_listeners == SERVER_MAX_LISTENERS) {
        snprintf(err, errlen, "--listen unix:%s: more than %d listeners", path,
                 SERVER_MAX_LISTENERS);
        return false;
    }
    struct listener *l = &srv->listeners[srv->n_listeners++];
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    fcntl((int)fd, F_SETFL, fcntl((int)fd, F_GETFL) | O_NONBLOCK);
    l->fd = (int)fd;
    l->srv = srv;
    l->implicit_tls = implicit_tls;
    l->is_unix = true;
    l->owns_file = false;
    snprintf(l->file.path, sizeof l->file.path, "%s", path);
    snprintf(l->addr, sizeof l->addr, "unix:%s", path);
    ev_io_init(&l->io, on_accept, l->fd, EV_READ);
    l->io.data = l;
    return true;
}

bool server_listen(struct server *srv, const char *spec, struct tls_config **implicit_tls,
                   int flags, char *err, size_t errlen)
{
    if (!strncmp(spec, "unix:", 5)) return server_listen_unix(srv, spec + 5, implicit_tls, flags, err, errlen);
    if (!strncmp(spec, "unix-fd:", 8)) return server_adopt_unix(srv, spec + 8, implicit_tls, err, errlen);
    char host[256], port[16];
    if (!split_spec(spec, host, sizeof host, port, sizeof port)) {
        snprintf(err, errlen, "--listen %s: expected [HOST][:PORT]", spec);
        return false;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc) {
        snprintf(err, errlen, "--listen %s: %s", spec, gai_strerror(rc));
        return false;
    }
    bool any_port = atoi(port) == 0;
    int bound = 0;
    char last_error[128] = "no address";
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (srv->n_listeners == SERVER_MAX_LISTENERS) break;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (flags & LISTEN_REUSEPORT) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) ||
            (!(flags & LISTEN_BIND_ONLY) && listen(fd, SOMAXCONN))) {
            snprintf(last_error, sizeof last_error, "%s", strerror(errno));
            close(fd);
            continue;
        }
        struct listener *l = &srv->listeners[srv->n_listeners++];
        l->fd = fd;
        l->srv = srv;
        l->implicit_tls = implicit_tls;
        l->is_unix = l->owns_file = false;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        getsockname(fd, (struct sockaddr *)&ss, &len);
        char h[64];
        int p;
        format_addr((struct sockaddr *)&ss, len, h, sizeof h, &p);
        snprintf(l->addr, sizeof l->addr, strchr(h, ':') ? "[%s]:%d" : "%s:%d", h, p);
        ev_io_init(&l->io, on_accept, fd, EV_READ);
        l->io.data = l;
        bound++;
        /* Port 0 on a name with several addresses would give each its own
         * random port: one is what the user asked for. */
        if (any_port) break;
    }
    freeaddrinfo(res);
    if (!bound) {
        snprintf(err, errlen, "--listen %s: cannot bind: %s", spec, last_error);
        return false;
    }
    return true;
}

void server_remove_unix_files(struct server *srv)
{
    for (size_t i = 0; i < srv->n_listeners; i++)
        if (srv->listeners[i].owns_file) listen_unix_remove(&srv->listeners[i].file);
}

bool server_chown_unix_files(struct server *srv, uid_t uid, gid_t gid, char *err, size_t errlen)
{
    for (size_t i = 0; i < srv->n_listeners; i++) {
        const struct listener *l = &srv->listeners[i];
        if (l->owns_file && chown(l->file.path, uid, gid)) {
            snprintf(err, errlen, "--listen %s: chown to uid %d gid %d: %s", l->addr, (int)uid,
                     (int)gid, strerror(errno));
            return false;
        }
    }
    return true;
}

/* The session_host callbacks: the server that embeds the host. */
static struct server *server_of(struct session_host *h)
{
    return (struct server *)((char *)h - offsetof(struct server, host));
}
static void host_session_added(struct session_host *h, struct session *s) { server_add_session(server_of(h), s); }
static void host_session_removed(struct session_host *h, struct session *s)
{
    server_remove_session(server_of(h), s);
}
static long host_ip_acquire(struct session_host *h, const char *ip)
{
    return server_ip_acquire(server_of(h), ip);
}
static void host_ip_release(struct session_host *h, const char *ip) { server_ip_release(server_of(h), ip); }

/* A stop waiting for timer runs looks again once the callback that ended
 * the last one returned: a retirement may end one run and start the next
 * in the same call. */
static ev_timer stop_check;

static void server_stop_check(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct server *srv = w->data;
    if (srv->stopping && srv->host.n_sessions == 0 && l_timer_runs() == 0)
        ev_break(loop, EVBREAK_ALL);
}

/* The last timer run in progress ended. */
static void server_timers_idle(void *ud)
{
    struct server *srv = ud;
    if (!srv->stopping || ev_is_active(&stop_check)) return;
    ev_timer_init(&stop_check, server_stop_check, 0., 0.);
    stop_check.data = srv;
    ev_timer_start(srv->host.loop, &stop_check);
}

void server_init(struct server *srv, struct ev_loop *loop)
{
    l_timer_on_idle(server_timers_idle, srv);
    srv->host.loop = loop;
    srv->unix_socket_mode = 0660;
    srv->host.session_added = host_session_added;
    srv->host.session_removed = host_session_removed;
    srv->host.ip_acquire = host_ip_acquire;
    srv->host.ip_release = host_ip_release;
}

void server_start(struct server *srv)
{
    for (size_t i = 0; i < srv->n_listeners; i++) {
        ev_io_start(srv->host.loop, &srv->listeners[i].io);
        log_msg(LOG_INFO, NULL, "listening on %s%s", srv->listeners[i].addr,
                srv->listeners[i].implicit_tls ? " (implicit TLS)" : "");
    }
}

static unsigned ip_hash(const char *ip)
{
    unsigned h = 2166136261u; /* FNV-1a */
    for (; *ip; ip++) h = (h ^ (unsigned char)*ip) * 16777619u;
    return h % SERVER_IP_BUCKETS;
}

long server_ip_acquire(struct server *srv, const char *ip)
{
    struct ip_count **head = &srv->per_ip[ip_hash(ip)];
    for (struct ip_count *e = *head; e; e = e->next)
        if (!strcmp(e->ip, ip)) return ++e->count;
    struct ip_count *e = calloc(1, sizeof *e);
    if (!e) return 0;
    snprintf(e->ip, sizeof e->ip, "%s", ip);
    e->count = 1;
    e->next = *head;
    *head = e;
    return 1;
}

void server_ip_release(struct server *srv, const char *ip)
{
    for (struct ip_count **p = &srv->per_ip[ip_hash(ip)]; *p; p = &(*p)->next) {
        if (strcmp((*p)->ip, ip)) continue;
        if (--(*p)->count == 0) {
            struct ip_count *gone = *p;
            *p = gone->next;
            free(gone);
        }
        return;
    }
}

void server_add_session(struct server *srv, struct session *s)
{
    s->next = srv->sessions;
    s->prev = NULL;
    if (srv->sessions) srv->sessions->prev = s;
    srv->sessions = s;
    srv->host.n_sessions++;
}

void server_remove_session(struct server *srv, struct session *s)
{
    if (s->prev) s->prev->next = s->next;
    else srv->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    srv->host.n_sessions--;
    if (srv->stopping && srv->host.n_sessions == 0 && l_timer_runs() == 0)
        ev_break(srv->host.loop, EVBREAK_ALL);
}

static void on_stop_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct server *srv = w->data;
    log_msg(LOG_WARN, NULL, "stop timeout: closing %zu remaining sessions (%u timer runs cut short)",
            srv->host.n_sessions, l_timer_runs());
    ev_break(loop, EVBREAK_ALL);
}

void server_stop(struct server *srv, double timeout)
{
    if (srv->stopping) return;
    srv->stopping = true;
    for (size_t i = 0; i < srv->n_listeners; i++) {
        ev_io_stop(srv->host.loop, &srv->listeners[i].io);
        close(srv->listeners[i].fd);
        if (srv->listeners[i].owns_file) listen_unix_remove(&srv->listeners[i].file);
    }
    ev_timer_stop(srv->host.loop, &accept_pause);
    srv->n_listeners = 0;
    log_msg(LOG_INFO, NULL, "stopping: %zu sessions open", srv->host.n_sessions);
    /* The generation's pending timers run once more, with premature = true;
     * the stop waits for the runs that suspend, as for sessions (each is
     * bounded by --drain-timeout and hook_timeout, all by the stop timeout). */
    if (srv->host.policy) policy_retire(srv->host.policy, ev_now(srv->host.loop));
    if (srv->host.n_sessions == 0 && l_timer_runs() == 0) {
        ev_break(srv->host.loop, EVBREAK_ALL);
        return;
    }
    for (struct session *s = srv->sessions, *next; s; s = next) {
        next = s->next;
        session_shutdown(s);
    }
    ev_timer_init(&srv->stop_timer, on_stop_timeout, timeout, 0.);
    srv->stop_timer.data = srv;
    ev_timer_start(srv->host.loop, &srv->stop_timer);
}

void server_register_lua_classes(lua_State *L)
{
    l_server_register(L);
    l_sleep_register(L);
    l_shared_register(L);
    l_dns_register(L);
    l_timer_register(L);
    l_crypt_register(L);
    l_sqlite_register(L);
    l_socket_register(L);
    l_fs_register(L);
}
