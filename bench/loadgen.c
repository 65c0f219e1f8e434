/* loadgen.c — SMTP load generator for bench/run: one process, one epoll
 * loop, one state machine per connection, drives full sessions (greeting,
 * EHLO, optional STARTTLS, optional AUTH PLAIN/LOGIN, K messages, QUIT)
 * against a server on 127.0.0.1 and reports throughput and latency.
 *
 * It owns its connections and nothing else. It must not connect anywhere but
 * 127.0.0.1, must not count a session in which any reply was unexpected, and
 * every loop it runs is bounded in count or time (-n / -t / --max-time).
 *
 * A session is a list of "turns": the client writes one group of bytes (one
 * command, or with PIPELINING a whole group such as MAIL+RCPT+DATA, or a
 * message body followed by the next group) and then waits for the replies
 * it queued expectations for. When the queue drains, session_step() writes
 * the next turn. So PIPELINING changes only how turns are grouped.
 *
 * It is a measuring tool, not a test: its exit status says whether it could
 * run, and "errors N" says whether the server misbehaved. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

/* RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including CRLF; an
 * EHLO reply has several, so the read buffer holds a few of them. */
#define SMTP_REPLY_LINE_MAX 512
#define LOADGEN_RBUF 4096
/* Replies a turn may wait for: with PIPELINING, end of data + MAIL + RCPT +
 * DATA, or end of data + QUIT. */
#define LOADGEN_EXPECT_MAX 8
#define LOADGEN_ERRORS_SHOWN 8
/* Idle mode: connections allowed between connect() and the end of EHLO at
 * once, so that a burst of 5,000 connects does not overflow the listen
 * backlog (somaxconn) and turn into one-second SYN retries. */
#define LOADGEN_IDLE_RAMP_DEFAULT 64
#define LOADGEN_MAX_TIME_DEFAULT 600.0
#define LOADGEN_SESSION_TIMEOUT_DEFAULT 30.0
/* After -t: how long sessions in flight may take to finish. */
#define LOADGEN_GRACE_SECONDS 10.0

enum auth_mode { AUTH_NONE, AUTH_PLAIN, AUTH_LOGIN };

enum phase {
    PH_FREE,
    PH_CONNECT,
    PH_GREETING,
    PH_EHLO,
    PH_STARTTLS,
    PH_HANDSHAKE,
    PH_EHLO_TLS,
    PH_AUTH_PLAIN,
    PH_AUTH_LOGIN,      /* AUTH LOGIN sent, waiting for the user name prompt */
    PH_AUTH_LOGIN_USER, /* user name sent */
    PH_AUTH_LOGIN_PASS, /* password sent */
    PH_MAIL,
    PH_RCPT,
    PH_DATA,
    PH_BODY,
    PH_QUIT,
    PH_IDLE,
};

static const char *const phase_names[] = {
    "free",
    "connect",
    "greeting",
    "EHLO",
    "STARTTLS",
    "TLS handshake",
    "EHLO after STARTTLS",
    "AUTH PLAIN",
    "AUTH LOGIN",
    "AUTH LOGIN user",
    "AUTH LOGIN password",
    "MAIL",
    "RCPT",
    "DATA",
    "end of data",
    "QUIT",
    "idle",
};

struct user {
    const char *login, *password;
    char *plain_ir;           /* base64("\0login\0password") */
    char *login_b64, *pw_b64; /* for AUTH LOGIN */
};

static struct {
    int port;
    int concurrency;
    long sessions; /* -n; 0 = by time */
    double duration;
    double max_time;
    double session_timeout;
    int messages;
    long size;
    enum auth_mode auth;
    struct user *users;
    int n_users;
    bool pipelining;
    bool starttls;
    bool resume; /* offer the last session (ticket or ID) on the next connection */
    const char *tls_groups; /* OpenSSL groups list, e.g. "P-256" */
    long idle;
    int idle_ramp;
    const char *mail_from, *rcpt_to, *ehlo_name;
    bool quiet;
} opt = {
    .concurrency = 50,
    .max_time = LOADGEN_MAX_TIME_DEFAULT,
    .session_timeout = LOADGEN_SESSION_TIMEOUT_DEFAULT,
    .messages = 1,
    .size = 1024,
    .idle_ramp = LOADGEN_IDLE_RAMP_DEFAULT,
    .mail_from = "sender@example.net",
    .rcpt_to = "rcpt@example.com",
    .ehlo_name = "loadgen.test",
};

struct expect {
    short code;
    enum phase what; /* for the error message */
};

struct conn {
    int fd;
    uint32_t gen; /* bumped on every close: stale epoll events are ignored */
    uint32_t idx;
    enum phase phase;
    bool want_out; /* EPOLLOUT armed */
    bool tls_on;
    bool ext_pipelining, ext_starttls, ext_auth_plain, ext_auth_login;
    int msg;  /* messages sent in this session */
    int user; /* index into opt.users */
    struct expect exp[LOADGEN_EXPECT_MAX];
    int n_exp, i_exp;
    char *out; /* the turn being written */
    size_t out_len, out_off, out_cap;
    size_t rlen;
    double t_start;
    char rbuf[LOADGEN_RBUF];
#ifdef LOADGEN_TLS
    SSL *ssl;
#endif
};

