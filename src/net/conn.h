/* conn.h — a buffered, non-blocking connection over a pluggable transport
 * (plain TCP here; TLS slots in through struct transport, implemented in
 * tls.c). Owns the socket, the libev watchers, the input/output buffers and
 * the switch from one transport to another (a handshake). Must not know SMTP:
 * it hands bytes up and takes bytes down. */
#ifndef LUASMTPD_CONN_H
#define LUASMTPD_CONN_H

#include <ev.h>
#include <stdbool.h>
#include <sys/types.h>

#include "buf.h"

/* Input is read until this many bytes wait unconsumed; then reading pauses
 * until the owner consumes some (back-pressure on pipelining clients). */
#define CONN_INPUT_MAX (64 * 1024)

/* Largest single read from the transport (one TLS record's worth). */
#define CONN_READ_CHUNK 16384
/* Read straight into the conn's buffer only when it has this much room;
 * smaller reads go through a shared scratch buffer. */
#define CONN_DIRECT_READ_MIN 2048
/* An empty buffer bigger than this is released (idle connections stay small). */
#define CONN_KEEP_BUFFER 4096

/* Transport return values besides byte counts. */
#define CONN_AGAIN (-2) /* would block; see conn.want_read / want_write */
#define CONN_ERROR (-1)

struct conn;

/* One transport: how bytes move over the socket. */
struct transport {
    const char *name;
    /* Returns >0 bytes, 0 on orderly EOF, CONN_AGAIN or CONN_ERROR. On
     * CONN_AGAIN it sets c->want_read / c->want_write to the direction the
     * transport waits for (TLS may need to write in order to read); conn.c
     * arms the watcher for that direction and retries the same operation. */
    ssize_t (*recv)(struct conn *c, void *buf, size_t len);
    /* As recv. After CONN_AGAIN, conn.c calls send again with the same bytes
     * at buf and a len at least as large (output only grows until sent). */
    ssize_t (*send)(struct conn *c, const void *buf, size_t len);
    /* True when the transport holds already-decoded input that select/epoll
     * cannot see (TLS records decrypted but not yet returned). */
    bool (*has_pending)(struct conn *c);
    /* Best-effort goodbye (TLS close_notify) before the socket closes. */
    void (*shutdown)(struct conn *c);
    void (*free_state)(struct conn *c);
    /* Advances the transport's handshake: 1 when it is complete, CONN_AGAIN
     * (with want_read / want_write set) or CONN_ERROR. NULL: none. */
    int (*handshake)(struct conn *c);
};

typedef void (*conn_handshake_done_fn)(struct conn *c, void *owner, bool ok);

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
    ev_timer linger; /* bounds how long a closing conn waits to flush */
    ev_timer notify; /* tells the owner, from the loop, of a failure no watcher will see */
    struct buf in, out;
    const struct transport *tp;
    void *tp_state;
    struct conn_events ev;
    void *owner;
    bool eof;     /* peer closed its side */
    bool failed;  /* a socket or transport error */
    bool closing; /* close once out is flushed */
    bool closed;
    bool want_read, want_write; /* set by the transport with CONN_AGAIN */
    /* Output back-pressure: when queued output drains to this many bytes or
     * fewer, on_input is called so an owner that paused can go on (0: off). */
    size_t out_resume;
    int rd_wait, wr_wait;       /* EV_READ / EV_WRITE: what a blocked read / write waits for */
    struct {
        bool active;
        bool switched;     /* tp / tp_state are the new transport's */
        size_t plain_left; /* queued output still to leave over the old transport */
        const struct transport *tp;
        void *state;
        int wait; /* EV_READ / EV_WRITE the handshake waits for */
        ev_timer timer;
        conn_handshake_done_fn on_done;
    } hs;
};

/* Takes ownership of fd (non-blocking); starts reading. Returns NULL on
 * allocation failure (fd is closed then). */
struct conn *conn_new(struct ev_loop *loop, int fd, const struct conn_events *ev, void *owner);

/* Queues bytes for output. Returns false if memory runs out (the conn is
 * then marked failed). Nothing is sent until conn_flush(). */
bool conn_write(struct conn *c, const void *p, size_t n);

/* Sends what it can now; arms the write watcher for the rest. Never closes
 * the socket or calls on_closed itself, even after conn_close(): the loop
 * does that, so the owner may flush and go on using its state. During a
 * handshake it sends nothing (see conn_start_handshake). */
void conn_flush(struct conn *c);

/* The owner consumed input: resume reading if it was paused. */
void conn_input_consumed(struct conn *c);

/* Stops reading for good, flushes pending output (bounded by a linger
 * timeout), then closes the socket (TLS: after close_notify) and calls
 * on_closed, always from the event loop. Safe to call more than once and
 * from inside on_input. During a handshake it cancels the handshake. */
void conn_close(struct conn *c);

/* Frees the conn; only from on_closed or after it. */
void conn_free(struct conn *c);

/* Switches c to transport tp, whose per-connection state the conn then owns
 * (freed through tp->free_state), and runs tp->handshake from the event loop.
 *   - Input already buffered is discarded: it arrived before the switch and
 *     must never be read as if it came through the new transport (STARTTLS
 *     command injection, CVE-2011-0411).
 *   - Output already queued leaves over the old transport first (sent now as
 *     far as the socket takes it, the rest from the loop); output queued
 *     during the handshake waits for it and leaves over the new transport.
 *   - Reading and on_input are suspended until the handshake ends.
 * on_done(c, owner, ok) is then called from the event loop, never from inside
 * this call: ok=false on a transport error, EOF, or after timeout seconds; the
 * conn is then marked failed and the owner should conn_close() it. After
 * ok=true the conn reads again (anything the transport already decoded is
 * delivered to on_input from the loop). conn_close() during the handshake
 * cancels it: on_done is not called. Returns false, with state still the
 * caller's and on_done never called, if c is closing, closed, failed or
 * already handshaking, tp has no handshake, timeout is not positive, or
 * sending the queued plaintext fails (c is failed then: close it). */
bool conn_start_handshake(struct conn *c, const struct transport *tp, void *state, double timeout,
                          conn_handshake_done_fn on_done);

/* The plain TCP transport. */
extern const struct transport conn_plain_transport;

#endif
