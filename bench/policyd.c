/* policyd.c — a small policy service for bench/run scenario (h): speaks the
 * Postfix policy-delegation protocol (SMTPD_POLICY_README): the client sends
 * "name=value" lines and an empty line, the server answers one
 * "action=..." line and an empty line. Any number of requests on one
 * connection, one after the other (pipelined ones are answered in order).
 *
 * Policy: "action=REJECT 5.7.1 <sender>: sender rejected by policy" for a
 * sender listed with -r, "action=DUNNO" for everyone else.
 *
 * It owns its listening socket and its connections and nothing else. It must
 * listen on 127.0.0.1 only, keep every buffer bounded (a request over
 * POLICYD_REQUEST_MAX bytes closes the connection) and stop by itself after
 * --max-time. On SIGTERM/SIGINT (or at --max-time) it prints one line
 *   STATS requests=N rejected=N connections=N errors=N
 * on stdout and exits 0.
 *
 * It is a measuring tool: epoll, one read and (usually) one write per
 * request, no allocation per request. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

/* Postfix sends a few hundred bytes per request; its own limit on an
 * attribute line is much larger, but a benchmark service needs no more. */
#define POLICYD_REQUEST_MAX 8192
/* Replies queued for a client that does not read (pipelined requests). */
#define POLICYD_OUT_MAX 8192
#define POLICYD_REJECT_MAX 64
#define POLICYD_SENDER_MAX 512
#define POLICYD_MAX_TIME_DEFAULT 3600.0
#define POLICYD_EVENTS 64

struct client {
    int fd;
    bool want_out; /* EPOLLOUT armed */
    size_t in_len, out_len, out_off;
    /* The request being read: only the attribute the policy looks at. */
    char sender[POLICYD_SENDER_MAX];
    bool sender_too_long;
    char in[POLICYD_REQUEST_MAX];
    char out[POLICYD_OUT_MAX];
};

static struct {
    const char *reject[POLICYD_REJECT_MAX];
    int n_reject;
    double max_time;
    int ready_fd;
    const char *listen;
} opt = {.max_time = POLICYD_MAX_TIME_DEFAULT, .ready_fd = 1, .listen = "127.0.0.1:0"};

static struct {
    long requests, rejected, connections, errors;
} st;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig) { got_signal = sig; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void usage(FILE *f)
{
    fputs("Usage: policyd [-l 127.0.0.1:PORT] [-r SENDER]... [--ready-fd N] [--max-time S]\n"
          "A Postfix-style policy service (name=value lines, an empty line; answers\n"
          "action=DUNNO, or action=REJECT for a sender given with -r) on 127.0.0.1.\n\n"
          "  -l, --listen 127.0.0.1:PORT  port 0 (the default) picks a free port\n"
          "  -r, --reject SENDER          reject this sender (exact match), repeatable\n"
          "      --ready-fd N             write \"ready 127.0.0.1:PORT\" there (default 1)\n"
          "      --max-time SECONDS       exit after this long (default 3600)\n"
          "  -h, --help\n\n"
          "On SIGTERM/SIGINT or at --max-time: prints\n"
          "STATS requests=N rejected=N connections=N errors=N and exits 0.\n",
          f);
}

static void client_close(int ep, struct client *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Writes what is queued; false when the connection must close. Arms
 * EPOLLOUT while output remains. */
static bool client_flush(int ep, struct client *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) return false;
        c->out_off += (size_t)n;
    }
    bool pending = c->out_off < c->out_len;
    if (!pending) c->out_off = c->out_len = 0;
    if (pending != c->want_out) { /* one epoll_ctl only when that changes */
        struct epoll_event ev = {.events = EPOLLIN | (pending ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = pending;
    }
    return true;
}

static bool queue_reply(struct client *c, const char *text, size_t len)
{
    if (c->out_len + len > sizeof c->out) return false;
    memcpy(c->out + c->out_len, text, len);
    c->out_len += len;
    return true;
}

/* One attribute line (without its LF). The empty line ends the request and
 * queues its reply. False: protocol error, close. */
static bool client_line(struct client *c, char *line, size_t len)
{
    if (len > 0 && line[len - 1] == '\r') len--;
    if (len == 0) {
        st.requests++;
        bool reject = false;
        if (!c->sender_too_long)
            for (int i = 0; i < opt.n_reject && !reject; i++)
                reject = strcmp(c->sender, opt.reject[i]) == 0;
        char reply[POLICYD_SENDER_MAX + 64];
        int n;
        if (reject) {
            st.rejected++;
            n = snprintf(reply, sizeof reply, "action=REJECT 5.7.1 <%s>: sender rejected by policy\n\n",
                         c->sender);
        } else {
            n = snprintf(reply, sizeof reply, "action=DUNNO\n\n");
        }
        c->sender[0] = '\0';
        c->sender_too_long = false;
        return queue_reply(c, reply, (size_t)n);
    }
    char *eq = memchr(line, '=', len);
    if (!eq || eq == line) return false; /* not name=value */
    size_t name_len = (size_t)(eq - line), value_len = len - name_len - 1;
    if (name_len == 6 && memcmp(line, "sender", 6) == 0) {
        if (value_len >= sizeof c->sender) {
            c->sender_too_long = true; /* never equal to a listed sender */
        } else {
            memcpy(c->sender, eq + 1, value_len);
            c->sender[value_len] = '\0';
        }
    }
    return true;
}

static bool client_read(int ep, struct client *c)
{
    for (;;) {
        if (c->in_len == sizeof c->in) { /* a line longer than the buffer */
            st.errors++;
            return false;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) return false; /* closed (a pooled client going away) or reset */
        c->in_len += (size_t)n;
        size_t start = 0;
        char *lf;
        while ((lf = memchr(c->in + start, '\n', c->in_len - start))) {
            size_t len = (size_t)(lf - (c->in + start));
            if (!client_line(c, c->in + start, len)) {
                st.errors++;
                return false;
            }
            start += len + 1;
        }
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
        if ((size_t)n < sizeof c->in) break; /* a short read: nothing more waiting */
    }
    return client_flush(ep, c);
}

static int listen_on(const char *spec, int *port_out)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) != strlen("127.0.0.1") || strncmp(spec, "127.0.0.1", 9) != 0) {
        fprintf(stderr, "policyd: listen on 127.0.0.1:PORT only, got %s\n", spec);
        exit(2);
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) {
        fprintf(stderr, "policyd: bad port in %s\n", spec);
        exit(2);
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("policyd: socket");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 1024) < 0) {
        perror("policyd: bind/listen");
        exit(1);
    }
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    *port_out = ntohs(sa.sin_port);
    return fd;
}

