/* conn.c — buffered non-blocking I/O on one socket behind struct transport.
 * Owns the fd and its watchers. Must not parse what it carries.
 *
 * Close is always deferred: conn_close() only marks the conn; the socket is
 * closed from the event loop once output is flushed (or the linger timer
 * fires), and on_closed is the last thing that touches the conn. */
#include "conn.h"

#include <errno.h>
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

static bool plain_has_pending(struct conn *c) { return false; }
static void plain_shutdown(struct conn *c) {}
static void plain_free_state(struct conn *c) {}

const struct transport conn_plain_transport = {
    "tcp", plain_recv, plain_send, plain_has_pending, plain_shutdown, plain_free_state,
};

static void conn_close_socket(struct conn *c)
{
    c->closed = true;
    ev_io_stop(c->loop, &c->rio);
    ev_io_stop(c->loop, &c->wio);
    ev_timer_stop(c->loop, &c->linger);
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

static void conn_update_read(struct conn *c)
{
    bool want = !c->closing && !c->eof && !c->failed && buf_len(&c->in) < CONN_INPUT_MAX;
    if (want && !ev_is_active(&c->rio)) ev_io_start(c->loop, &c->rio);
    if (!want && ev_is_active(&c->rio)) ev_io_stop(c->loop, &c->rio);
}

/* Reads until the transport would block, the buffer is full or EOF. */
static void conn_read_some(struct conn *c)
{
    do {
        if (buf_len(&c->in) >= CONN_INPUT_MAX) break;
        char *w = buf_reserve(&c->in, 16384);
        if (!w) {
            c->failed = true;
            break;
        }
        c->want_read = c->want_write = false;
        ssize_t n = c->tp->recv(c, w, 16384);
        if (n > 0) {
            buf_commit(&c->in, (size_t)n);
            continue;
        }
        if (n == 0) c->eof = true;
        else if (n == CONN_ERROR) c->failed = true;
        break;
    } while (true);
}

static void conn_on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;
    conn_read_some(c);
    conn_update_read(c);
    c->ev.on_input(c, c->owner);
    /* on_input may have closed us; don't touch c after a finished close. */
}

static void conn_on_writable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;
    conn_flush(c);
    /* Closing completes here, in a loop callback, never inside conn_flush:
     * the owner may call conn_flush from code that still uses its state. */
    if (c->closing && (buf_len(&c->out) == 0 || c->failed)) conn_finish_close(c);
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
    ev_io_init(&c->rio, conn_on_readable, fd, EV_READ);
    ev_io_init(&c->wio, conn_on_writable, fd, EV_WRITE);
    ev_timer_init(&c->linger, conn_on_linger, CONN_LINGER_SECONDS, 0.);
    c->rio.data = c->wio.data = c->linger.data = c;
    ev_io_start(loop, &c->rio);
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
    if (c->closed) return;
    while (buf_len(&c->out) > 0 && !c->failed) {
        c->want_read = c->want_write = false;
        ssize_t n = c->tp->send(c, buf_head(&c->out), buf_len(&c->out));
        if (n > 0) {
            buf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n == CONN_ERROR || n == 0) c->failed = true;
        break;
    }
    /* A closing conn keeps the write watcher armed: its callback closes. */
    bool want_write = (buf_len(&c->out) > 0 && !c->failed) || c->closing;
    if (want_write && !ev_is_active(&c->wio)) ev_io_start(c->loop, &c->wio);
    if (!want_write && ev_is_active(&c->wio)) ev_io_stop(c->loop, &c->wio);
}

void conn_input_consumed(struct conn *c)
{
    if (!c->closed) conn_update_read(c);
}

void conn_close(struct conn *c)
{
    if (c->closing || c->closed) return;
    c->closing = true;
    ev_io_stop(c->loop, &c->rio);
    ev_timer_start(c->loop, &c->linger);
    /* Flush from the loop, never inside the caller's stack: the owner may
     * still be using its state. A zero-timeout write watcher does that. */
    ev_io_start(c->loop, &c->wio);
}

void conn_free(struct conn *c)
{
    if (!c) return;
    if (!c->closed) {
        c->failed = true; /* no goodbye: the owner is tearing down */
        conn_close_socket(c);
    }
    c->tp->free_state(c);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}