static struct {
    int ep;
    struct conn *conns;
    int n_conns;
    int *free_list;
    int n_free;
    double t0, t_stop_starting, t_hard, t_last_done;
    bool stopping; /* no new sessions */
    long started, ok, errors, aborted;
    long idle_up;
    bool idle_announced;
    uint32_t *lat_us;
    size_t n_lat, cap_lat;
    char *body; /* dot-stuffed message with the final ".\r\n" */
    size_t body_len;
    struct {
        char text[160];
        long count;
    } err_seen[LOADGEN_ERRORS_SHOWN];
    int n_err_seen;
    long err_other;
} g;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) die("out of memory");
    return p;
}

static char *b64(const void *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *s = data;
    char *out = xmalloc(4 * ((len + 2) / 3) + 1), *o = out;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        *o++ = tab[s[i] >> 2];
        *o++ = tab[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
        *o++ = tab[((s[i + 1] & 15) << 2) | (s[i + 2] >> 6)];
        *o++ = tab[s[i + 2] & 63];
    }
    if (i < len) {
        *o++ = tab[s[i] >> 2];
        if (i + 1 < len) {
            *o++ = tab[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
            *o++ = tab[(s[i + 1] & 15) << 2];
        } else {
            *o++ = tab[(s[i] & 3) << 4];
            *o++ = '=';
        }
        *o++ = '=';
    }
    *o = 0;
    return out;
}

/* ---- the message ------------------------------------------------------- */

/* Builds a message of exactly `size` content bytes (CRLF line ends, as the
 * server sees it after removing dot transparency): a dozen header lines and
 * body lines of up to 72 characters, every fourth starting with '.', one
 * line that is a lone "." and one "..". On the wire those lines get an extra
 * '.' (RFC 5321 4.5.2), and ".\r\n" ends the data. */
static void message_build(long size)
{
    static const char *const headers[] = {
        "Return-Path: <sender@example.net>",
        "Received: from loadgen.test (localhost [127.0.0.1]) by mx.test; "
        "Thu, 1 Jan 2026 00:00:00 +0000",
        "From: Bench Sender <sender@example.net>",
        "To: Bench Recipient <rcpt@example.com>",
        "Subject: luasmtpd benchmark message",
        "Date: Thu, 1 Jan 2026 00:00:00 +0000",
        "Message-ID: <bench.0001@loadgen.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "X-Mailer: luasmtpd bench/loadgen",
        "",
    };
    static const char filler[] = "The quick brown fox jumps over the lazy dog while the "
                                 "benchmark measures the server under load. ";
    size_t cap = 2 * size + 64;
    char *content = xmalloc(cap);
    size_t len = 0;
    for (size_t i = 0; i < sizeof headers / sizeof *headers; i++)
        len += (size_t)snprintf(content + len, cap - len, "%s\r\n", headers[i]);
    if ((long)len + 2 > size)
        die("-s %ld is too small: the headers alone take %zu bytes", size, len);
    for (int line = 0; (long)len < size; line++) {
        long room = size - (long)len - 2; /* characters left on this line */
        long want = 72;
        if (room - want < 3) want = room; /* the last line takes the rest */
        char *p = content + len;
        long n = 0;
        if (line == 7) {
            p[n++] = '.';
        } else if (line == 13) {
            p[n++] = '.';
            p[n++] = '.';
        } else {
            if (line % 4 == 1) p[n++] = '.';
            for (size_t k = (size_t)line * 7; n < want; k++)
                p[n++] = filler[k % (sizeof filler - 1)];
        }
        if (n > want) n = want; /* a tiny last line */
        len += (size_t)n;
        content[len++] = '\r';
        content[len++] = '\n';
    }
    /* dot-stuff */
    g.body = xmalloc(cap + size / 2 + 8);
    size_t o = 0;
    bool bol = true;
    for (size_t i = 0; i < len; i++) {
        if (bol && content[i] == '.') g.body[o++] = '.';
        g.body[o++] = content[i];
        bol = content[i] == '\n';
    }
    memcpy(g.body + o, ".\r\n", 3);
    g.body_len = o + 3;
    free(content);
}

/* ---- errors and results ------------------------------------------------ */

static void error_note(const char *text)
{
    for (int i = 0; i < g.n_err_seen; i++)
        if (!strcmp(g.err_seen[i].text, text)) {
            g.err_seen[i].count++;
            return;
        }
    if (g.n_err_seen < LOADGEN_ERRORS_SHOWN) {
        snprintf(g.err_seen[g.n_err_seen].text, sizeof g.err_seen[0].text, "%s", text);
        g.err_seen[g.n_err_seen++].count = 1;
    } else {
        g.err_other++;
    }
}

static void lat_add(double seconds)
{
    if (g.n_lat == g.cap_lat) {
        g.cap_lat = g.cap_lat ? 2 * g.cap_lat : 65536;
        g.lat_us = realloc(g.lat_us, g.cap_lat * sizeof *g.lat_us);
        if (!g.lat_us) die("out of memory");
    }
    double us = seconds * 1e6;
    g.lat_us[g.n_lat++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile_ms(double p)
{
    if (!g.n_lat) return 0;
    size_t i = (size_t)(p * (double)(g.n_lat - 1) + 0.5);
    return g.lat_us[i] / 1000.0;
}

/* ---- connections ------------------------------------------------------- */

#ifdef LOADGEN_TLS
static void tls_keep_session(SSL *ssl);
#endif

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->gen++;
    c->phase = PH_FREE;
    c->want_out = false;
    c->tls_on = false;
#ifdef LOADGEN_TLS
    /* Kept at the end, not after the handshake: a TLS 1.3 server sends its
     * ticket only after the handshake. */
    if (c->ssl && opt.resume) tls_keep_session(c->ssl);
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = NULL;
#endif
    g.free_list[g.n_free++] = (int)c->idx;
}

static void session_fail(struct conn *c, const char *fmt, ...)
{
    char text[160];
    int n = snprintf(text, sizeof text, "%s: ", phase_names[c->phase]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof text - (size_t)n, fmt, ap);
    va_end(ap);
    if (c->phase == PH_IDLE && g.idle_up) g.idle_up--;
    g.errors++;
    error_note(text);
    conn_close(c);
}

static void session_done(struct conn *c)
{
    double t = now();
    g.ok++;
    g.t_last_done = t;
    lat_add(t - c->t_start);
    conn_close(c);
}

static void epoll_arm(struct conn *c, bool want_out)
{
    if (c->want_out == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                             .data.u64 = ((uint64_t)c->gen << 32) | c->idx};
    epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void out_add(struct conn *c, const char *s, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        c->out_cap = 2 * (c->out_len + n);
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) die("out of memory");
    }
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
}

static void out_line(struct conn *c, const char *fmt, ...)
{
    char line[SMTP_REPLY_LINE_MAX + 512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || n > (int)sizeof line - 3) n = (int)sizeof line - 3;
    line[n++] = '\r';
    line[n++] = '\n';
    out_add(c, line, (size_t)n);
}

static void expect(struct conn *c, short code, enum phase what)
{
    c->exp[c->n_exp].code = code;
    c->exp[c->n_exp++].what = what;
}

/* ---- TLS (STARTTLS) ---------------------------------------------------- */

#ifdef LOADGEN_TLS
/* The client side of TLS is OpenSSL: it is what most SMTP clients use, and
 * its handshake is cheap enough that the load generator does not become the
 * limit in the STARTTLS scenario. The server side is whatever the server
 * uses; the protocol version and cipher are whatever the two negotiate
 * (printed once per run). */
static SSL_CTX *tls_ctx;
static bool tls_reported;
static SSL_SESSION *tls_session; /* --resume: offered to the next connection */
static long tls_resumed_count, tls_full_count;

static void tls_keep_session(SSL *ssl)
{
    /* A copy: SSL_free without a close_notify marks the connection's own
     * session object not resumable. */
    SSL_SESSION *s = SSL_get_session(ssl);
    if (!s || !SSL_SESSION_is_resumable(s)) return;
    SSL_SESSION *copy = SSL_SESSION_dup(s);
    if (!copy) return;
    if (tls_session) SSL_SESSION_free(tls_session);
    tls_session = copy;
}

static void tls_init(void)
{
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) die("SSL_CTX_new failed");
    /* A benchmark talks to its own self-signed certificate on 127.0.0.1. */
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
    /* Without --resume every session is a full handshake, as between two
     * MTAs that meet; with it, each offers the session the last one kept. */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    if (!opt.resume) SSL_CTX_set_options(tls_ctx, SSL_OP_NO_TICKET);
    if (opt.tls_groups && !SSL_CTX_set1_groups_list(tls_ctx, opt.tls_groups))
        die("--tls-groups: OpenSSL does not take '%s'", opt.tls_groups);
}

