/* conn.c — buffered non-blocking I/O on one socket behind struct transport.
 * Owns the fd and its watchers, and the switch to another transport (the TLS
 * handshake). Must not parse what it carries.
 *
 * Close is always deferred: conn_close() only marks the conn; the socket is
 * closed from the event loop once output is flushed (or the linger timer
 * fires), and on_closed is the last thing that touches the conn.
 *
 * Directions: a transport may need the socket writable to go on reading (and
 * readable to go on writing): TLS does. So a blocked read remembers in
 * rd_wait what it waits for, a blocked write in wr_wait, a handshake in
 * hs.wait, and conn_arm() is the one place that turns those into the state
 * of the two watchers. Either watcher firing retries whatever waits for it. */
#include "conn.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* How long a closing connection may take to flush its last replies. */
#define CONN_LINGER_SECONDS 10.0

static ssize_t plain_recv(struct conn *c, void *buf, size_t len)
{
    ssize_t n = recv(c->fd, buf, len, 0);
    if (n >= 0) return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        c->want_read = true;
        return CONN_AGAIN;
    }
    return CONN_ERROR;
}

static ssize_t plain_send(struct conn *c, const void *buf, size_t len)
{
    ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        c->want_write = true;
        return CONN_AGAIN;
    }
    return CONN_ERROR;
}

static bool plain_has_pending(struct conn *c)
{
    return false;
}
static void plain_shutdown(struct conn *c) {}
static void plain_free_state(struct conn *c) {}

const struct transport conn_plain_transport = {
    "tcp", plain_recv, plain_send, plain_has_pending, plain_shutdown, plain_free_state, NULL,
};

/* The direction(s) the transport asked for with CONN_AGAIN, or dflt. */
static int conn_wanted(const struct conn *c, int dflt)
{
    int ev = (c->want_read ? EV_READ : 0) | (c->want_write ? EV_WRITE : 0);
    return ev ? ev : dflt;
}

static bool conn_reading(const struct conn *c)
{
    return !c->closing && !c->closed && !c->eof && !c->failed && !c->hs.active &&
           buf_len(&c->in) < CONN_INPUT_MAX;
}

static bool conn_out_pending(const struct conn *c)
{
    return buf_len(&c->out) > 0 && !c->failed;
}

static void conn_set_io(struct conn *c, ev_io *w, bool on)
{
    if (on && !ev_is_active(w)) ev_io_start(c->loop, w);
    if (!on && ev_is_active(w)) ev_io_stop(c->loop, w);
}

/* The watchers follow what is waiting, and for which direction. */
static void conn_arm(struct conn *c)
{
    if (c->closed) return;
    int ev = 0;
    bool finish_soon = false;
    if (c->hs.active) {
        ev = c->hs.wait;
    } else {
        if (conn_reading(c)) ev |= c->rd_wait;
        if (conn_out_pending(c)) ev |= c->wr_wait;
        /* A closing conn with nothing left to send is finished from the
         * loop, never inside the caller's stack. */
        else if (c->closing)
            finish_soon = true;
    }
    conn_set_io(c, &c->rio, ev & EV_READ);
    conn_set_io(c, &c->wio, ev & EV_WRITE);
    /* A fed event, not a watcher on a socket that is writable anyway: it
     * runs in this loop iteration, after the current callback, and costs
     * no epoll_ctl or extra wait. Stopping wio (conn_close_socket) drops it. */
    if (finish_soon && !ev_is_pending(&c->wio)) ev_feed_event(c->loop, &c->wio, EV_WRITE);
}

/* Input the transport decoded but the socket cannot signal (TLS records
 * already decrypted) is read from the loop, as if the socket were readable. */
static void conn_kick_pending(struct conn *c)
{
    if (conn_reading(c) && c->tp->has_pending(c)) ev_feed_event(c->loop, &c->rio, EV_CUSTOM);
}

/* Frees a transport state that was never switched to. */
static void conn_drop_pending_transport(struct conn *c)
{
    const struct transport *tp = c->tp;
    void *state = c->tp_state;
    c->tp = c->hs.tp;
    c->tp_state = c->hs.state;
    c->tp->free_state(c);
    c->tp = tp;
    c->tp_state = state;
    c->hs.tp = NULL;
    c->hs.state = NULL;
}

