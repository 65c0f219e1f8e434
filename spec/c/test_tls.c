/* test_tls.c — tests for src/net/tls.c and the handshake support in src/net/conn.c:
 * a conn on 127.0.0.1 switched to TLS with tls_start() (implicit TLS and
 * STARTTLS), driven by real clients — `openssl s_client`, python3's ssl
 * module, and small raw-socket children for the misbehaving ones — with
 * certificates made by `openssl` at test time in a temporary directory.
 * It must not test SMTP: the "server" here is an echo with just enough of a
 * STARTTLS dialogue for `s_client -starttls smtp`. Every wait is bounded: each
 * case has a deadline that kills its clients. */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "conn.h"
#include "tls.h"

#define BIG_ECHO (4u * 1024 * 1024)       /* several MiB through TLS both ways */
#define LAZY_ECHO (1u * 1024 * 1024)      /* through STARTTLS, consumed in small bites */
#define LAZY_BITE 3000                    /* never a whole record: leaves input inside mbedTLS */
#define BIG_PLAIN (16u * 1024 * 1024)     /* more than the socket takes before the switch */
#define TRICKLE_TOTAL (24u * 1024 * 1024) /* more than the socket buffers hold */
#define TRICKLE_PIECE 1000                /* less than a record */
#define CASE_DEADLINE 60.0
#define CHILD_WAIT_SECONDS 10 /* raw-socket children give up after this */

static char dir[256];
static const char *python = "/usr/bin/python3";

static const char *path(const char *name)
{
    static char bufs[8][512];
    static int i;
    char *p = bufs[i++ % 8];
    snprintf(p, sizeof bufs[0], "%s/%s", dir, name);
    return p;
}

