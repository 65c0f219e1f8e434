/* responder.c — a minimal SMTP responder for bench/run: one process, one
 * epoll loop, canned replies. It is the ceiling for this protocol on one
 * core: what a server costs when it parses lines, finds the end of DATA and
 * answers, and does nothing else (no policy, no storage, no logging).
 *
 * It owns its listener and connections. It must not listen anywhere but
 * 127.0.0.1 and must not pretend to be a mail server: it checks no
 * credentials and keeps no message. What it does do as a real server would:
 * one read per readiness event, all replies to a pipelined group in one
 * write, dot-transparent end-of-data detection across reads, AUTH PLAIN
 * (with and without initial response) and AUTH LOGIN dialogues, STARTTLS
 * with mbedTLS (same ciphersuites and curves as luasmtpd's src/net/tls.c) when
 * given a certificate, and discarding plaintext pipelined after STARTTLS. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef RESPONDER_TLS
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#endif

/* RFC 5321 4.5.3.1.4: a command line is at most 512 octets with CRLF; like
 * luasmtpd (and aiosmtpd) allow more for SIZE/SMTPUTF8 parameters. */
#define SMTP_LINE_MAX 1024
/* RFC 4954 4: AUTH lines and responses may be up to 12,288 octets. */
#define AUTH_LINE_MAX 12288
#define RESPONDER_READ_CHUNK 65536
#define RESPONDER_BACKLOG 4096

enum mode {
    M_CMD,
    M_DATA,
    M_AUTH_PLAIN, /* 334 sent, waiting for the response */
    M_AUTH_USER,
    M_AUTH_PASS,
    M_HANDSHAKE,
    M_CLOSING, /* 221 queued: close once flushed */
};

struct rconn {
    int fd;
    enum mode mode;
    bool want_out;
    bool tls_on;
    bool line_too_long;
    /* M_DATA: 0 at the start of a line, 1 after a '.' there, 2 after ".\r",
     * 3 inside a line */
    int dstate;
    char *line;
    size_t llen;
    char *out;
    size_t out_len, out_off, out_cap;
#ifdef RESPONDER_TLS
    mbedtls_ssl_context *ssl;
#endif
};

static struct {
    const char *hostname;
    bool tls;
    int ep, lfd;
    unsigned long conns_open;
} r = {.hostname = "responder.test"};

static volatile sig_atomic_t stop;
static char rbuf[RESPONDER_READ_CHUNK];

static void on_signal(int sig)
{
    stop = 1;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("responder: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

#ifdef RESPONDER_TLS
static mbedtls_ssl_config tls_conf;
static mbedtls_x509_crt tls_crt;
static mbedtls_pk_context tls_key;
static mbedtls_ctr_drbg_context tls_drbg;
static mbedtls_entropy_context tls_entropy;

/* As src/net/tls.c offers them, so that STARTTLS costs the same crypto. */
static const int tls_ciphersuites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    0,
};
static const mbedtls_ecp_group_id tls_curves[] = {
#ifdef MBEDTLS_ECP_DP_CURVE25519_ENABLED
    MBEDTLS_ECP_DP_CURVE25519,
#endif
    MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_NONE,
};

static int tls_bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    ssize_t n = send(*(int *)ctx, buf, len, MSG_NOSIGNAL);
    if (n >= 0) return (int)n;
    if (errno == EAGAIN || errno == EINTR) return MBEDTLS_ERR_SSL_WANT_WRITE;
    return MBEDTLS_ERR_NET_SEND_FAILED;
}

static int tls_bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    ssize_t n = recv(*(int *)ctx, buf, len, 0);
    if (n >= 0) return (int)n;
    if (errno == EAGAIN || errno == EINTR) return MBEDTLS_ERR_SSL_WANT_READ;
    return MBEDTLS_ERR_NET_RECV_FAILED;
}