static void conn_close_socket(struct conn *c)
{
    ev_timer_stop(c->loop, &c->notify);
    c->closed = true;
    ev_io_stop(c->loop, &c->rio);
    ev_io_stop(c->loop, &c->wio);
    ev_timer_stop(c->loop, &c->linger);
    ev_timer_stop(c->loop, &c->hs.timer);
    if (!c->failed) c->tp->shutdown(c);
    close(c->fd);
    c->fd = -1;
}

static void conn_finish_close(struct conn *c)
{
    if (c->closed) return;
    conn_close_socket(c);
    c->ev.on_closed(c, c->owner);
}

/* Reads until the transport would block, the input is full or EOF. Never
 * holds more than CONN_INPUT_MAX: what does not fit stays in the socket or the
 * transport until the owner consumes input. */
/* Buffers that grew for a burst (DATA, a pipelined batch) are released
 * once empty, so idle connections stay small. */
static void conn_shrink(struct buf *b)
{
    if (buf_len(b) == 0 && b->cap > CONN_KEEP_BUFFER) buf_free(b);
}

/* Reads land here unless the conn's own buffer already has room: an idle
 * connection then holds a buffer the size of what it was sent, not a whole
 * read chunk (RSS per idle connection). */
static char conn_scratch[CONN_READ_CHUNK];

static void conn_read_some(struct conn *c)
{
    bool recheck = true;
    c->rd_wait = EV_READ;
    while (buf_len(&c->in) < CONN_INPUT_MAX) {
        size_t room = CONN_INPUT_MAX - buf_len(&c->in);
        if (room > CONN_READ_CHUNK) room = CONN_READ_CHUNK;
        size_t free_room = c->in.cap - c->in.end;
        bool direct = free_room >= CONN_DIRECT_READ_MIN;
        if (direct && room > free_room) room = free_room;
        char *w = direct ? c->in.data + c->in.end : conn_scratch;
        c->want_read = c->want_write = false;
        ssize_t n = c->tp->recv(c, w, room);
        if (n > 0) {
            if (direct) buf_commit(&c->in, (size_t)n);
            else if (!buf_append(&c->in, w, (size_t)n)) {
                c->failed = true;
                return;
            }
            /* A short read drained the socket: don't pay for a recv that
             * would say EAGAIN (level-triggered, we hear of more). Decoded
             * TLS input the socket can't signal is still read. */
            if ((size_t)n < room && !c->tp->has_pending(c)) return;
            continue;
        }
        if (n == 0) {
            c->eof = true;
        } else if (n == CONN_AGAIN) {
            /* Decoded input the socket cannot signal must not be left
             * behind when we go idle. Once: a transport that reports pending
             * input yet blocks must not spin the loop. */
            if (recheck && c->tp->has_pending(c)) {
                recheck = false;
                continue;
            }
            c->rd_wait = conn_wanted(c, EV_READ);
        } else {
            c->failed = true;
        }
        return;
    }
}

/* Sends at most limit bytes of c->out; returns how many it sent. */
static size_t conn_send_some(struct conn *c, size_t limit)
{
    size_t sent = 0;
    c->wr_wait = EV_WRITE;
    while (sent < limit && buf_len(&c->out) > 0 && !c->failed) {
        size_t len = buf_len(&c->out);
        if (len > limit - sent) len = limit - sent;
        c->want_read = c->want_write = false;
        ssize_t n = c->tp->send(c, buf_head(&c->out), len);
        if (n > 0) {
            buf_consume(&c->out, (size_t)n);
            sent += (size_t)n;
            continue;
        }
        if (n == CONN_AGAIN)
            c->wr_wait = conn_wanted(c, EV_WRITE);
        else
            c->failed = true;
        break;
    }
    return sent;
}

static void conn_hs_switch(struct conn *c)
{
    c->tp->free_state(c);
    c->tp = c->hs.tp;
    c->tp_state = c->hs.state;
    c->hs.tp = NULL;
    c->hs.state = NULL;
    c->hs.switched = true;
    c->rd_wait = EV_READ;
    c->wr_wait = EV_WRITE;
}