/* After an SSL_* call returned rc <= 0: true if it only has to wait (and
 * EPOLLOUT is armed if it waits for writability). */
static bool tls_would_block(struct conn *c, int rc)
{
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        epoll_arm(c, e == SSL_ERROR_WANT_WRITE || c->out_off < c->out_len);
        return true;
    }
    return false;
}

static void tls_fail(struct conn *c, const char *what, int rc)
{
    int e = SSL_get_error(c->ssl, rc);
    unsigned long code = ERR_get_error();
    char buf[120];
    if (code)
        ERR_error_string_n(code, buf, sizeof buf);
    else if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && rc == 0))
        snprintf(buf, sizeof buf, "connection closed by the server");
    else
        snprintf(buf, sizeof buf, "SSL error %d (%s)", e, strerror(errno));
    ERR_clear_error();
    session_fail(c, "%s: %s", what, buf);
}
#endif

/* Writes what is left of the current turn. Returns false if the session
 * ended (failed). */
static bool conn_flush(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n;
#ifdef LOADGEN_TLS
        if (c->tls_on) {
            int r = SSL_write(c->ssl, c->out + c->out_off, (int)(c->out_len - c->out_off));
            if (r <= 0) {
                if (tls_would_block(c, r)) return true;
                tls_fail(c, "TLS write", r);
                return false;
            }
            n = r;
        } else
#endif
        {
            n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    epoll_arm(c, true);
                    return true;
                }
                session_fail(c, "write: %s", strerror(errno));
                return false;
            }
        }
        c->out_off += (size_t)n;
    }
    c->out_len = c->out_off = 0;
    epoll_arm(c, false);
    return true;
}