static void parse_args(int argc, char **argv)
{
    enum { OPT_READY_FD = 256, OPT_MAX_TIME };
    static const struct option longopts[] = {
        {"listen", required_argument, 0, 'l'},        {"reject", required_argument, 0, 'r'},
        {"ready-fd", required_argument, 0, OPT_READY_FD}, {"max-time", required_argument, 0, OPT_MAX_TIME},
        {"help", no_argument, 0, 'h'},                {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "l:r:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l': opt.listen = optarg; break;
        case 'r':
            if (opt.n_reject == POLICYD_REJECT_MAX || strlen(optarg) >= POLICYD_SENDER_MAX) {
                fprintf(stderr, "policyd: at most %d senders of under %d bytes\n", POLICYD_REJECT_MAX,
                        POLICYD_SENDER_MAX);
                exit(2);
            }
            opt.reject[opt.n_reject++] = optarg;
            break;
        case OPT_READY_FD: opt.ready_fd = atoi(optarg); break;
        case OPT_MAX_TIME:
            opt.max_time = atof(optarg);
            if (!(opt.max_time > 0)) {
                fprintf(stderr, "policyd: --max-time must be > 0\n");
                exit(2);
            }
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc) {
        usage(stderr);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int port, lfd = listen_on(opt.listen, &port);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) {
        perror("policyd: epoll");
        return 1;
    }
    char ready[64];
    int rn = snprintf(ready, sizeof ready, "ready 127.0.0.1:%d\n", port);
    if (write(opt.ready_fd, ready, (size_t)rn) != rn) {
        perror("policyd: ready-fd");
        return 1;
    }
    if (opt.ready_fd != 1) close(opt.ready_fd);

    double deadline = now() + opt.max_time;
    struct epoll_event evs[POLICYD_EVENTS];
    while (!got_signal && now() < deadline) {
        int n = epoll_wait(ep, evs, POLICYD_EVENTS, 1000);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            perror("policyd: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct client *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break; /* EAGAIN, or EMFILE: try again on the next event */
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct client *nc = malloc(sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    nc->want_out = false;
                    nc->in_len = nc->out_len = nc->out_off = 0;
                    nc->sender[0] = '\0';
                    nc->sender_too_long = false;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                        close(fd);
                        free(nc);
                        continue;
                    }
                    st.connections++;
                }
                continue;
            }
            bool ok = true;
            if (evs[i].events & EPOLLOUT) ok = client_flush(ep, c);
            if (ok && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) ok = client_read(ep, c);
            if (!ok) client_close(ep, c);
        }
    }
    printf("STATS requests=%ld rejected=%ld connections=%ld errors=%ld\n", st.requests, st.rejected,
           st.connections, st.errors);
    fflush(stdout);
    return 0;
}
