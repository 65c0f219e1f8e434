/* client.c — the client side of non-blocking connections for the cosockets:
 * literal targets, connect with EINPROGRESS, one read or write over plain
 * TCP or TLS, errno -> the contract's strings, and the receive patterns.
 * Must not block (no getaddrinfo, no blocking connect), must not touch a
 * watcher, and knows no Lua. */
#include "client.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "tls.h"

#define UNIX_PREFIX "unix:"

bool netc_addr_is_unix(const char *host)
{
    return strncmp(host, UNIX_PREFIX, sizeof UNIX_PREFIX - 1) == 0;
}

int netc_addr_parse(const char *host, int port, struct netc_addr *out)
{
    memset(out, 0, sizeof *out);
    if (netc_addr_is_unix(host)) {
        const char *path = host + sizeof UNIX_PREFIX - 1;
        struct sockaddr_un *sun = (struct sockaddr_un *)&out->ss;
        size_t n = strlen(path);
        if (n == 0 || n >= sizeof sun->sun_path) return -1;
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, path, n + 1);
        out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        return 1;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((unsigned short)port);
        out->len = sizeof *sin;
        return 1;
    }
    char v6[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(host);
    const char *lit = host;
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof v6) {
        memcpy(v6, host + 1, n - 2);
        v6[n - 2] = '\0';
        lit = v6;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET6, lit, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((unsigned short)port);
        out->len = sizeof *sin6;
        return 1;
    }
    return 0;
}

int netc_connect_start(const struct netc_addr *a, bool *in_progress, int *err)
{
    *in_progress = false;
    int family = ((const struct sockaddr *)&a->ss)->sa_family;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    if (family != AF_UNIX) {
        /* Request/response protocols (Redis, SMTP): no Nagle delay. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0) return fd;
    /* A unix socket whose listener's backlog is full says EAGAIN. */
    if (errno == EINPROGRESS || errno == EAGAIN) {
        *in_progress = true;
        return fd;
    }
    *err = errno;
    close(fd);
    return -1;
}

int netc_connect_result(int fd)
{
    int e = 0;
    socklen_t len = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0) return errno;
    return e;
}

const char *netc_strerror(int err, char *buf, size_t len)
{
    switch (err) {
    case ECONNREFUSED:
    case ENOENT: /* a unix path nobody listens on */
        return "connection refused";
    case ENETUNREACH:
    case EHOSTUNREACH:
    case EADDRNOTAVAIL:
        return "no route";
    case ETIMEDOUT:
        return "timeout";
    case 0:
    case ECONNRESET:
    case EPIPE:
    case ECONNABORTED:
        return "closed";
    default:
        break;
    }
    snprintf(buf, len, "%s", strerror(err));
    for (char *p = buf; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return buf;
}

/* ------------------------------------------------------------------- I/O */

ssize_t netc_recv(struct netc *c, void *buf, size_t len, int *want, int *err)
{
    *err = 0;
    if (c->tls) return tls_client_recv(c->tls, buf, len, want);
    ssize_t n = recv(c->fd, buf, len, 0);
    /* A short TCP read empties the receive queue (tcp_recvmsg stops only
     * when nothing, backlog included, is left). */
    c->drained = n > 0 && (size_t)n < len;
    if (n >= 0) return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK) c->drained = true;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        *want = EV_READ;
        return NETC_AGAIN;
    }
    *err = errno;
    return NETC_ERROR;
}

ssize_t netc_send(struct netc *c, const void *buf, size_t len, int *want, int *err)
{
    *err = 0;
    c->drained = false; /* the peer may answer this */
    if (c->tls) return tls_client_send(c->tls, buf, len, want);
    ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        *want = EV_WRITE;
        return NETC_AGAIN;
    }
    *err = errno;
    return NETC_ERROR;
}

bool netc_pending(struct netc *c)
{
    return c->tls && tls_client_pending(c->tls);
}

enum netc_idle netc_idle_state(struct netc *c)
{
    char b;
    if (c->fd < 0) return NETC_IDLE_CLOSED;
    if (netc_pending(c)) return NETC_IDLE_DATA;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return NETC_IDLE_DATA;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return NETC_IDLE;
    return NETC_IDLE_CLOSED;
}

enum netc_idle netc_idle_after_reads(struct netc *c)
{
    if (c->fd >= 0 && !c->tls && c->drained) return NETC_IDLE;
    return netc_idle_state(c);
}

void netc_close(struct netc *c, bool goodbye)
{
    if (c->tls) {
        tls_client_free(c->tls, goodbye);
        c->tls = NULL;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

/* -------------------------------------------------------------- patterns */

/* Finds d[0..dlen) in s[from..len); returns its offset or len. */
static size_t find(const char *s, size_t len, size_t from, const char *d, size_t dlen)
{
    if (from >= len || dlen > len - from) return len;
    const char *p = memmem(s + from, len - from, d, dlen);
    return p ? (size_t)(p - s) : len;
}

enum netc_scan_result netc_scan(const char *in, size_t len, struct netc_want *w, size_t *ret,
                                size_t *consume)
{
    *ret = *consume = 0;
    switch (w->kind) {
    case NETC_ALL:
        return NETC_MORE;
    case NETC_COUNT:
        if (len < w->n) return NETC_MORE;
        *ret = *consume = w->n;
        return NETC_DONE;
    case NETC_LINE: {
        size_t at = find(in, len, w->scanned, "\n", 1);
        if (at == len) {
            w->scanned = len;
            /* Whatever ends this line later, it holds at least len - 1 bytes
             * (the last one may be the CR of its CRLF). */
            return len > w->n + 1 ? NETC_TOO_LONG : NETC_MORE;
        }
        size_t line = at > 0 && in[at - 1] == '\r' ? at - 1 : at;
        if (line > w->n) return NETC_TOO_LONG;
        *ret = line;
        *consume = at + 1;
        return NETC_DONE;
    }
    case NETC_UNTIL: {
        /* A match may straddle what was scanned and what came since. */
        size_t from = w->scanned >= w->dlen ? w->scanned - (w->dlen - 1) : 0;
        size_t at = find(in, len, from, w->delim, w->dlen);
        if (at == len) {
            w->scanned = len;
            /* Data before the pattern is bounded like a line. */
            return len > w->n + w->dlen - 1 ? NETC_TOO_LONG : NETC_MORE;
        }
        if (at > w->n) return NETC_TOO_LONG;
        *ret = at;
        *consume = at + w->dlen;
        return NETC_DONE;
    }
    }
    return NETC_MORE;
}

size_t netc_read_size(const struct netc_want *w, size_t buffered)
{
    if (w->kind == NETC_COUNT && buffered < w->n && w->n - buffered < NETC_READ_CHUNK)
        return w->n - buffered;
    return NETC_READ_CHUNK;
}