static void tls_init(const char *cert, const char *key)
{
    char e[128];
    int rc;
    mbedtls_ssl_config_init(&tls_conf);
    mbedtls_x509_crt_init(&tls_crt);
    mbedtls_pk_init(&tls_key);
    mbedtls_ctr_drbg_init(&tls_drbg);
    mbedtls_entropy_init(&tls_entropy);
    if ((rc = mbedtls_ctr_drbg_seed(&tls_drbg, mbedtls_entropy_func, &tls_entropy,
                                    (const unsigned char *)"responder", 9)) ||
        (rc = mbedtls_x509_crt_parse_file(&tls_crt, cert)) ||
        (rc = mbedtls_pk_parse_keyfile(&tls_key, key, NULL)) ||
        (rc = mbedtls_ssl_config_defaults(&tls_conf, MBEDTLS_SSL_IS_SERVER,
                                          MBEDTLS_SSL_TRANSPORT_STREAM,
                                          MBEDTLS_SSL_PRESET_DEFAULT)) ||
        (rc = mbedtls_ssl_conf_own_cert(&tls_conf, &tls_crt, &tls_key))) {
        mbedtls_strerror(rc, e, sizeof e);
        die("TLS setup (%s, %s): %s", cert, key, e);
    }
    mbedtls_ssl_conf_rng(&tls_conf, mbedtls_ctr_drbg_random, &tls_drbg);
    mbedtls_ssl_conf_min_version(&tls_conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(&tls_conf, tls_ciphersuites);
    mbedtls_ssl_conf_curves(&tls_conf, tls_curves);
    mbedtls_ssl_conf_authmode(&tls_conf, MBEDTLS_SSL_VERIFY_NONE);
    r.tls = true;
}
#endif

static void conn_free(struct rconn *c)
{
    close(c->fd);
#ifdef RESPONDER_TLS
    if (c->ssl) {
        mbedtls_ssl_free(c->ssl);
        free(c->ssl);
    }
#endif
    free(c->line);
    free(c->out);
    free(c);
    r.conns_open--;
}

static void arm(struct rconn *c, bool want_out)
{
    if (c->want_out == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(r.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void reply(struct rconn *c, const char *s)
{
    size_t n = strlen(s);
    if (c->out_len + n + 2 > c->out_cap) {
        c->out_cap = 2 * (c->out_len + n + 2);
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) die("out of memory");
    }
    memcpy(c->out + c->out_len, s, n);
    memcpy(c->out + c->out_len + n, "\r\n", 2);
    c->out_len += n + 2;
}

/* Returns false if the connection was freed. */
static bool flush(struct rconn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n;
#ifdef RESPONDER_TLS
        if (c->tls_on) {
            int rc = mbedtls_ssl_write(c->ssl, (unsigned char *)c->out + c->out_off,
                                       c->out_len - c->out_off);
            if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ) {
                arm(c, rc == MBEDTLS_ERR_SSL_WANT_WRITE);
                return true;
            }
            if (rc < 0) {
                conn_free(c);
                return false;
            }
            n = rc;
        } else
#endif
        {
            n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    arm(c, true);
                    return true;
                }
                conn_free(c);
                return false;
            }
        }
        c->out_off += (size_t)n;
    }
    c->out_len = c->out_off = 0;
    if (c->mode == M_CLOSING) {
        conn_free(c);
        return false;
    }
    arm(c, false);
    return true;
}

static void ehlo(struct rconn *c)
{
    char line[300];
    snprintf(line, sizeof line, "250-%s", r.hostname);
    reply(c, line);
    reply(c, "250-SIZE 33554432");
    reply(c, "250-8BITMIME");
    reply(c, "250-PIPELINING");
    if (r.tls && !c->tls_on) reply(c, "250-STARTTLS");
    reply(c, "250-AUTH LOGIN PLAIN");
    reply(c, "250 HELP");
}

static bool verb_is(const char *line, size_t len, const char *verb)
{
    size_t n = strlen(verb);
    return len >= n && !strncasecmp(line, verb, n) && (len == n || line[n] == ' ');
}

/* One command line (without CRLF). May switch the mode. */
static void command(struct rconn *c, const char *line, size_t len)
{
    switch (c->mode) {
    case M_AUTH_PLAIN:
    case M_AUTH_PASS:
        c->mode = M_CMD;
        reply(c, len == 1 && line[0] == '*' ? "501 5.7.0 Auth aborted"
                                            : "235 2.7.0 Authentication successful");
        return;
    case M_AUTH_USER:
        c->mode = len == 1 && line[0] == '*' ? M_CMD : M_AUTH_PASS;
        reply(c, c->mode == M_CMD ? "501 5.7.0 Auth aborted" : "334 UGFzc3dvcmQ6");
        return;
    default:
        break;
    }
    if (verb_is(line, len, "MAIL") || verb_is(line, len, "RCPT") || verb_is(line, len, "RSET") ||
        verb_is(line, len, "NOOP")) {
        reply(c, "250 OK");
    } else if (verb_is(line, len, "DATA")) {
        reply(c, "354 End data with <CR><LF>.<CR><LF>");
        c->mode = M_DATA;
        c->dstate = 0;
    } else if (verb_is(line, len, "EHLO")) {
        ehlo(c);
    } else if (verb_is(line, len, "HELO")) {
        reply(c, "250 responder.test");
    } else if (verb_is(line, len, "AUTH")) {
        const char *arg = line + 4;
        size_t alen = len - 4;
        while (alen && *arg == ' ')
            arg++, alen--;
        if (alen >= 5 && !strncasecmp(arg, "PLAIN", 5)) {
            bool ir = alen > 6;
            reply(c, ir ? "235 2.7.0 Authentication successful" : "334 ");
            if (!ir) c->mode = M_AUTH_PLAIN;
        } else if (alen >= 5 && !strncasecmp(arg, "LOGIN", 5)) {
            reply(c, "334 VXNlcm5hbWU6");
            c->mode = M_AUTH_USER;
        } else {
            reply(c, "504 5.5.4 Unrecognized authentication type");
        }
    } else if (verb_is(line, len, "QUIT")) {
        reply(c, "221 Bye");
        c->mode = M_CLOSING;
    } else if (verb_is(line, len, "STARTTLS") && r.tls && !c->tls_on) {
        reply(c, "220 Ready to start TLS");
        c->mode = M_HANDSHAKE;
    } else if (verb_is(line, len, "VRFY")) {
        reply(c, "252 Cannot VRFY user");
    } else {
        reply(c, "500 Error: command not recognized");
    }
}