/* Starts a turn: the caller has queued bytes with out_* and expectations
 * with expect(). */
static bool turn_send(struct conn *c, enum phase next)
{
    c->phase = next;
    c->i_exp = 0;
    return conn_flush(c);
}

static void turn_begin(struct conn *c)
{
    c->n_exp = c->i_exp = 0;
    c->out_len = c->out_off = 0;
}

/* The MAIL/RCPT/DATA of the next message, or QUIT, appended to the turn. */
static void queue_next_transaction(struct conn *c)
{
    if (c->msg < opt.messages) {
        out_line(c, "MAIL FROM:<%s>", opt.mail_from);
        expect(c, 250, PH_MAIL);
        if (!c->ext_pipelining || !opt.pipelining) return;
        out_line(c, "RCPT TO:<%s>", opt.rcpt_to);
        expect(c, 250, PH_RCPT);
        out_line(c, "DATA");
        expect(c, 354, PH_DATA);
    } else {
        out_line(c, "QUIT");
        expect(c, 221, PH_QUIT);
    }
}

static bool start_mail_or_quit(struct conn *c)
{
    turn_begin(c);
    queue_next_transaction(c);
    return turn_send(c, c->exp[0].what);
}

static bool after_hello(struct conn *c)
{
    turn_begin(c);
    const struct user *u = &opt.users[c->user];
    if (opt.auth == AUTH_PLAIN) {
        if (!c->ext_auth_plain) {
            session_fail(c, "server does not offer AUTH PLAIN");
            return false;
        }
        out_line(c, "AUTH PLAIN %s", u->plain_ir);
        expect(c, 235, PH_AUTH_PLAIN);
        return turn_send(c, PH_AUTH_PLAIN);
    }
    if (opt.auth == AUTH_LOGIN) {
        if (!c->ext_auth_login) {
            session_fail(c, "server does not offer AUTH LOGIN");
            return false;
        }
        out_line(c, "AUTH LOGIN");
        expect(c, 334, PH_AUTH_LOGIN);
        return turn_send(c, PH_AUTH_LOGIN);
    }
    return start_mail_or_quit(c);
}

static bool send_ehlo(struct conn *c, enum phase ph)
{
    c->ext_pipelining = c->ext_starttls = c->ext_auth_plain = c->ext_auth_login = false;
    turn_begin(c);
    out_line(c, "EHLO %s", opt.ehlo_name);
    expect(c, 250, ph);
    return turn_send(c, ph);
}

#ifdef LOADGEN_TLS
static bool tls_handshake(struct conn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r <= 0) {
        if (tls_would_block(c, r)) return true;
        tls_fail(c, "handshake", r);
        return false;
    }
    if (!tls_reported && !opt.quiet) {
        tls_reported = true;
        printf("TLS: %s %s\n", SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
    }
    if (SSL_session_reused(c->ssl)) tls_resumed_count++;
    else tls_full_count++;
    c->tls_on = true;
    epoll_arm(c, false);
    return send_ehlo(c, PH_EHLO_TLS);
}

static bool tls_start(struct conn *c)
{
    if (c->rlen) {
        session_fail(c, "server sent data after 220 to STARTTLS");
        return false;
    }
    c->ssl = SSL_new(tls_ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) die("SSL_new failed");
    SSL_set_connect_state(c->ssl);
    if (opt.resume && tls_session) SSL_set_session(c->ssl, tls_session);
    c->phase = PH_HANDSHAKE;
    return tls_handshake(c);
}
#endif

/* All replies of the turn arrived as expected: write the next turn. Returns
 * false if the session ended (completed or failed). */
static bool session_step(struct conn *c)
{
    const struct user *u = &opt.users[c->user];
    switch (c->phase) {
    case PH_GREETING:
        return send_ehlo(c, PH_EHLO);
    case PH_EHLO:
        if (opt.starttls) {
            if (!c->ext_starttls) {
                session_fail(c, "server does not offer STARTTLS");
                return false;
            }
            turn_begin(c);
            out_line(c, "STARTTLS");
            expect(c, 220, PH_STARTTLS);
            return turn_send(c, PH_STARTTLS);
        }
        if (opt.idle) {
            c->phase = PH_IDLE;
            g.idle_up++;
            return true;
        }
        return after_hello(c);
    case PH_STARTTLS:
#ifdef LOADGEN_TLS
        return tls_start(c);
#else
        session_fail(c, "built without TLS");
        return false;
#endif
    case PH_EHLO_TLS:
        if (opt.idle) {
            c->phase = PH_IDLE;
            g.idle_up++;
            return true;
        }
        return after_hello(c);
    case PH_AUTH_PLAIN:
        return start_mail_or_quit(c);
    case PH_AUTH_LOGIN:
        turn_begin(c);
        out_line(c, "%s", u->login_b64);
        expect(c, 334, PH_AUTH_LOGIN_USER);
        return turn_send(c, PH_AUTH_LOGIN_USER);
    case PH_AUTH_LOGIN_USER:
        turn_begin(c);
        out_line(c, "%s", u->pw_b64);
        expect(c, 235, PH_AUTH_LOGIN_PASS);
        return turn_send(c, PH_AUTH_LOGIN_PASS);
    case PH_AUTH_LOGIN_PASS:
        return start_mail_or_quit(c);
    case PH_MAIL: /* not pipelined */
        turn_begin(c);
        out_line(c, "RCPT TO:<%s>", opt.rcpt_to);
        expect(c, 250, PH_RCPT);
        return turn_send(c, PH_RCPT);
    case PH_RCPT:
        turn_begin(c);
        out_line(c, "DATA");
        expect(c, 354, PH_DATA);
        return turn_send(c, PH_DATA);
    case PH_DATA: /* 354: the body, and with PIPELINING the next group */
        turn_begin(c);
        out_add(c, g.body, g.body_len);
        expect(c, 250, PH_BODY);
        c->msg++;
        if (c->ext_pipelining && opt.pipelining) queue_next_transaction(c);
        return turn_send(c, PH_BODY);
    case PH_BODY: /* not pipelined */
        return start_mail_or_quit(c);
    case PH_QUIT:
        session_done(c);
        return false;
    default:
        session_fail(c, "internal error: no step");
        return false;
    }
}

