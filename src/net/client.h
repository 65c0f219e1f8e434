/* client.h — the client side of a non-blocking connection, for the Lua
 * cosockets (async-api.md 4): parsing a literal target (IPv4, IPv6,
 * "unix:/path"), a connect that returns EINPROGRESS, one read or write over
 * plain TCP or TLS (tls.h's client), the mapping of errno to the contract's
 * error strings, and the receive-buffer logic (what a "*l", n or
 * receiveuntil pattern takes from buffered input), which a peer controls
 * and fuzz/fuzz_socket_receive.c drives. Owns no watcher and no Lua: the
 * caller arms ev_io from the direction a call asks for, and decides when to
 * give up. Never resolves a name (that is c-ares, on the loop). */
#ifndef LUASMTPD_CLIENT_H
#define LUASMTPD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "conn.h"

/* Return values besides byte counts (as CONN_AGAIN / CONN_ERROR). */
#define NETC_AGAIN CONN_AGAIN /* would block: *want says EV_READ or EV_WRITE */
#define NETC_ERROR CONN_ERROR

/* Largest single read from the socket (one TLS record's worth). */
#define NETC_READ_CHUNK 16384

struct tls_client;

/* One address to connect to. */
struct netc_addr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* Parses host as an IPv4 literal, an IPv6 literal (bare or in brackets)
 * with port, or "unix:/path" (port ignored). Returns 1 on success, 0 when
 * host is not a literal (a name, for the resolver), -1 when it is a
 * malformed unix path (too long or empty). */
int netc_addr_parse(const char *host, int port, struct netc_addr *out);
/* True for a "unix:" target. */
bool netc_addr_is_unix(const char *host);

/* Starts a non-blocking connect to a. Returns the new fd (non-blocking,
 * close-on-exec) with *in_progress telling whether to wait for writability,
 * or -1 with *err an errno. */
int netc_connect_start(const struct netc_addr *a, bool *in_progress, int *err);
/* After the fd became writable: 0 when connected, else the errno. */
int netc_connect_result(int fd);

/* The contract's string for a connect/read/write errno ("connection
 * refused", "no route", "timeout", "closed"), or strerror's text lowercased
 * into buf for anything else. */
const char *netc_strerror(int err, char *buf, size_t len);

/* A connected socket: plain, or TLS once tls is set (the netc owns it). */
struct netc {
    int fd; /* -1: none */
    struct tls_client *tls;
    /* Plain TCP: the last read came back short (the kernel's queue was
     * empty then) and nothing was sent since, so the peer has had nothing
     * to answer: netc_idle_state can say NETC_IDLE without a syscall. */
    bool drained;
};

/* One read: >0 bytes, 0 on EOF, NETC_AGAIN (*want = EV_READ or EV_WRITE)
 * or NETC_ERROR (*err an errno, 0 for a TLS failure). */
ssize_t netc_recv(struct netc *c, void *buf, size_t len, int *want, int *err);
/* One write, same returns. After NETC_AGAIN over TLS, the next call must
 * pass the same bytes again (at least as many). */
ssize_t netc_send(struct netc *c, const void *buf, size_t len, int *want, int *err);
/* Decoded input that poll cannot see (TLS records read but not returned). */
bool netc_pending(struct netc *c);
/* What an idle connection (one about to be pooled or reused) looks like
 * without reading it: NETC_IDLE when nothing waits, NETC_IDLE_DATA when
 * the peer sent something (decoded TLS input included), NETC_IDLE_CLOSED
 * when it closed or failed. */
enum netc_idle { NETC_IDLE, NETC_IDLE_DATA, NETC_IDLE_CLOSED };
enum netc_idle netc_idle_state(struct netc *c);
/* The same, right after the caller's own reads: trusts c->drained (one
 * recv syscall less per pooled request) and otherwise asks the kernel. */
enum netc_idle netc_idle_after_reads(struct netc *c);
/* Closes the socket; over TLS, with one non-blocking close_notify first
 * when goodbye. */
void netc_close(struct netc *c, bool goodbye);

/* ------------------------------------------------- the receive patterns */

enum netc_pattern { NETC_LINE, NETC_ALL, NETC_COUNT, NETC_UNTIL };

/* What one receive asks for, and how far it has looked (kept across reads,
 * so a peer that sends one byte at a time does not make each scan start
 * over). */
struct netc_want {
    enum netc_pattern kind;
    size_t n;          /* NETC_COUNT: bytes; NETC_LINE, NETC_UNTIL: the most bytes before
                          the terminator (socket_line_max) */
    const char *delim; /* NETC_UNTIL: the pattern (not empty), the caller's */
    size_t dlen;
    size_t scanned; /* bytes of the buffer already known not to finish it */
};

enum netc_scan_result {
    NETC_MORE,     /* not there yet: read more (or at EOF: "closed" with the rest as partial) */
    NETC_DONE,     /* *ret bytes from the head are the result, *consume to drop */
    NETC_TOO_LONG, /* a line (or an until-chunk) over w->n: "line too long" */
};

/* Looks at the buffered input in[0..len). For NETC_ALL it is NETC_MORE
 * until EOF (at EOF the caller returns everything). */
enum netc_scan_result netc_scan(const char *in, size_t len, struct netc_want *w, size_t *ret,
                                size_t *consume);

/* How many bytes the next read may ask for: never more than one chunk, and
 * for NETC_COUNT never more than what is still missing, so a receive buffers
 * at most what it returns plus one read. */
size_t netc_read_size(const struct netc_want *w, size_t buffered);

#endif