/* Consumes input; stops early when the mode leaves the command dialogue
 * (STARTTLS: what follows is discarded, as RFC 3207 5 requires; QUIT). */
static void consume(struct rconn *c, const char *p, size_t n)
{
    const char *end = p + n;
    while (p < end && c->mode != M_HANDSHAKE && c->mode != M_CLOSING) {
        if (c->mode == M_DATA) {
            /* Scan for CRLF "." CRLF; memchr skips the inside of lines. */
            while (p < end) {
                if (c->dstate == 3) {
                    const char *nl = memchr(p, '\n', (size_t)(end - p));
                    if (!nl) {
                        p = end;
                        break;
                    }
                    p = nl + 1;
                    c->dstate = 0;
                    continue;
                }
                char ch = *p++;
                if (c->dstate == 0)
                    c->dstate = ch == '.' ? 1 : ch == '\n' ? 0 : 3;
                else if (c->dstate == 1)
                    c->dstate = ch == '\r' ? 2 : ch == '\n' ? 0 : 3;
                else if (c->dstate == 2) {
                    if (ch == '\n') {
                        reply(c, "250 OK");
                        c->mode = M_CMD;
                        break;
                    }
                    c->dstate = 3;
                }
            }
            continue;
        }
        size_t limit = c->mode == M_CMD ? SMTP_LINE_MAX : AUTH_LINE_MAX;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t take = (size_t)((nl ? nl : end) - p);
        if (nl && c->llen == 0 && !c->line_too_long) {
            /* the common case: a whole line in this read, used in place */
            size_t len = take;
            if (len > limit) {
                reply(c, "500 Error: line too long");
            } else {
                if (len && p[len - 1] == '\r') len--;
                command(c, p, len);
            }
            p = nl + 1;
            continue;
        }
        if (c->llen + take > limit) {
            c->line_too_long = true;
        } else {
            if (!c->line) c->line = malloc(AUTH_LINE_MAX + 1);
            if (!c->line) die("out of memory");
            memcpy(c->line + c->llen, p, take);
            c->llen += take;
        }
        p += take;
        if (!nl) break;
        p++;
        if (c->line_too_long) {
            reply(c, "500 Error: line too long");
        } else {
            size_t len = c->llen;
            if (len && c->line[len - 1] == '\r') len--;
            command(c, c->line, len);
        }
        c->llen = 0;
        c->line_too_long = false;
    }
    /* Lines are rare to span reads; keep the buffer only while one does. */
    if (c->llen == 0 && c->line) {
        free(c->line);
        c->line = NULL;
    }
}

#ifdef RESPONDER_TLS
/* Returns false if the connection was freed. */
static bool handshake(struct rconn *c)
{
    int rc = mbedtls_ssl_handshake(c->ssl);
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
        arm(c, rc == MBEDTLS_ERR_SSL_WANT_WRITE);
        return true;
    }
    if (rc) {
        conn_free(c);
        return false;
    }
    c->tls_on = true;
    c->mode = M_CMD;
    arm(c, false);
    return true;
}

static bool tls_begin(struct rconn *c)
{
    c->ssl = malloc(sizeof *c->ssl);
    if (!c->ssl) die("out of memory");
    mbedtls_ssl_init(c->ssl);
    if (mbedtls_ssl_setup(c->ssl, &tls_conf)) {
        conn_free(c);
        return false;
    }
    mbedtls_ssl_set_bio(c->ssl, &c->fd, tls_bio_send, tls_bio_recv, NULL);
    return handshake(c);
}
#endif