static void ehlo_keyword(struct conn *c, const char *kw, size_t len)
{
    /* kw is the text after "250-" / "250 ", without CRLF */
    if (len >= 10 && !strncasecmp(kw, "PIPELINING", 10)) c->ext_pipelining = true;
    if (len >= 8 && !strncasecmp(kw, "STARTTLS", 8)) c->ext_starttls = true;
    if (len > 5 && !strncasecmp(kw, "AUTH", 4) && (kw[4] == ' ' || kw[4] == '=')) {
        for (size_t i = 5; i < len;) {
            size_t j = i;
            while (j < len && kw[j] != ' ')
                j++;
            if (j - i == 5 && !strncasecmp(kw + i, "PLAIN", 5)) c->ext_auth_plain = true;
            if (j - i == 5 && !strncasecmp(kw + i, "LOGIN", 5)) c->ext_auth_login = true;
            i = j + 1;
        }
    }
}

/* Consumes the complete reply lines in rbuf. Returns false if the session
 * ended. */
static bool replies_process(struct conn *c)
{
    size_t pos = 0;
    for (;;) {
        char *line = c->rbuf + pos;
        char *nl = memchr(line, '\n', c->rlen - pos);
        if (!nl) break;
        size_t len = (size_t)(nl - line);
        if (len && line[len - 1] == '\r') len--;
        pos = (size_t)(nl - c->rbuf) + 1;
        if (len < 3 || line[0] < '1' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
            line[2] < '0' || line[2] > '9' || (len > 3 && line[3] != ' ' && line[3] != '-')) {
            session_fail(c, "malformed reply: %.*s", (int)(len > 80 ? 80 : len), line);
            return false;
        }
        if (c->phase == PH_EHLO || c->phase == PH_EHLO_TLS)
            if (len > 4) ehlo_keyword(c, line + 4, len - 4);
        if (len > 3 && line[3] == '-') continue;
        short code = (short)((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
        if (c->i_exp >= c->n_exp) {
            session_fail(c, "unsolicited reply: %.*s", (int)(len > 80 ? 80 : len), line);
            return false;
        }
        const struct expect *e = &c->exp[c->i_exp++];
        c->phase = e->what; /* so the last reply of a turn picks the next step */
        if (code != e->code) {
            session_fail(c, "expected %d, got: %.*s", e->code, (int)(len > 80 ? 80 : len), line);
            return false;
        }
        if (c->i_exp == c->n_exp) {
            /* the rest of rbuf (normally nothing) belongs to the next turn */
            memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
            c->rlen -= pos;
            pos = 0;
            if (!session_step(c)) return false;
            if (c->phase == PH_HANDSHAKE) return true;
        }
    }
    if (pos) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
    }
    if (c->rlen == sizeof c->rbuf) {
        session_fail(c, "reply line longer than %zu bytes", sizeof c->rbuf);
        return false;
    }
    return true;
}

static void conn_readable(struct conn *c)
{
    for (;;) {
        ssize_t n;
        size_t room = sizeof c->rbuf - c->rlen;
#ifdef LOADGEN_TLS
        if (c->tls_on) {
            int r = SSL_read(c->ssl, c->rbuf + c->rlen, (int)room);
            if (r <= 0) {
                if (tls_would_block(c, r)) return;
                tls_fail(c, "TLS read", r);
                return;
            }
            n = r;
        } else
#endif
        {
            n = recv(c->fd, c->rbuf + c->rlen, room, 0);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
            if (n < 0) {
                session_fail(c, "read: %s", strerror(errno));
                return;
            }
            if (n == 0) {
                session_fail(c, "connection closed by the server");
                return;
            }
        }
        c->rlen += (size_t)n;
        if (!replies_process(c)) return;
        if (c->phase == PH_HANDSHAKE) return;
        /* plain: one read per readiness event; epoll is level-triggered */
        if (!c->tls_on) return;
    }
}

static void conn_event(struct conn *c, uint32_t events)
{
    if (c->phase == PH_CONNECT) {
        /* Only EPOLLIN is asked for: the greeting proves the connect, and a
         * failed connect reports EPOLLERR/EPOLLHUP anyway. Saves two system
         * calls per session, which matters when the loadgen is the limit. */
        if (events & (EPOLLERR | EPOLLHUP)) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                session_fail(c, "%s", strerror(err));
                return;
            }
        }
        c->phase = PH_GREETING;
    }