/* Runs a shell command (bounded by `timeout`); returns its exit status. */
static int sh(const char *fmt, ...)
{
    char cmd[1024], full[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "cd '%s' && timeout 60 sh -c '%s' >>setup.log 2>&1", dir, cmd);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static char *slurp(const char *file, size_t *len)
{
    FILE *f = fopen(file, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *p = malloc(cap + 1);
    size_t r;
    while ((r = fread(p + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) p = realloc(p, (cap *= 2) + 1);
    }
    fclose(f);
    p[n] = '\0';
    if (len) *len = n;
    return p;
}

static bool file_contains(const char *file, const char *needle)
{
    char *s = slurp(file, NULL);
    bool found = s && strstr(s, needle);
    free(s);
    return found;
}

/* ------------------------------------------------------------- the server */

enum mode {
    M_IMPLICIT, /* tls_start on accept */
    M_STARTTLS, /* 220, EHLO, STARTTLS, then tls_start */
    M_BIGPLAIN, /* BIG_PLAIN plaintext bytes, "220 go", tls_start, "post" queued */
    M_CANCEL,   /* "bye", tls_start, "secret" queued, conn_close at once */
};

struct tcase;

struct sconn {
    struct tcase *tc;
    struct conn *c;
    int done_calls, done_order;
    bool ok, closed, started, input_during_hs, injected, restart_refused;
    size_t plain_left_after_start;
    unsigned iter_accept, iter_done;
    size_t echoed;
    char version[32], cipher[96], error[160];
    char *peer;
    ev_timer lazy;
};

struct tcase {
    enum mode mode;
    struct tls_config *cfg;
    bool release_cfg_after_start; /* live sessions keep their config */
    double hs_timeout;
    const char *hello;    /* sent when the handshake is done */
    size_t close_after;   /* close once this many bytes were echoed; 0: at EOF */
    bool bye_after_hello; /* close right after the hello (close_notify ends s_client) */
    bool trickle;         /* once in TLS, send TRICKLE_TOTAL bytes in small pieces, close */
    bool lazy;            /* consume input LAZY_BITE at a time from a timer */
    int expect_conns;

    struct ev_loop *loop;
    int lfd, port;
    ev_io accept_w;
    struct sconn conns[4];
    int nconns, nclosed, done_seq;
    pid_t pid[2];
    int status[2];
    bool exited[2];
    ev_child child_w[2];
    int nchildren;
    ev_timer deadline;
    bool timed_out;
};

static bool inside_tls_start;
static bool done_inside_tls_start;

static void tc_maybe_stop(struct tcase *tc)
{
    for (int i = 0; i < tc->nchildren; i++)
        if (!tc->exited[i]) return;
    if (tc->nclosed < tc->expect_conns) return;
    ev_break(tc->loop, EVBREAK_ALL);
}

static void echo_some(struct sconn *sc, size_t max)
{
    struct conn *c = sc->c;
    size_t n = buf_len(&c->in);
    if (n > max) n = max;
    conn_write(c, buf_head(&c->in), n);
    buf_consume(&c->in, n);
    sc->echoed += n;
    conn_input_consumed(c);
    conn_flush(c);
}

/* After echoing: close when told to, or when the client is gone and all it
 * sent was echoed. */
static void echo_maybe_close(struct sconn *sc)
{
    struct conn *c = sc->c;
    if (sc->tc->close_after && sc->echoed >= sc->tc->close_after)
        conn_close(c);
    else if ((c->eof && buf_len(&c->in) == 0) || c->failed)
        conn_close(c);
}

static void on_lazy(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sconn *sc = w->data;
    if (!sc->c || sc->c->closing) {
        ev_timer_stop(loop, w);
        return;
    }
    echo_some(sc, LAZY_BITE);
    if (buf_len(&sc->c->in) == 0) ev_timer_stop(loop, w);
    echo_maybe_close(sc);
}

static void on_done(struct conn *c, void *owner, bool ok)
{
    struct sconn *sc = owner;
    if (inside_tls_start) done_inside_tls_start = true;
    sc->done_calls++;
    sc->ok = ok;
    sc->done_order = ++sc->tc->done_seq;
    sc->iter_done = ev_iteration(sc->tc->loop);
    snprintf(sc->error, sizeof sc->error, "%s", tls_error(c));
    if (!ok) {
        conn_close(c);
        return;
    }
    tls_info(c, sc->version, sizeof sc->version, sc->cipher, sizeof sc->cipher, &sc->peer);
    if (sc->tc->cfg) sc->restart_refused = !tls_start(c, sc->tc->cfg, 5.0, on_done);
    if (sc->tc->hello) {
        conn_write(c, sc->tc->hello, strlen(sc->tc->hello));
        conn_flush(c);
    }
    if (sc->tc->bye_after_hello) conn_close(c);
    if (sc->tc->trickle) {
        /* Each piece is flushed at once, so when the socket fills, mbedTLS
         * holds a short record while more output piles up behind it: the
         * retry must repeat the short length, not the grown one. */
        unsigned char piece[TRICKLE_PIECE];
        for (size_t at = 0; at < TRICKLE_TOTAL; at += TRICKLE_PIECE) {
            size_t n = TRICKLE_TOTAL - at < TRICKLE_PIECE ? TRICKLE_TOTAL - at : TRICKLE_PIECE;
            for (size_t i = 0; i < n; i++)
                piece[i] = (unsigned char)((at + i) % 251);
            conn_write(c, piece, n);
            conn_flush(c);
        }
        conn_close(c);
    }
}

static bool start_tls(struct sconn *sc)
{
    inside_tls_start = true;
    bool r = tls_start(sc->c, sc->tc->cfg, sc->tc->hs_timeout, on_done);
    inside_tls_start = false;
    sc->started = r;
    sc->plain_left_after_start = sc->c->hs.plain_left;
    return r;
}

/* The plaintext side of STARTTLS, line by line. */
static void starttls_dialogue(struct sconn *sc)
{
    struct conn *c = sc->c;
    char *lf;
    while ((lf = memchr(buf_head(&c->in), '\n', buf_len(&c->in)))) {
        size_t n = (size_t)(lf - buf_head(&c->in)) + 1;
        bool ehlo = n >= 4 && !strncasecmp(buf_head(&c->in), "EHLO", 4);
        bool starttls = n >= 8 && !strncasecmp(buf_head(&c->in), "STARTTLS", 8);
        buf_consume(&c->in, n);
        if (ehlo) {
            static const char r[] = "250-test\r\n250 STARTTLS\r\n";
            conn_write(c, r, sizeof r - 1);
        } else if (starttls) {
            static const char r[] = "220 Ready to start TLS\r\n";
            sc->injected = buf_len(&c->in) > 0;
            conn_write(c, r, sizeof r - 1);
            conn_flush(c);
            if (!start_tls(sc)) {
                conn_close(c);
                return;
            }
            /* Queued while handshaking: must leave encrypted, after it. */
            conn_write(c, "early\r\n", 7);
            conn_flush(c);
            return;
        } else {
            static const char r[] = "500 what?\r\n";
            conn_write(c, r, sizeof r - 1);
        }
    }
    conn_flush(c);
}

static void on_input(struct conn *c, void *owner)
{
    struct sconn *sc = owner;
    if (c->hs.active) sc->input_during_hs = true;
    if (c->closing) return;
    if (!conn_is_tls(c)) {
        if (sc->tc->mode == M_STARTTLS && !sc->started) starttls_dialogue(sc);
        /* Once started, the handshake reports the EOF through on_done. */
        if (!sc->started && !c->closing && (c->eof || c->failed)) conn_close(c);
        return;
    }
    if (sc->tc->lazy) {
        if (!ev_is_active(&sc->lazy)) ev_timer_start(sc->tc->loop, &sc->lazy);
        return;
    }
    echo_some(sc, SIZE_MAX);
    echo_maybe_close(sc);
}

static void on_closed(struct conn *c, void *owner)
{
    struct sconn *sc = owner;
    ev_timer_stop(sc->tc->loop, &sc->lazy);
    sc->closed = true;
    conn_free(c);
    sc->c = NULL;
    sc->tc->nclosed++;
    tc_maybe_stop(sc->tc);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    static const struct conn_events events = {on_input, on_closed};
    struct tcase *tc = w->data;
    int fd = accept4(tc->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (tc->nconns == (int)(sizeof tc->conns / sizeof tc->conns[0])) {
        close(fd);
        return;
    }
    struct sconn *sc = &tc->conns[tc->nconns++];
    sc->tc = tc;
    sc->iter_accept = ev_iteration(loop);
    ev_timer_init(&sc->lazy, on_lazy, 0.0005, 0.0005);
    sc->lazy.data = sc;
    sc->c = conn_new(loop, fd, &events, sc);
    struct conn *c = sc->c;
    switch (tc->mode) {
    case M_IMPLICIT:
        if (!start_tls(sc)) conn_close(c);
        if (tc->release_cfg_after_start) {
            tls_config_release(tc->cfg);
            tc->cfg = NULL;
        }
        break;
    case M_STARTTLS:
        conn_write(c, "220 test ESMTP\r\n", 16);
        conn_flush(c);
        break;
    case M_BIGPLAIN: {
        char *x = malloc(BIG_PLAIN);
        memset(x, 'x', BIG_PLAIN);
        conn_write(c, x, BIG_PLAIN);
        free(x);
        conn_write(c, "220 go\r\n", 8);
        if (!start_tls(sc)) conn_close(c);
        conn_write(c, "post\r\n", 6); /* queued during the handshake */
        conn_flush(c);
        break;
    }
    case M_CANCEL:
        conn_write(c, "bye\r\n", 5);
        if (!start_tls(sc)) conn_close(c);
        conn_write(c, "secret\r\n", 8);
        conn_close(c);
        break;
    }
}

static void on_child(struct ev_loop *loop, ev_child *w, int revents)
{
    struct tcase *tc = w->data;
    for (int i = 0; i < tc->nchildren; i++) {
        if (tc->pid[i] == w->rpid) {
            tc->exited[i] = true;
            tc->status[i] = w->rstatus;
        }
    }
    ev_child_stop(loop, w);
    tc_maybe_stop(tc);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct tcase *tc = w->data;
    tc->timed_out = true;
    ev_break(loop, EVBREAK_ALL);
}

static bool tc_listen(struct tcase *tc)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    tc->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (tc->lfd < 0 || bind(tc->lfd, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(tc->lfd, 8) < 0 || getsockname(tc->lfd, (struct sockaddr *)&a, &alen) < 0)
        return false;
    tc->port = ntohs(a.sin_port);
    return true;
}

static void tc_add_child(struct tcase *tc, pid_t pid)
{
    int i = tc->nchildren++;
    tc->pid[i] = pid;
    ev_child_init(&tc->child_w[i], on_child, pid, 0);
    tc->child_w[i].data = tc;
    ev_child_start(tc->loop, &tc->child_w[i]);
}

/* A client as a shell command; %d is the port. stdin, stdout and stderr go
 * to files in the temporary directory (stdin "" is /dev/null). */
static void tc_spawn_sh(struct tcase *tc, const char *fmt, const char *in, const char *out,
                        const char *err)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, tc->port);
    pid_t pid = fork();
    if (pid == 0) {
        int i = open(*in ? path(in) : "/dev/null", O_RDONLY);
        int o = open(path(out), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(path(err), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(i, 0);
        dup2(o, 1);
        dup2(e, 2);
        if (chdir(dir) != 0) _exit(126);
        setenv("OPENSSL_CONF", "/dev/null", 1); /* the system's MinProtocol must not decide */
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    tc_add_child(tc, pid);
}

/* A client as a function run in a child; its return value is the status. */
static void tc_spawn_fn(struct tcase *tc, int (*fn)(int port))
{
    pid_t pid = fork();
    if (pid == 0) _exit(fn(tc->port));
    tc_add_child(tc, pid);
}

static void tc_init(struct tcase *tc, enum mode mode, struct tls_config *cfg)
{
    memset(tc, 0, sizeof *tc);
    tc->mode = mode;
    tc->cfg = cfg;
    tc->hs_timeout = 10.0;
    tc->expect_conns = 1;
    tc->loop = ev_default_loop(0);
    tc->lfd = -1;
    if (!tc_listen(tc)) {
        perror("listen");
        exit(2);
    }
}

/* Runs the loop until every client exited and every conn closed, or the
 * deadline; then kills what is left. */
static void tc_run(struct tcase *tc)
{
    ev_io_init(&tc->accept_w, on_accept, tc->lfd, EV_READ);
    tc->accept_w.data = tc;
    ev_io_start(tc->loop, &tc->accept_w);
    ev_timer_init(&tc->deadline, on_deadline, CASE_DEADLINE, 0.);
    tc->deadline.data = tc;
    ev_timer_start(tc->loop, &tc->deadline);
    ev_run(tc->loop, 0);
    ev_timer_stop(tc->loop, &tc->deadline);
    ev_io_stop(tc->loop, &tc->accept_w);
    for (int i = 0; i < tc->nchildren; i++) {
        ev_child_stop(tc->loop, &tc->child_w[i]);
        if (!tc->exited[i]) {
            kill(tc->pid[i], SIGKILL);
            waitpid(tc->pid[i], &tc->status[i], 0);
        }
    }
    for (int i = 0; i < tc->nconns; i++) {
        ev_timer_stop(tc->loop, &tc->conns[i].lazy);
        if (tc->conns[i].c) conn_free(tc->conns[i].c);
        tc->conns[i].c = NULL;
    }
    close(tc->lfd);
    CHECK(!tc->timed_out, "the case did not finish within %.0f s", CASE_DEADLINE);
}

static void tc_done(struct tcase *tc)
{
    for (int i = 0; i < tc->nconns; i++)
        free(tc->conns[i].peer);
}

static int child_status(const struct tcase *tc, int i)
{
    int st = tc->status[i];
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* ------------------------------------------------------ raw-socket clients */

static int raw_connect(int port)
{
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {CHILD_WAIT_SECONDS, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) return -1;
    return fd;
}

/* Reads until EOF (0) or error/timeout (1); what came is in buf. */
static int raw_until_eof(int fd, char *buf, size_t cap, size_t *got)
{
    size_t n = 0;
    for (;;) {
        char tmp[4096];
        ssize_t r = recv(fd, tmp, sizeof tmp, 0);
        if (r == 0) break;
        if (r < 0) return errno == ECONNRESET ? 0 : 1;
        if (buf && n + (size_t)r <= cap) memcpy(buf + n, tmp, (size_t)r);
        n += (size_t)r;
    }
    if (got) *got = n;
    return 0;
}

static int client_garbage_text(int port)
{
    int fd = raw_connect(port);
    static const char g[] = "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (fd < 0 || send(fd, g, sizeof g - 1, MSG_NOSIGNAL) < 0) return 2;
    return raw_until_eof(fd, NULL, 0, NULL);
}

/* A well-formed record header around a handshake body of junk. */
static int client_garbage_record(int port)
{
    int fd = raw_connect(port);
    unsigned char g[5 + 64] = {0x16, 0x03, 0x01, 0x00, 0x40};
    memset(g + 5, 0x41, 64);
    if (fd < 0 || send(fd, g, sizeof g, MSG_NOSIGNAL) < 0) return 2;
    return raw_until_eof(fd, NULL, 0, NULL);
}

static int client_silent(int port)
{
    int fd = raw_connect(port);
    if (fd < 0) return 2;
    return raw_until_eof(fd, NULL, 0, NULL);
}

/* Announces a 256-byte record and sends 10 bytes of it. */
static int client_partial_record(int port)
{
    int fd = raw_connect(port);
    unsigned char g[5 + 10] = {0x16, 0x03, 0x01, 0x01, 0x00, 0x01};
    if (fd < 0 || send(fd, g, sizeof g, MSG_NOSIGNAL) < 0) return 2;
    return raw_until_eof(fd, NULL, 0, NULL);
}

/* Sends STARTTLS and closes its side: the handshake fails at once (EOF),
 * which must still reach on_done from the loop, not inside tls_start. */
static int client_starttls_then_eof(int port)
{
    char buf[256];
    int fd = raw_connect(port);
    if (fd < 0 || recv(fd, buf, sizeof buf, 0) <= 0) return 2;
    if (send(fd, "STARTTLS\r\n", 10, MSG_NOSIGNAL) < 0 || shutdown(fd, SHUT_WR) < 0) return 2;
    return raw_until_eof(fd, NULL, 0, NULL);
}

/* Expects exactly "bye\r\n" and then EOF: the plaintext queued before the
 * switch leaves, what was queued for TLS does not. */
static int client_expect_bye(int port)
{
    char buf[256];
    size_t n = 0;
    int fd = raw_connect(port);
    if (fd < 0 || raw_until_eof(fd, buf, sizeof buf, &n)) return 2;
    return n == 5 && !memcmp(buf, "bye\r\n", 5) ? 0 : 3;
}

/* ------------------------------------------------------------------ setup */

static const char py_injection[] =
    "import socket, ssl, sys\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
    "buf = b''\n"
    "def line():\n"
    "    global buf\n"
    "    while b'\\n' not in buf:\n"
    "        d = s.recv(4096)\n"
    "        if not d: sys.exit('EOF before a reply')\n"
    "        buf += d\n"
    "    l, buf = buf.split(b'\\n', 1)\n"
    "    return l\n"
    "if not line().startswith(b'220'): sys.exit('no greeting')\n"
    "s.sendall(b'STARTTLS\\r\\nINJECTED\\r\\n')\n"
    "r = line()\n"
    "if not r.startswith(b'220'): sys.exit('STARTTLS got %r' % r)\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
    "ctx.check_hostname = False\n"
    "ctx.verify_mode = ssl.CERT_NONE\n"
    "t = ctx.wrap_socket(s, server_hostname='localhost')\n"
    "t.sendall(b'ECHO\\r\\n')\n"
    "got = b''\n"
    "while b'ECHO\\r\\n' not in got:\n"
    "    d = t.recv(4096)\n"
    "    if not d: break\n"
    "    got += d\n"
    "print(repr(got))\n"
    "sys.exit(0 if got == b'early\\r\\nECHO\\r\\n' else 1)\n";

static const char py_bigplain[] =
    "import socket, ssl, sys\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
    "buf = bytearray()\n"
    "while not buf.endswith(b'220 go\\r\\n'):\n"
    "    d = s.recv(1 << 20)\n"
    "    if not d: sys.exit('EOF in plaintext after %d bytes' % len(buf))\n"
    "    buf += d\n"
    "if len(buf) - 8 != int(sys.argv[2]) or buf.count(b'x') != len(buf) - 8:\n"
    "    sys.exit('plaintext: %d bytes' % len(buf))\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
    "ctx.check_hostname = False\n"
    "ctx.verify_mode = ssl.CERT_NONE\n"
    "t = ctx.wrap_socket(s, server_hostname='localhost')\n"
    "def get(n):\n"
    "    got = b''\n"
    "    while len(got) < n:\n"
    "        d = t.recv(n - len(got))\n"
    "        if not d: break\n"
    "        got += d\n"
    "    return got\n"
    "p = get(6)\n"
    "if p != b'post\\r\\n': sys.exit('after the handshake: %r' % p)\n"
    "t.sendall(b'ping\\r\\n')\n"
    "p = get(6)\n"
    "sys.exit(0 if p == b'ping\\r\\n' else 'echo: %r' % p)\n";

static const char py_trickle[] =
    "import socket, ssl, sys, time\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
    "ctx.check_hostname = False\n"
    "ctx.verify_mode = ssl.CERT_NONE\n"
    "ctx.options &= ~getattr(ssl, 'OP_IGNORE_UNEXPECTED_EOF', 0)  # EOF must come with "
    "close_notify\n"
    "t = ctx.wrap_socket(s, server_hostname='localhost', suppress_ragged_eofs=False)\n"
    "time.sleep(0.5)  # let the server's output back up\n"
    "total = int(sys.argv[2])\n"
    "got = bytearray()\n"
    "while True:\n"
    "    try:\n"
    "        d = t.recv(1 << 16)\n"
    "    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:\n"
    "        if isinstance(e, ssl.SSLZeroReturnError): break\n"
    "        sys.exit('EOF without close_notify after %d bytes' % len(got))\n"
    "    if not d: break\n"
    "    got += d\n"
    "want = (bytes(range(251)) * (total // 251 + 1))[:total]\n"
    "if got != want:\n"
    "    i = next((i for i in range(min(len(got), total)) if got[i] != want[i]), min(len(got), "
    "total))\n"
    "    sys.exit('got %d bytes of %d, first difference at %d' % (len(got), total, i))\n";

static void write_file(const char *name, const char *text, size_t len)
{
    FILE *f = fopen(path(name), "wb");
    if (!f || fwrite(text, 1, len, f) != len || fclose(f)) {
        perror(name);
        exit(2);
    }
}

static bool make_certs(void)
{
    int bad = 0;
    /* RSA, self-signed; and a second key that does not match it. */
    bad |= sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout rsa.key -out rsa.crt -days 2 "
              "-subj /CN=localhost");
    bad |= sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other.key");
    /* An EC CA, an EC leaf it signed, and the chain file (leaf first). */
    bad |= sh("openssl ecparam -name prime256v1 -genkey -noout -out ca.key");
    bad |= sh("openssl req -x509 -new -key ca.key -out ca.crt -days 2 -subj /CN=TestCA");
    bad |= sh("openssl ecparam -name prime256v1 -genkey -noout -out ec.key");
    bad |= sh("openssl req -new -key ec.key -out ec.csr -subj /CN=localhost");
    bad |= sh("printf \"subjectAltName=DNS:localhost\\n\" > san.ext && openssl x509 -req -in "
              "ec.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out ec_leaf.crt -days 2 "
              "-extfile san.ext");
    bad |= sh("cat ec_leaf.crt ca.crt > ec_chain.crt");
    /* A client certificate from the CA, and one nobody vouches for. */
    bad |= sh("openssl ecparam -name prime256v1 -genkey -noout -out client.key");
    bad |= sh("openssl req -new -key client.key -out client.csr -subj /CN=client");
    bad |= sh("openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
              "-out client.crt -days 2");
    bad |= sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
              "-keyout rogue.key -out rogue.crt -days 2 -subj /CN=client");
    bad |= sh("echo not a certificate > junk.crt");
    /* The payloads. */
    bad |= sh("head -c %u /dev/urandom > big.in", BIG_ECHO);
    bad |= sh("head -c %u /dev/urandom > lazy.in", LAZY_ECHO);
    write_file("injection.py", py_injection, sizeof py_injection - 1);
    write_file("bigplain.py", py_bigplain, sizeof py_bigplain - 1);
    write_file("trickle.py", py_trickle, sizeof py_trickle - 1);
    return !bad;
}

static struct tls_config *load(const char *crt, const char *key, const char *ca)
{
    char err[512];
    struct tls_config *cfg =
        tls_config_load(path(crt), path(key), ca ? path(ca) : NULL, err, sizeof err);
    if (!cfg) fprintf(stderr, "tls_config_load: %s\n", err);
    return cfg;
}

/* ------------------------------------------------------------------ cases */

static void test_config_errors(void)
{
    struct {
        const char *name, *crt, *key, *ca, *names;
    } cases[] = {
        {"mismatched key", "rsa.crt", "other.key", NULL, "other.key"},
        {"EC key for an RSA certificate", "rsa.crt", "ec.key", NULL, "ec.key"},
        {"missing certificate", "nope.crt", "rsa.key", NULL, "nope.crt"},
        {"missing key", "rsa.crt", "nope.key", NULL, "nope.key"},
        {"certificate file with no certificate", "junk.crt", "rsa.key", NULL, "junk.crt"},
        {"key file that is a certificate", "rsa.crt", "rsa.crt", NULL, "rsa.crt"},
        {"missing client CA", "rsa.crt", "rsa.key", "nope-ca.crt", "nope-ca.crt"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        case_begin("config refused: %s", cases[i].name);
        struct tls_config *cfg =
            tls_config_load(path(cases[i].crt), path(cases[i].key),
                            cases[i].ca ? path(cases[i].ca) : NULL, err, sizeof err);
        CHECK(!cfg, "loaded");
        CHECK(strstr(err, path(cases[i].names)) != NULL, "message %s does not name %s", err,
              cases[i].names);
        if (i == 0) CHECK(strstr(err, "does not match") != NULL, "message: %s", err);
        if (i == 2) CHECK(strstr(err, "No such file") != NULL, "message: %s", err);
        tls_config_release(cfg);
        case_end();
    }
    case_begin("config loads: RSA, EC chain, with client CA");
    struct tls_config *a = load("rsa.crt", "rsa.key", NULL);
    struct tls_config *b = load("ec_chain.crt", "ec.key", "ca.crt");
    CHECK(a && b, "see above");
    tls_config_release(a);
    tls_config_release(b);
    case_end();
}

static const char s_client[] = "exec openssl s_client -connect 127.0.0.1:%d -servername localhost "
                               "-quiet -nocommands";

static void test_implicit_big_echo(void)
{
    struct tcase tc;
    case_begin("implicit TLS, RSA: %u bytes echoed byte-exact", BIG_ECHO);
    tc_init(&tc, M_IMPLICIT, load("rsa.crt", "rsa.key", NULL));
    tc.hello = "hello\r\n";
    tc.close_after = BIG_ECHO;
    tc_spawn_sh(&tc, s_client, "big.in", "big.out", "big.err");
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(tc.nconns == 1, "%d connections", tc.nconns);
    CHECK(sc->started && sc->done_calls == 1 && sc->ok, "started %d, done %d, ok %d (%s)",
          sc->started, sc->done_calls, sc->ok, sc->error);
    CHECK(!sc->input_during_hs, "on_input during the handshake");
    CHECK(!strcmp(sc->version, "TLSv1.2") || !strcmp(sc->version, "TLSv1.3"), "version %s",
          sc->version);
    CHECK(strstr(sc->cipher, "ECDHE-RSA") &&
              (strstr(sc->cipher, "GCM") || strstr(sc->cipher, "CHACHA20")),
          "cipher %s", sc->cipher);
    CHECK(!sc->peer, "a peer certificate without a client CA");
    CHECK(sc->restart_refused, "tls_start accepted on a conn already in TLS");
    CHECK(sc->echoed == BIG_ECHO, "echoed %zu", sc->echoed);
    size_t in_len, out_len;
    char *in = slurp(path("big.in"), &in_len), *out = slurp(path("big.out"), &out_len);
    CHECK(in && out && out_len == in_len + 7 && !memcmp(out, "hello\r\n", 7) &&
              !memcmp(out + 7, in, in_len),
          "client got %zu bytes for %zu sent", out_len, in_len);
    free(in);
    free(out);
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

static void test_implicit_ec_chain(void)
{
    struct tcase tc;
    case_begin("implicit TLS, ECDSA chain verified by the client");
    tc_init(&tc, M_IMPLICIT, load("ec_chain.crt", "ec.key", NULL));
    tc.hello = "hello\r\n";
    tc.release_cfg_after_start = true; /* the conn holds its own reference */
    tc.bye_after_hello = true;
    tc_spawn_sh(&tc,
                "exec openssl s_client -connect 127.0.0.1:%d -servername localhost -quiet "
                "-nocommands -CAfile ca.crt -verify_return_error -verify_hostname localhost",
                "", "ec.out", "ec.err");
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(sc->ok, "handshake: %s", sc->error);
    CHECK(strstr(sc->cipher, "ECDHE-ECDSA") != NULL, "cipher %s", sc->cipher);
    CHECK(file_contains(path("ec.out"), "hello\r\n"), "client did not get the greeting");
    CHECK(!file_contains(path("ec.err"), "verify error"), "client could not verify the chain");
    CHECK(tc.cfg == NULL, "config not released");
    tc_done(&tc);
    case_end();
}

static void test_starttls_lazy(void)
{
    struct tcase tc;
    case_begin("STARTTLS (s_client -starttls smtp), %u bytes, owner consuming %d at a time",
               LAZY_ECHO, LAZY_BITE);
    tc_init(&tc, M_STARTTLS, load("rsa.crt", "rsa.key", NULL));
    tc.lazy = true;
    tc.close_after = LAZY_ECHO;
    tc_spawn_sh(&tc,
                "exec openssl s_client -connect 127.0.0.1:%d -servername localhost -quiet "
                "-nocommands -starttls smtp",
                "lazy.in", "lazy.out", "lazy.err");
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(sc->ok, "handshake: %s", sc->error);
    CHECK(!sc->input_during_hs, "on_input during the handshake");
    CHECK(sc->echoed == LAZY_ECHO, "echoed %zu (input left inside mbedTLS?)", sc->echoed);
    size_t in_len, out_len;
    char *in = slurp(path("lazy.in"), &in_len), *out = slurp(path("lazy.out"), &out_len);
    CHECK(in && out && out_len == in_len + 7 && !memcmp(out, "early\r\n", 7) &&
              !memcmp(out + 7, in, in_len),
          "client got %zu bytes for %zu sent", out_len, in_len);
    free(in);
    free(out);
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

static void test_starttls_injection(void)
{
    struct tcase tc;
    case_begin("STARTTLS: plaintext pipelined after STARTTLS is discarded");
    tc_init(&tc, M_STARTTLS, load("rsa.crt", "rsa.key", NULL));
    tc.close_after = 6;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "exec %s injection.py %%d", python);
    tc_spawn_sh(&tc, cmd, "", "inj.out", "inj.err");
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(sc->injected, "the injected line was not in the buffer at tls_start (test precondition)");
    CHECK(sc->ok, "handshake: %s", sc->error);
    CHECK(tc.nchildren == 1 && tc.exited[0] && child_status(&tc, 0) == 0, "client status %d: %s",
          child_status(&tc, 0), slurp(path("inj.err"), NULL));
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

static void test_plaintext_before_switch(void)
{
    struct tcase tc;
    case_begin("%u plaintext bytes queued before tls_start leave in clear, later output "
               "encrypted",
               BIG_PLAIN);
    tc_init(&tc, M_BIGPLAIN, load("rsa.crt", "rsa.key", NULL));
    tc.close_after = 6;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "exec %s bigplain.py %%d %u", python, BIG_PLAIN);
    tc_spawn_sh(&tc, cmd, "", "bp.out", "bp.err");
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(sc->plain_left_after_start > 0,
          "the socket took all the plaintext at once: the deferred path was not tested");
    CHECK(sc->ok, "handshake: %s", sc->error);
    CHECK(tc.exited[0] && child_status(&tc, 0) == 0, "client status %d: %s", child_status(&tc, 0),
          slurp(path("bp.err"), NULL));
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

static void test_trickle(void)
{
    struct tcase tc;
    case_begin("%u bytes written %d at a time into a full socket arrive byte-exact, then "
               "close_notify",
               TRICKLE_TOTAL, TRICKLE_PIECE);
    tc_init(&tc, M_IMPLICIT, load("ec_chain.crt", "ec.key", NULL));
    tc.trickle = true;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "exec %s trickle.py %%d %u", python, TRICKLE_TOTAL);
    tc_spawn_sh(&tc, cmd, "", "tr.out", "tr.err");
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(sc->ok, "handshake: %s", sc->error);
    CHECK(tc.exited[0] && child_status(&tc, 0) == 0, "client status %d: %s", child_status(&tc, 0),
          slurp(path("tr.err"), NULL));
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

/* A handshake the server must refuse; the client's stderr must show why. */
static void refused(const char *name, const char *client_args, const char *client_says)
{
    struct tcase tc;
    char cmd[600];
    case_begin("refused: %s", name);
    tc_init(&tc, M_IMPLICIT, load("rsa.crt", "rsa.key", NULL));
    snprintf(cmd, sizeof cmd, "%s %s", s_client, client_args);
    tc_spawn_sh(&tc, cmd, "", "ref.out", "ref.err");
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(tc.nconns == 1 && sc->done_calls == 1 && !sc->ok, "conns %d, done %d, ok %d", tc.nconns,
          sc->done_calls, sc->ok);
    CHECK(sc->closed, "conn not closed");
    CHECK(sc->error[0], "no tls_error");
    CHECK(tc.exited[0] && child_status(&tc, 0) != 0, "s_client succeeded");
    CHECK(file_contains(path("ref.err"), client_says), "s_client did not report \"%s\"",
          client_says);
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

/* A client that breaks the handshake costs its own connection only. */
static void broken_client(const char *name, int (*fn)(int), double timeout, const char *why)
{
    struct tcase tc;
    case_begin("fails cleanly: %s", name);
    tc_init(&tc, M_IMPLICIT, load("rsa.crt", "rsa.key", NULL));
    tc.hs_timeout = timeout;
    tc_spawn_fn(&tc, fn);
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(tc.nconns == 1 && sc->done_calls == 1 && !sc->ok, "conns %d, done %d, ok %d", tc.nconns,
          sc->done_calls, sc->ok);
    CHECK(sc->closed, "conn not closed");
    CHECK(!sc->input_during_hs, "on_input during the handshake");
    CHECK(tc.exited[0] && child_status(&tc, 0) == 0,
          "client status %d (2: could not connect, 1: no EOF from the server)",
          child_status(&tc, 0));
    if (why) CHECK(strstr(sc->error, why) != NULL, "tls_error \"%s\"", sc->error);
    /* A stalled handshake sleeps in the loop: a handful of iterations, not a
     * spin (which would be many thousands in the timeout). */
    CHECK(sc->iter_done - sc->iter_accept < 50, "%u loop iterations during the handshake",
          sc->iter_done - sc->iter_accept);
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

static void test_starttls_then_eof(void)
{
    struct tcase tc;
    case_begin("fails cleanly: STARTTLS, then the client closes");
    tc_init(&tc, M_STARTTLS, load("rsa.crt", "rsa.key", NULL));
    tc_spawn_fn(&tc, client_starttls_then_eof);
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(sc->started && sc->done_calls == 1 && !sc->ok, "started %d, done %d, ok %d", sc->started,
          sc->done_calls, sc->ok);
    CHECK(sc->closed, "conn not closed");
    CHECK(tc.exited[0] && child_status(&tc, 0) == 0, "client status %d", child_status(&tc, 0));
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

static void test_stall_beside_good(void)
{
    struct tcase tc;
    case_begin("a stalled handshake does not hold up another client");
    tc_init(&tc, M_IMPLICIT, load("rsa.crt", "rsa.key", NULL));
    tc.hs_timeout = 3.0;
    tc.hello = "hello\r\n";
    tc.expect_conns = 2;
    tc.bye_after_hello = true;
    tc_spawn_fn(&tc, client_silent);
    usleep(100 * 1000); /* order of arrival only; not a pass condition */
    tc_spawn_sh(&tc, s_client, "", "both.out", "both.err");
    tc_run(&tc);
    int ok = 0, failed = 0, ok_order = 0, fail_order = 0;
    for (int i = 0; i < tc.nconns; i++) {
        if (tc.conns[i].ok)
            ok++, ok_order = tc.conns[i].done_order;
        else if (tc.conns[i].done_calls)
            failed++, fail_order = tc.conns[i].done_order;
    }
    CHECK(tc.nconns == 2 && ok == 1 && failed == 1, "conns %d, ok %d, failed %d", tc.nconns, ok,
          failed);
    CHECK(ok_order < fail_order, "the good handshake finished after the stalled one failed");
    CHECK(file_contains(path("both.out"), "hello\r\n"), "good client did not get the greeting");
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

static void client_cert(const char *name, const char *args, bool expect_peer)
{
    struct tcase tc;
    char cmd[600];
    case_begin("client certificate: %s", name);
    tc_init(&tc, M_IMPLICIT, load("rsa.crt", "rsa.key", "ca.crt"));
    tc.bye_after_hello = true;
    snprintf(cmd, sizeof cmd, "%s %s", s_client, args);
    tc_spawn_sh(&tc, cmd, "", "cc.out", "cc.err");
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(sc->ok, "handshake: %s", sc->error);
    if (expect_peer) {
        char *want = slurp(path("client.crt"), NULL);
        CHECK(sc->peer && want && !strcmp(sc->peer, want), "peer certificate:\n%s\nwanted:\n%s",
              sc->peer ? sc->peer : "(none)", want ? want : "(none)");
        free(want);
    } else {
        CHECK(!sc->peer, "an unverified certificate was reported:\n%s", sc->peer);
    }
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

static void test_close_during_handshake(void)
{
    struct tcase tc;
    case_begin("conn_close during the handshake: plaintext leaves, no on_done");
    tc_init(&tc, M_CANCEL, load("rsa.crt", "rsa.key", NULL));
    tc_spawn_fn(&tc, client_expect_bye);
    tc_run(&tc);
    struct sconn *sc = &tc.conns[0];
    CHECK(sc->started, "tls_start refused");
    CHECK(sc->done_calls == 0, "on_done called %d times", sc->done_calls);
    CHECK(sc->closed, "conn not closed");
    CHECK(tc.exited[0] && child_status(&tc, 0) == 0, "client status %d (3: wrong bytes before EOF)",
          child_status(&tc, 0));
    tls_config_release(tc.cfg);
    tc_done(&tc);
    case_end();
}

static void cleanup(void)
{
    if (dir[0] && !getenv("TEST_TLS_KEEP")) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd)) {
        }
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof dir, "%s/test_tls.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    atexit(cleanup);
    if (access(python, X_OK) != 0) python = "python3";

    case_begin("throw-away certificates made with openssl");
    CHECK(make_certs(), "see %s/setup.log", dir);
    case_end();
    if (check_state.failed) return check_report();

    test_config_errors();
    test_implicit_big_echo();
    test_implicit_ec_chain();
    test_starttls_lazy();
    test_starttls_injection();
    test_plaintext_before_switch();
    test_trickle();
    /* OpenSSL needs SECLEVEL 0 to offer TLS 1.1 at all: then the refusal is
     * the server's. */
    refused("TLS 1.1", "-tls1_1 -cipher DEFAULT@SECLEVEL=0", "protocol version");
    refused("TLS 1.2 without ECDHE+AEAD (AES128-SHA)", "-tls1_2 -cipher AES128-SHA",
            "handshake failure");
    broken_client("plaintext instead of a ClientHello", client_garbage_text, 10.0, NULL);
    broken_client("a record of junk", client_garbage_record, 10.0, NULL);
    broken_client("a client that sends nothing (timeout)", client_silent, 1.0, "did not complete");
    broken_client("half a record, then nothing (timeout)", client_partial_record, 1.0,
                  "did not complete");
    test_starttls_then_eof();
    test_stall_beside_good();
    client_cert("signed by the client CA is reported", "-cert client.crt -key client.key", true);
    client_cert("self-signed is accepted but not reported", "-cert rogue.crt -key rogue.key",
                false);
    client_cert("none", "", false);
    test_close_during_handshake();
    case_begin("on_done never ran inside tls_start (all cases)");
    CHECK(!done_inside_tls_start, "it did");
    case_end();
    return check_report();
}
