/* conn.h — a buffered, non-blocking connection over a pluggable transport
 * (plain TCP here; TLS slots in through struct transport, implemented in
 * tls.c). Owns the socket, the libev watchers and the input/output buffers.
 * Must not know SMTP: it hands bytes up and takes bytes down. */
#ifndef LUASMTPD_CONN_H
#define LUASMTPD_CONN_H

#include <ev.h>
#include <stdbool.h>
#include <sys/types.h>

#include "buf.h"

/* Input is read until this many bytes wait unconsumed; then reading pauses
 * until the owner consumes some (back-pressure on pipelining clients). */
#define CONN_INPUT_MAX (64 * 1024)

/* Transport return values besides byte counts. */
#define CONN_AGAIN (-2) /* would block; see conn.want_read / want_write */
#define CONN_ERROR (-1)

struct conn;

/* One transport: how bytes move over the socket. */
struct transport {
    const char *name;
    /* Returns >0 bytes, 0 on orderly EOF, CONN_AGAIN or CONN_ERROR. On
     * CONN_AGAIN it sets c->want_read / c->want_write to the direction the
     * transport waits for (TLS may need to write in order to read). */
    ssize_t (*recv)(struct conn *c, void *buf, size_t len);
    ssize_t (*send)(struct conn *c, const void *buf, size_t len);
    /* True when the transport holds already-decoded input that select/epoll
     * cannot see (TLS records decrypted but not yet returned). */
    bool (*has_pending)(struct conn *c);
    /* Best-effort goodbye (TLS close_notify) before the socket closes. */
    void (*shutdown)(struct conn *c);
    void (*free_state)(struct conn *c);
};

struct conn_events {
    /* New bytes in c->in, or c->eof / c->failed became true. May close. */
    void (*on_input)(struct conn *c, void *owner);
    /* The socket is closed; the owner frees the conn (conn_free) here. */
    void (*on_closed)(struct conn *c, void *owner);
};

struct conn {
    int fd;
    struct ev_loop *loop;
    ev_io rio, wio;
    ev_timer linger;      /* bounds how long a closing conn waits to flush */
    struct buf in, out;
    const struct transport *tp;
    void *tp_state;
    struct conn_events ev;
    void *owner;
    bool eof;             /* peer closed its side */
    bool failed;          /* a socket or transport error */
    bool closing;         /* close once out is flushed */
    bool closed;
    bool want_read, want_write;
};

/* Takes ownership of fd (non-blocking); starts reading. Returns NULL on
 * allocation failure (fd is closed then). */
struct conn *conn_new(struct ev_loop *loop, int fd, const struct conn_events *ev, void *owner);

/* Queues bytes for output. Returns false if memory runs out (the conn is
 * then marked failed). Nothing is sent until conn_flush(). */
bool conn_write(struct conn *c, const void *p, size_t n);

/* Sends what it can now; arms the write watcher for the rest. */
void conn_flush(struct conn *c);

/* The owner consumed input: resume reading if it was paused. */
void conn_input_consumed(struct conn *c);

/* Stops reading for good, flushes pending output (bounded by a linger
 * timeout), then closes the socket and calls on_closed. Safe to call more
 * than once and from inside on_input. */
void conn_close(struct conn *c);

/* Frees the conn; only from on_closed or after it. */
void conn_free(struct conn *c);

/* The plain TCP transport. */
extern const struct transport conn_plain_transport;

#endif