#ifdef LOADGEN_TLS
    if (c->phase == PH_HANDSHAKE) {
        tls_handshake(c);
        return;
    }
#endif
    if ((events & EPOLLOUT) && c->out_off < c->out_len) {
        if (!conn_flush(c)) return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_readable(c);
}

static void session_start(struct conn *c)
{
    c->t_start = now();
    g.started++;
    c->msg = 0;
    c->rlen = 0;
    c->n_exp = c->i_exp = 0;
    c->out_len = c->out_off = 0;
    c->user = (int)(g.started % opt.n_users);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->phase = PH_CONNECT;
        session_fail(c, "socket: %s", strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)opt.port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int r = connect(c->fd, (struct sockaddr *)&sa, sizeof sa);
    c->phase = PH_CONNECT;
    if (r < 0 && errno != EINPROGRESS) {
        session_fail(c, "%s", strerror(errno));
        return;
    }
    /* The greeting is awaited either way (see conn_event). */
    c->want_out = false;
    if (r == 0) c->phase = PH_GREETING;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)c->gen << 32) | c->idx};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev)) {
        session_fail(c, "epoll_ctl: %s", strerror(errno));
        return;
    }
    expect(c, 220, PH_GREETING);
}

static bool may_start(double t)
{
    if (g.stopping) return false;
    if (opt.idle) return g.started < opt.idle && g.started - g.idle_up - g.errors < opt.idle_ramp;
    if (opt.sessions) return g.started < opt.sessions;
    return t < g.t_stop_starting;
}

static void check_timeouts(double t)
{
    for (int i = 0; i < g.n_conns; i++) {
        struct conn *c = &g.conns[i];
        if (c->phase == PH_FREE || c->phase == PH_IDLE) continue;
        if (t - c->t_start > opt.session_timeout)
            session_fail(c, "timeout after %.0f s", opt.session_timeout);
    }
}

static long active_sessions(void)
{
    return g.n_conns - g.n_free;
}

/* ---- command line ------------------------------------------------------ */

static void usage(FILE *f)
{
    fputs("Usage: loadgen -p PORT [OPTIONS]\n"
          "Drives SMTP sessions against a server on 127.0.0.1 (and nowhere else).\n\n"
          "  -p, --port PORT         server port on 127.0.0.1\n"
          "      --host 127.0.0.1    the only accepted target\n"
          "  -c, --concurrency N     connections at once (default 50)\n"
          "  -n, --sessions N        run N sessions, then stop\n"
          "  -t, --duration SECONDS  start sessions for this long, then let those in flight\n"
          "                          finish (at most 10 s more); in --idle mode: hold time\n"
          "      --max-time SECONDS  hard limit on the whole run (default 600)\n"
          "  -k, --messages K        messages per session (default 1; 0 = none)\n"
          "  -s, --size BYTES        message size after dot-unstuffing (default 1024)\n"
          "  -a, --auth MECH         none (default), plain (initial response) or login\n"
          "  -u, --user LOGIN:PASS   credentials, repeatable: sessions take turns\n"
          "                          (default alice:s3cret)\n"
          "  -P, --pipelining        group MAIL/RCPT/DATA (and the body with the next group)\n"
          "                          in one write when the server offers PIPELINING\n"
          "  -S, --starttls          STARTTLS after EHLO, then EHLO again (OpenSSL, no\n"
          "                          certificate verification, no session resumption)\n"
          "      --resume            with -S: offer the previous session's ticket or ID\n"
          "      --tls-groups LIST   key exchange groups offered, OpenSSL syntax\n"
          "                          (default OpenSSL's: X25519 first)\n"
          "      --from ADDR, --rcpt ADDR   envelope addresses\n"
          "      --timeout SECONDS   per-session limit (default 30)\n"
          "  -i, --idle N            open N connections, stop after EHLO and hold them;\n"
          "                          prints \"established N\" once all are up; ends on\n"
          "                          SIGTERM/SIGINT or after -t\n"
          "      --ramp N            idle mode: connections being set up at once (default 64)\n"
          "  -q, --quiet             only the RESULT line on stdout\n"
          "  -h, --help\n\n"
          "Last line on stdout: RESULT key=value ... for scripts. Exit status 0 if the run\n"
          "completed (even with errors: see errors=), 2 on bad usage.\n",
          f);
}

static long parse_long(const char *s, const char *what, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < min || v > max)
        die("%s: expected an integer in [%ld, %ld], got '%s'", what, min, max, s);
    return v;
}

static double parse_double(const char *s, const char *what)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || end == s || !(v > 0) || v > 86400) die("%s: expected seconds, got '%s'", what, s);
    return v;
}