static void conn_hs_finish(struct conn *c, bool ok)
{
    c->hs.active = false;
    ev_timer_stop(c->loop, &c->hs.timer);
    /* A failed switch still hands its state to the conn, which frees it. */
    if (!c->hs.switched) conn_hs_switch(c);
    conn_handshake_done_fn done = c->hs.on_done;
    c->hs.on_done = NULL;
    if (ok) {
        /* Output the owner queued during the handshake. */
        conn_send_some(c, SIZE_MAX);
    } else {
        c->failed = true;
    }
    conn_arm(c);
    if (!c->failed) conn_kick_pending(c);
    done(c, c->owner, ok && !c->failed);
}

static void conn_hs_step(struct conn *c)
{
    if (c->hs.plain_left > 0) {
        c->hs.plain_left -= conn_send_some(c, c->hs.plain_left);
        if (c->failed) {
            conn_hs_finish(c, false);
            return;
        }
        if (c->hs.plain_left > 0) {
            c->hs.wait = c->wr_wait;
            conn_arm(c);
            return;
        }
    }
    if (!c->hs.switched) conn_hs_switch(c);
    c->want_read = c->want_write = false;
    int r = c->tp->handshake(c);
    if (r == CONN_AGAIN) {
        c->hs.wait = conn_wanted(c, EV_READ);
        conn_arm(c);
        return;
    }
    conn_hs_finish(c, r > 0);
}

/* conn_close() during a handshake: nothing more goes out over the new
 * transport; plaintext queued before the switch may still leave. */
static void conn_hs_cancel(struct conn *c)
{
    c->hs.active = false;
    c->hs.on_done = NULL;
    ev_timer_stop(c->loop, &c->hs.timer);
    if (c->hs.switched) {
        c->failed = true; /* half a handshake: no goodbye to send */
        return;
    }
    c->out.end -= buf_len(&c->out) - c->hs.plain_left;
    conn_drop_pending_transport(c);
}

static void conn_on_hs_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = w->data;
    if (c->hs.active) conn_hs_finish(c, false);
}

/* Sends what it can. Only the loop (may_finish) completes a close: from the
 * owner's stack, on_closed would free the owner under its own feet. */
static void conn_flush_out(struct conn *c, bool may_finish)
{
    if (c->closed) return;
    /* During a handshake the handshake owns the socket; conn_hs_finish()
     * sends what was queued meanwhile. */
    if (c->hs.active) return;
    bool was_failed = c->failed;
    size_t had_out = buf_len(&c->out);
    conn_send_some(c, SIZE_MAX);
    /* The owner stopped taking input until the output drains (out_resume).
     * If this flush drained it, no read or write event may ever come to say
     * so (the client sent everything already): tell the owner from the loop. */
    if (c->out_resume && had_out > c->out_resume && buf_len(&c->out) <= c->out_resume &&
        !c->failed && !c->closing)
        ev_timer_start(c->loop, &c->notify);
    conn_shrink(&c->out);
    /* A send that failed here (a client that reset before its greeting)
     * arms no watcher: tell the owner from the loop, or the session would
     * hold its slot until the idle timeout. */
    if (c->failed && !was_failed && !c->closing) ev_timer_start(c->loop, &c->notify);
    conn_arm(c);
    if (may_finish && c->closing && !conn_out_pending(c)) conn_finish_close(c);
}

static void conn_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;
    if (c->closed) return;
    if (c->hs.active) {
        conn_hs_step(c);
        return;
    }
    if (c->closing) {
        conn_flush_out(c, true); /* may finish the close: c is gone then */
        return;
    }
    size_t had = buf_len(&c->in), had_out = buf_len(&c->out);
    bool was_eof = c->eof, was_failed = c->failed;
    if (conn_out_pending(c) && (revents & (c->wr_wait | EV_CUSTOM))) conn_send_some(c, SIZE_MAX);
    if (conn_reading(c) && (revents & (c->rd_wait | EV_CUSTOM))) conn_read_some(c);
    conn_arm(c);
    bool drained = c->out_resume && had_out > c->out_resume && buf_len(&c->out) <= c->out_resume;
    if (buf_len(&c->in) != had || c->eof != was_eof || c->failed != was_failed || drained)
        c->ev.on_input(c, c->owner);
    /* on_input may have closed us; don't touch c after a finished close. */
}