static void readable(struct rconn *c)
{
    for (;;) {
        ssize_t n;
#ifdef RESPONDER_TLS
        if (c->tls_on) {
            int rc = mbedtls_ssl_read(c->ssl, (unsigned char *)rbuf, sizeof rbuf);
            if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) break;
            if (rc <= 0) {
                conn_free(c);
                return;
            }
            n = rc;
        } else
#endif
        {
            n = recv(c->fd, rbuf, sizeof rbuf, 0);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
            if (n <= 0) {
                conn_free(c);
                return;
            }
        }
        consume(c, rbuf, (size_t)n);
        if (c->mode == M_HANDSHAKE || c->mode == M_CLOSING || !c->tls_on) break;
    }
    if (c->out_len && !flush(c)) return;
#ifdef RESPONDER_TLS
    if (c->mode == M_HANDSHAKE && !c->want_out) tls_begin(c);
#endif
}

static void on_event(struct rconn *c, uint32_t events)
{
#ifdef RESPONDER_TLS
    if (c->mode == M_HANDSHAKE && c->out_len == 0) {
        if (c->ssl)
            handshake(c);
        else
            tls_begin(c);
        return;
    }
#endif
    if ((events & EPOLLOUT) && c->out_len) {
        if (!flush(c)) return;
#ifdef RESPONDER_TLS
        if (c->mode == M_HANDSHAKE && !c->want_out) tls_begin(c);
#endif
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) readable(c);
}

static void accept_all(void)
{
    for (int i = 0; i < 64; i++) {
        int fd = accept4(r.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        struct rconn *c = calloc(1, sizeof *c);
        if (!c) die("out of memory");
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(r.ep, EPOLL_CTL_ADD, fd, &ev);
        r.conns_open++;
        char greet[300];
        snprintf(greet, sizeof greet, "220 %s ESMTP responder", r.hostname);
        reply(c, greet);
        flush(c);
    }
}

static void usage(FILE *f)
{
    fputs("Usage: responder [-l 127.0.0.1:PORT] [--ready-fd N] [--hostname NAME]\n"
          "                 [--tlscert FILE --tlskey FILE]\n"
          "A minimal SMTP responder with canned replies (the benchmark's ceiling).\n"
          "Listens on 127.0.0.1 only; port 0 (the default) picks a free port. Writes\n"
          "\"ready 127.0.0.1:PORT\" to descriptor N (default: stdout) once listening.\n"
          "SIGTERM/SIGINT stop it.\n",
          f);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, 0, 'l'},
        {"ready-fd", required_argument, 0, 'r'},
        {"hostname", required_argument, 0, 'H'},
        {"tlscert", required_argument, 0, 'c'},
        {"tlskey", required_argument, 0, 'k'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int port = 0, ready_fd = 1, ch;
    const char *cert = NULL, *key = NULL;
    while ((ch = getopt_long(argc, argv, "l:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l': {
            const char *colon = strrchr(optarg, ':');
            const char *ps = colon ? colon + 1 : optarg;
            if (colon && strncmp(optarg, "127.0.0.1", (size_t)(colon - optarg)) && colon != optarg)
                die("refusing to listen on '%s': 127.0.0.1 only", optarg);
            port = atoi(ps);
            if (port < 0 || port > 65535) die("bad port in '%s'", optarg);
            break;
        }
        case 'r':
            ready_fd = atoi(optarg);
            break;
        case 'H':
            r.hostname = optarg;
            break;
        case 'c':
            cert = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!cert != !key) die("--tlscert and --tlskey go together");
#ifdef RESPONDER_TLS
    if (cert) tls_init(cert, key);
#else
    if (cert) die("built without mbedTLS: no STARTTLS");
#endif
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    r.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(r.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(r.lfd, (struct sockaddr *)&sin, sizeof sin) || listen(r.lfd, RESPONDER_BACKLOG))
        die("listen on 127.0.0.1:%d: %s", port, strerror(errno));
    socklen_t sl = sizeof sin;
    getsockname(r.lfd, (struct sockaddr *)&sin, &sl);
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(r.ep, EPOLL_CTL_ADD, r.lfd, &lev);

    char ready[64];
    int rn = snprintf(ready, sizeof ready, "ready 127.0.0.1:%d\n", ntohs(sin.sin_port));
    if (write(ready_fd, ready, (size_t)rn) != rn) die("cannot write the ready line");
    if (ready_fd != 1) close(ready_fd);

    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(r.ep, evs, 256, 1000);
        for (int i = 0; i < n; i++) {
            if (!evs[i].data.ptr)
                accept_all();
            else
                on_event(evs[i].data.ptr, evs[i].events);
        }
    }
    return 0;
}