static void add_user(const char *spec)
{
    const char *colon = strchr(spec, ':');
    if (!colon) die("--user wants LOGIN:PASSWORD, got '%s'", spec);
    opt.users = realloc(opt.users, (size_t)(opt.n_users + 1) * sizeof *opt.users);
    if (!opt.users) die("out of memory");
    struct user *u = &opt.users[opt.n_users++];
    u->login = strndup(spec, (size_t)(colon - spec));
    u->password = colon + 1;
    size_t ll = strlen(u->login), pl = strlen(u->password);
    char *raw = xmalloc(ll + pl + 2);
    raw[0] = 0;
    memcpy(raw + 1, u->login, ll);
    raw[ll + 1] = 0;
    memcpy(raw + ll + 2, u->password, pl);
    u->plain_ir = b64(raw, ll + pl + 2);
    u->login_b64 = b64(u->login, ll);
    u->pw_b64 = b64(u->password, pl);
    free(raw);
}

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"port", required_argument, 0, 'p'},
        {"host", required_argument, 0, 'H'},
        {"concurrency", required_argument, 0, 'c'},
        {"sessions", required_argument, 0, 'n'},
        {"duration", required_argument, 0, 't'},
        {"max-time", required_argument, 0, 'M'},
        {"messages", required_argument, 0, 'k'},
        {"size", required_argument, 0, 's'},
        {"auth", required_argument, 0, 'a'},
        {"user", required_argument, 0, 'u'},
        {"pipelining", no_argument, 0, 'P'},
        {"starttls", no_argument, 0, 'S'},
        {"tls-groups", required_argument, 0, 'G'},
        {"resume", no_argument, 0, 'Z'},
        {"from", required_argument, 0, 'F'},
        {"rcpt", required_argument, 0, 'R'},
        {"timeout", required_argument, 0, 'T'},
        {"idle", required_argument, 0, 'i'},
        {"ramp", required_argument, 0, 'r'},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "p:c:n:t:k:s:a:u:PSi:qh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'p':
            opt.port = (int)parse_long(optarg, "--port", 1, 65535);
            break;
        case 'H':
            if (strcmp(optarg, "127.0.0.1") && strcmp(optarg, "localhost"))
                die("refusing target '%s': this load generator only connects to 127.0.0.1", optarg);
            break;
        case 'c':
            opt.concurrency = (int)parse_long(optarg, "-c", 1, 100000);
            break;
        case 'n':
            opt.sessions = parse_long(optarg, "-n", 1, 100000000);
            break;
        case 't':
            opt.duration = parse_double(optarg, "-t");
            break;
        case 'M':
            opt.max_time = parse_double(optarg, "--max-time");
            break;
        case 'k':
            opt.messages = (int)parse_long(optarg, "-k", 0, 100000);
            break;
        case 's':
            opt.size = parse_long(optarg, "-s", 1, 64L << 20);
            break;
        case 'a':
            if (!strcasecmp(optarg, "none"))
                opt.auth = AUTH_NONE;
            else if (!strcasecmp(optarg, "plain"))
                opt.auth = AUTH_PLAIN;
            else if (!strcasecmp(optarg, "login"))
                opt.auth = AUTH_LOGIN;
            else
                die("--auth: none, plain or login, got '%s'", optarg);
            break;
        case 'u':
            add_user(optarg);
            break;
        case 'P':
            opt.pipelining = true;
            break;
        case 'S':
#ifndef LOADGEN_TLS
            die("built without OpenSSL: no --starttls");
#endif
            opt.starttls = true;
            break;
        case 'G':
            opt.tls_groups = optarg;
            break;
        case 'Z':
            opt.resume = true;
            break;
        case 'F':
            opt.mail_from = optarg;
            break;
        case 'R':
            opt.rcpt_to = optarg;
            break;
        case 'T':
            opt.session_timeout = parse_double(optarg, "--timeout");
            break;
        case 'i':
            opt.idle = parse_long(optarg, "--idle", 1, 1000000);
            break;
        case 'r':
            opt.idle_ramp = (int)parse_long(optarg, "--ramp", 1, 100000);
            break;
        case 'q':
            opt.quiet = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc) die("unexpected argument '%s' (see -h)", argv[optind]);
    if (!opt.port) die("-p PORT is required (see -h)");
    if (!opt.idle && !opt.sessions && !opt.duration) die("give -n SESSIONS or -t SECONDS");
    if (opt.idle && opt.sessions) die("--idle and -n exclude each other");
    if (opt.duration && opt.duration + LOADGEN_GRACE_SECONDS > opt.max_time)
        opt.max_time = opt.duration + LOADGEN_GRACE_SECONDS;
    if (!opt.n_users) add_user("alice:s3cret");
}

static void raise_fd_limit(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return;
    if ((long)rl.rlim_cur >= need) return;
    rl.rlim_cur = (rlim_t)need > rl.rlim_max ? rl.rlim_max : (rlim_t)need;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((long)rl.rlim_cur < need)
        die("need %ld file descriptors, the hard limit is %ld (ulimit -n)", need,
            (long)rl.rlim_max);
}

/* ---- main -------------------------------------------------------------- */

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    message_build(opt.size);
#ifdef LOADGEN_TLS
    if (opt.starttls) tls_init();