static void conn_on_notify(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = w->data;
    if (!c->closed && !c->closing) c->ev.on_input(c, c->owner);
}

static void conn_on_linger(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = w->data;
    conn_finish_close(c);
}

struct conn *conn_new(struct ev_loop *loop, int fd, const struct conn_events *ev, void *owner)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->loop = loop;
    c->tp = &conn_plain_transport;
    c->ev = *ev;
    c->owner = owner;
    c->rd_wait = EV_READ;
    c->wr_wait = EV_WRITE;
    ev_io_init(&c->rio, conn_on_io, fd, EV_READ);
    ev_io_init(&c->wio, conn_on_io, fd, EV_WRITE);
    /* conn_arm below starts rio, whose new-fd flag has libev register the
     * fd. wio's own flag would only make libev re-add it (an epoll_ctl that
     * fails with EEXIST) the first time a reply waits in c->out. */
    c->wio.events &= ~EV__IOFDSET;
    ev_timer_init(&c->linger, conn_on_linger, CONN_LINGER_SECONDS, 0.);
    ev_timer_init(&c->notify, conn_on_notify, 0., 0.);
    c->notify.data = c;
    ev_timer_init(&c->hs.timer, conn_on_hs_timeout, 1., 0.);
    c->rio.data = c->wio.data = c->linger.data = c->hs.timer.data = c;
    conn_arm(c);
    return c;
}

bool conn_write(struct conn *c, const void *p, size_t n)
{
    if (c->failed || c->closed) return false;
    if (!buf_append(&c->out, p, n)) {
        c->failed = true;
        return false;
    }
    return true;
}

void conn_flush(struct conn *c)
{
    conn_flush_out(c, false);
}

void conn_input_consumed(struct conn *c)
{
    conn_shrink(&c->in);
    if (c->closed || c->hs.active) return;
    conn_arm(c);
    conn_kick_pending(c);
}

void conn_close(struct conn *c)
{
    if (c->closing || c->closed) return;
    if (c->hs.active) conn_hs_cancel(c);
    c->closing = true;
    ev_timer_start(c->loop, &c->linger);
    /* Flush from the loop, never inside the caller's stack: the owner may
     * still be using its state. conn_arm() starts a watcher for that. */
    conn_arm(c);
}

void conn_free(struct conn *c)
{
    if (!c) return;
    if (!c->closed) {
        c->failed = true; /* no goodbye: the owner is tearing down */
        conn_close_socket(c);
    }
    if (c->hs.state) conn_drop_pending_transport(c);
    c->tp->free_state(c);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}

bool conn_start_handshake(struct conn *c, const struct transport *tp, void *state, double timeout,
                          conn_handshake_done_fn on_done)
{
    if (c->closed || c->closing || c->failed || c->hs.active || !tp->handshake || !on_done ||
        !(timeout > 0))
        return false;
    /* Sent before the switch: never to be read as if it came through it. */
    buf_clear(&c->in);
    size_t plain = buf_len(&c->out);
    plain -= conn_send_some(c, plain);
    if (c->failed) return false;
    c->hs.active = true;
    c->hs.switched = false;
    c->hs.plain_left = plain;
    c->hs.tp = tp;
    c->hs.state = state;
    c->hs.on_done = on_done;
    c->hs.wait = plain > 0 ? c->wr_wait : EV_READ;
    ev_timer_set(&c->hs.timer, timeout, 0.);
    ev_timer_start(c->loop, &c->hs.timer);
    conn_arm(c);
    /* The first step runs from the loop, so on_done never runs inside the
     * caller (and a client that already sent its hello is not missed). */
    ev_feed_event(c->loop, &c->wio, EV_CUSTOM);
    return true;
}