#endif
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    g.n_conns = opt.idle ? (int)opt.idle : opt.concurrency;
    if (opt.sessions && opt.sessions < g.n_conns) g.n_conns = (int)opt.sessions;
    raise_fd_limit(g.n_conns + 16);
    g.conns = calloc((size_t)g.n_conns, sizeof *g.conns);
    g.free_list = xmalloc((size_t)g.n_conns * sizeof *g.free_list);
    if (!g.conns) die("out of memory");
    for (int i = g.n_conns - 1; i >= 0; i--) {
        g.conns[i].fd = -1;
        g.conns[i].idx = (uint32_t)i;
        g.free_list[g.n_free++] = i;
    }
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0) die("epoll_create1: %s", strerror(errno));

    g.t0 = now();
    g.t_last_done = g.t0;
    g.t_stop_starting = g.t0 + (opt.duration ? opt.duration : 1e9);
    g.t_hard = g.t0 + opt.max_time;
    double t_grace_end = 0, t_next_check = g.t0 + 0.1;
    struct epoll_event evs[256];

    for (;;) {
        double t = now();
        while (g.n_free && may_start(t))
            session_start(&g.conns[g.free_list[--g.n_free]]);

        if (opt.idle && !g.idle_announced && g.started == opt.idle &&
            active_sessions() == g.idle_up) {
            g.idle_announced = true;
            printf("established %ld (errors %ld) in %.2f s\n", g.idle_up, g.errors, t - g.t0);
            fflush(stdout);
        }
        if (got_signal) g.stopping = true;
        if (!opt.idle && !opt.sessions && t >= g.t_stop_starting) g.stopping = true;
        if (opt.idle && opt.duration && t >= g.t_stop_starting) g.stopping = true;
        if (opt.idle && g.stopping) break;
        if (!opt.idle && !may_start(t) && active_sessions() == 0) break;
        if (g.stopping && !t_grace_end) t_grace_end = t + LOADGEN_GRACE_SECONDS;
        if (t >= g.t_hard || (t_grace_end && t >= t_grace_end)) break;

        int n = epoll_wait(g.ep, evs, 256, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            uint32_t idx = (uint32_t)evs[i].data.u64;
            uint32_t gen = (uint32_t)(evs[i].data.u64 >> 32);
            struct conn *c = &g.conns[idx];
            if (c->gen != gen || c->phase == PH_FREE) continue;
            if (c->phase == PH_IDLE) {
                /* a held connection should hear nothing: a 421 or a close */
                conn_readable(c);
                if (c->phase == PH_IDLE && c->rlen) session_fail(c, "server spoke while idle");
                continue;
            }
            conn_event(c, evs[i].events);
        }
        t = now();
        if (t >= t_next_check) {
            check_timeouts(t);
            t_next_check = t + 0.1;
        }
    }
    double t_end = now();
    /* Whatever is still open was cut off by the time limit (or is idle). */
    long held = g.idle_up;
    for (int i = 0; i < g.n_conns; i++) {
        struct conn *c = &g.conns[i];
        if (c->phase == PH_FREE) continue;
        if (c->phase != PH_IDLE) g.aborted++;
        conn_close(c);
    }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    /* Throughput is over the time sessions actually ran: up to the last
     * completion (the -t window plus the tail of sessions in flight). */
    double elapsed = (opt.idle ? t_end : g.t_last_done) - g.t0;
    if (elapsed <= 0) elapsed = 1e-9;
    qsort(g.lat_us, g.n_lat, sizeof *g.lat_us, cmp_u32);
    long msgs = g.ok * opt.messages;

    if (!opt.quiet) {
        if (opt.idle) {
            printf("held %ld idle connections for %.2f s\n", held, t_end - g.t0);
        } else {
            printf("%ld sessions ok in %.2f s: %.1f sessions/s, %.1f messages/s\n", g.ok, elapsed,
                   g.ok / elapsed, msgs / elapsed);
            printf("session latency ms: p50 %.2f  p99 %.2f  max %.2f\n", percentile_ms(0.5),
                   percentile_ms(0.99), percentile_ms(1.0));
        }
        printf("errors %ld, cut off by the time limit %ld; loadgen CPU %.2f s (%.0f%%)\n", g.errors,
               g.aborted, cpu, 100 * cpu / (t_end - g.t0));
    }
#ifdef LOADGEN_TLS
    if (opt.starttls) /* also with -q: bench/run reads it */
        printf("TLS handshakes: %ld full, %ld resumed\n", tls_full_count, tls_resumed_count);
#endif
    for (int i = 0; i < g.n_err_seen; i++)
        fprintf(stderr, "loadgen: error x%ld: %s\n", g.err_seen[i].count, g.err_seen[i].text);
    if (g.err_other) fprintf(stderr, "loadgen: ... and %ld other errors\n", g.err_other);
    printf("RESULT started=%ld sessions=%ld messages=%ld errors=%ld aborted=%ld elapsed=%.4f "
           "sessions_per_s=%.2f messages_per_s=%.2f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f "
           "idle=%ld loadgen_cpu_s=%.3f\n",
           g.started, g.ok, msgs, g.errors, g.aborted, elapsed, g.ok / elapsed, msgs / elapsed,
           percentile_ms(0.5), percentile_ms(0.99), percentile_ms(1.0), held, cpu);
    return 0;
}
