/* probe.c — bench/run scenario (i): how long does another client wait while
 * hooks wait? One process, one epoll loop, against an SMTP server on
 * 127.0.0.1:
 *
 *   - one probe connection: greeting, EHLO, then "NOOP" in a loop, one at a
 *     time (--interval between a reply and the next NOOP), recording each
 *     round trip;
 *   - N sleeper connections (-c, default 50), started once the probe is up:
 *     greeting, EHLO, then "NOOP sleep" over and over; the benchmark's
 *     handlers wait 100 ms in that hook (bench/handlers/sleep.lua,
 *     sleep_async.py, sleep_blocking.py).
 *
 * Probing starts when every sleeper has sent its first sleeping command and
 * lasts -t seconds; then the sleepers QUIT after their current reply and
 * the run ends (within --grace). The last line on stdout is
 *   RESULT probes=N p50_ms= p99_ms= max_ms= sleeps=N sleeps_per_s=
 *          sleep_p50_ms= sleepers=N errors=N elapsed=
 * (sleeps and sleeps_per_s: sleeping commands answered during the probing
 * window; sleep_p50_ms: their median round trip, about 100 ms when the
 * server really waits in parallel).
 *
 * It owns its connections and nothing else. It connects only to 127.0.0.1;
 * every loop is bounded in count (--max-probes) or time (-t, --grace,
 * --max-time). A measuring tool, not a test: exit status 0 when the run
 * completed (errors are in errors=), 1 when it could not run, 2 on bad usage. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

/* RFC 5321 4.5.3.1.5: a reply line is at most 512 octets; an EHLO reply
 * has several. */
#define PROBE_RBUF 4096
#define PROBE_CMD_MAX 256
#define PROBE_SLEEPERS_MAX 10000
#define PROBE_MAX_PROBES_DEFAULT 1000000
#define PROBE_MAX_TIME_DEFAULT 300.0
#define PROBE_GRACE_DEFAULT 20.0
#define PROBE_REPLY_TIMEOUT_DEFAULT 30.0
#define PROBE_EVENTS 64

enum phase { PH_CONNECT, PH_GREETING, PH_EHLO, PH_CMD, PH_QUIT, PH_DONE };
static const char *const phase_names[] = {"connect", "greeting", "EHLO", "command", "QUIT", "done"};

struct conn {
    int fd;
    bool probe;
    bool want_out;
    enum phase phase;
    bool sent; /* PH_CMD: a command is out, its reply awaited */
    double t_sent;
    size_t rlen;
    char rbuf[PROBE_RBUF];
};

static struct {
    int port;
    int sleepers;
    double duration, interval, max_time, grace, reply_timeout;
    long max_probes;
    const char *sleep_cmd, *probe_cmd, *ehlo_name;
    bool quiet;
} opt = {
    .sleepers = 50,
    .duration = 5.0,
    .interval = 0.001,
    .max_time = PROBE_MAX_TIME_DEFAULT,
    .grace = PROBE_GRACE_DEFAULT,
    .reply_timeout = PROBE_REPLY_TIMEOUT_DEFAULT,
    .max_probes = PROBE_MAX_PROBES_DEFAULT,
    .sleep_cmd = "NOOP sleep",
    .probe_cmd = "NOOP",
    .ehlo_name = "probe.test",
};

static struct {
    int ep;
    struct conn *conns; /* [0] is the probe */
    int n_conns, open, sleepers_sent;
    double t0, t_probe0, t_probe_end, t_hard, t_next_probe;
    bool probing, stopping;
    long errors, sleeps;
    double *probe_ms, *sleep_ms;
    long n_probe, n_sleep, cap_sleep;
} g;

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
    fputs("Usage: probe -p PORT [OPTIONS]\n"
          "While N connections send a command whose hook waits, one probe connection\n"
          "sends NOOP in a loop and records each round trip (127.0.0.1 only).\n\n"
          "  -p, --port PORT         server port on 127.0.0.1\n"
          "  -c, --sleepers N        sleeping connections (default 50)\n"
          "  -t, --duration SECONDS  probing time, from when every sleeper waits (default 5)\n"
          "      --interval SECONDS  pause between a probe reply and the next NOOP (default 0.001)\n"
          "      --sleep-cmd CMD     the sleepers' command (default \"NOOP sleep\")\n"
          "      --probe-cmd CMD     the probe's command (default \"NOOP\")\n"
          "      --max-probes N      stop probing after N round trips (default 1000000)\n"
          "      --grace SECONDS     after -t: how long sleepers may take to finish (default 20)\n"
          "      --timeout SECONDS   limit on one reply (default 30)\n"
          "      --max-time SECONDS  hard limit on the whole run (default 300)\n"
          "  -q, --quiet             only the RESULT line on stdout\n"
          "  -h, --help\n\n"
          "Last line on stdout: RESULT probes=N p50_ms= p99_ms= max_ms= sleeps=N\n"
          "sleeps_per_s= sleep_p50_ms= sleepers=N errors=N elapsed=\n",
          f);
}

static void error_at(struct conn *c, const char *what, const char *line)
{
    g.errors++;
    g.stopping = true; /* the run no longer measures what it says */
    if (g.errors <= 8)
        fprintf(stderr, "probe: error: %s connection in %s: %s\n", c->probe ? "probe" : "sleeper",
                phase_names[c->phase], what && line ? line : (what ? what : "?"));
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(g.ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        g.open--;
    }
    c->phase = PH_DONE;
}

/* Commands are short and the connection has at most one out: a send that
 * does not take all of it is an error (the socket buffer is empty). */
static bool conn_send(struct conn *c, const char *cmd)
{
    char line[PROBE_CMD_MAX + 3];
    int n = snprintf(line, sizeof line, "%s\r\n", cmd);
    ssize_t w = send(c->fd, line, (size_t)n, MSG_NOSIGNAL);
    if (w != n) {
        error_at(c, "send failed", NULL);
        conn_close(c);
        return false;
    }
    c->sent = true;
    c->t_sent = now();
    return true;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double *v, long n, double p)
{
    if (n == 0) return 0;
    long i = (long)(p * (double)(n - 1) + 0.5);
    return v[i];
}

static void conn_start(struct conn *c, bool probe)
{
    c->probe = probe;
    c->phase = PH_CONNECT;
    c->rlen = 0;
    c->sent = false;
    c->t_sent = now(); /* the connect and the greeting count against --timeout */
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("probe: socket");
        exit(1);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        perror("probe: connect");
        exit(1);
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->want_out = true;
    epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev);
    g.open++;
}

static void sleeper_next(struct conn *c)
{
    if (g.stopping) {
        c->phase = PH_QUIT;
        conn_send(c, "QUIT");
    } else {
        c->phase = PH_CMD;
        conn_send(c, opt.sleep_cmd);
    }
}

/* The probe sends its next NOOP now if it is due (called on every loop
 * iteration). */
static void probe_tick(void)
{
    struct conn *p = &g.conns[0];
    double t = now();
    if (g.probing && (t >= g.t_probe_end || g.n_probe >= opt.max_probes || got_signal || g.stopping)) {
        g.probing = false;
        g.stopping = true;
        if (t < g.t_probe_end) g.t_probe_end = t; /* the window ends here */
    }
    if (p->phase != PH_CMD || p->sent) return;
    if (g.probing && t >= g.t_next_probe) {
        conn_send(p, opt.probe_cmd);
    } else if (g.stopping) {
        p->phase = PH_QUIT;
        conn_send(p, "QUIT");
    }
}

/* One complete reply (its last line) arrived on c. */
static void on_reply(struct conn *c, int code, const char *line)
{
    double t = now();
    int want = c->phase == PH_GREETING ? 220 : c->phase == PH_QUIT ? 221 : 250;
    if (code != want) {
        error_at(c, "unexpected reply", line);
        conn_close(c);
        return;
    }
    c->sent = false;
    switch (c->phase) {
    case PH_GREETING: {
        char ehlo[PROBE_CMD_MAX];
        snprintf(ehlo, sizeof ehlo, "EHLO %s", opt.ehlo_name);
        c->phase = PH_EHLO;
        conn_send(c, ehlo);
        break;
    }
    case PH_EHLO:
        if (c->probe) {
            c->phase = PH_CMD; /* waits for the sleepers: probe_tick starts it */
            if (!g.stopping)
                for (int i = 1; i < g.n_conns; i++) conn_start(&g.conns[i], false);
        } else {
            sleeper_next(c);
            if (++g.sleepers_sent == opt.sleepers) {
                g.probing = true;
                g.t_probe0 = g.t_next_probe = t;
                g.t_probe_end = t + opt.duration;
            }
        }
        break;
    case PH_CMD:
        if (c->probe) {
            /* Every NOOP sent in the window counts, however late its reply:
             * dropping the slow ones would flatter a server that blocks. */
            if (g.t_probe0 > 0 && c->t_sent <= g.t_probe_end) g.probe_ms[g.n_probe++] = (t - c->t_sent) * 1e3;
            g.t_next_probe = t + opt.interval;
        } else {
            if (g.probing) { /* answered in the window */
                g.sleeps++;
                if (g.n_sleep == g.cap_sleep) {
                    g.cap_sleep = g.cap_sleep ? 2 * g.cap_sleep : 4096;
                    g.sleep_ms = realloc(g.sleep_ms, (size_t)g.cap_sleep * sizeof *g.sleep_ms);
                    if (!g.sleep_ms) {
                        fputs("probe: out of memory\n", stderr);
                        exit(1);
                    }
                }
                g.sleep_ms[g.n_sleep++] = (t - c->t_sent) * 1e3;
            }
            sleeper_next(c);
        }
        break;
    case PH_QUIT: conn_close(c); break;
    default: break;
    }
}

static void on_readable(struct conn *c)
{
    for (;;) {
        if (c->rlen == sizeof c->rbuf) {
            error_at(c, "reply too long", NULL);
            conn_close(c);
            return;
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            error_at(c, n == 0 ? "closed by the server" : strerror(errno), NULL);
            conn_close(c);
            return;
        }
        c->rlen += (size_t)n;
        size_t start = 0;
        char *lf;
        while (c->phase != PH_DONE && (lf = memchr(c->rbuf + start, '\n', c->rlen - start))) {
            char *line = c->rbuf + start;
            size_t len = (size_t)(lf - line) + 1;
            start += len;
            *lf = '\0';
            if (len < 4 || line[0] < '2' || line[0] > '5') {
                error_at(c, "malformed reply", line);
                conn_close(c);
                return;
            }
            if (line[3] == '-') continue; /* more lines of this reply follow */
            if (!c->sent && c->phase != PH_GREETING) {
                error_at(c, "reply to nothing", line);
                conn_close(c);
                return;
            }
            on_reply(c, atoi(line), line);
        }
        if (c->phase == PH_DONE) return;
        memmove(c->rbuf, c->rbuf + start, c->rlen - start);
        c->rlen -= start;
    }
}

static void on_event(struct conn *c, uint32_t events)
{
    if (c->phase == PH_CONNECT) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = 0;
        socklen_t sl = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        if (err) {
            error_at(c, strerror(err), NULL);
            conn_close(c);
            return;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = false;
        c->phase = PH_GREETING;
        c->t_sent = now();
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
}

static void parse_args(int argc, char **argv)
{
    enum {
        OPT_INTERVAL = 256,
        OPT_SLEEP_CMD,
        OPT_PROBE_CMD,
        OPT_MAX_PROBES,
        OPT_GRACE,
        OPT_TIMEOUT,
        OPT_MAX_TIME,
    };
    static const struct option longopts[] = {
        {"port", required_argument, 0, 'p'},
        {"sleepers", required_argument, 0, 'c'},
        {"duration", required_argument, 0, 't'},
        {"interval", required_argument, 0, OPT_INTERVAL},
        {"sleep-cmd", required_argument, 0, OPT_SLEEP_CMD},
        {"probe-cmd", required_argument, 0, OPT_PROBE_CMD},
        {"max-probes", required_argument, 0, OPT_MAX_PROBES},
        {"grace", required_argument, 0, OPT_GRACE},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"max-time", required_argument, 0, OPT_MAX_TIME},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "p:c:t:qh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.sleepers = atoi(optarg); break;
        case 't': opt.duration = atof(optarg); break;
        case OPT_INTERVAL: opt.interval = atof(optarg); break;
        case OPT_SLEEP_CMD: opt.sleep_cmd = optarg; break;
        case OPT_PROBE_CMD: opt.probe_cmd = optarg; break;
        case OPT_MAX_PROBES: opt.max_probes = atol(optarg); break;
        case OPT_GRACE: opt.grace = atof(optarg); break;
        case OPT_TIMEOUT: opt.reply_timeout = atof(optarg); break;
        case OPT_MAX_TIME: opt.max_time = atof(optarg); break;
        case 'q': opt.quiet = true; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    const char *bad = NULL;
    if (optind != argc) bad = "unexpected arguments";
    else if (opt.port <= 0 || opt.port > 65535) bad = "-p PORT is required (1-65535)";
    else if (opt.sleepers < 1 || opt.sleepers > PROBE_SLEEPERS_MAX) bad = "-c must be in [1, 10000]";
    else if (!(opt.duration > 0) || !(opt.max_time > 0) || !(opt.grace > 0) || !(opt.reply_timeout > 0))
        bad = "-t, --grace, --timeout and --max-time must be > 0";
    else if (!(opt.interval >= 0) || opt.interval > 10) bad = "--interval must be in [0, 10]";
    else if (opt.max_probes < 1 || opt.max_probes > 100000000) bad = "--max-probes must be in [1, 1e8]";
    else if (strlen(opt.sleep_cmd) >= PROBE_CMD_MAX || strlen(opt.probe_cmd) >= PROBE_CMD_MAX ||
             strpbrk(opt.sleep_cmd, "\r\n") || strpbrk(opt.probe_cmd, "\r\n"))
        bad = "commands must be one line under 256 bytes";
    if (bad) {
        fprintf(stderr, "probe: %s\n", bad);
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

    g.ep = epoll_create1(EPOLL_CLOEXEC);
    g.n_conns = opt.sleepers + 1;
    g.conns = calloc((size_t)g.n_conns, sizeof *g.conns);
    g.probe_ms = malloc((size_t)opt.max_probes * sizeof *g.probe_ms);
    if (g.ep < 0 || !g.conns || !g.probe_ms) {
        perror("probe: setup");
        return 1;
    }
    for (int i = 0; i < g.n_conns; i++) g.conns[i].fd = -1;
    g.t0 = now();
    g.t_hard = g.t0 + opt.max_time;
    conn_start(&g.conns[0], true); /* the sleepers start once it is up */

    struct epoll_event evs[PROBE_EVENTS];
    double t_grace_end = 0;
    while (g.open > 0) {
        double t = now();
        if (t >= g.t_hard) {
            fprintf(stderr, "probe: --max-time reached with %d connections open\n", g.open);
            break;
        }
        if (got_signal && !g.stopping) g.stopping = true;
        probe_tick();
        if (g.stopping && !t_grace_end) t_grace_end = now() + opt.grace;
        if (t_grace_end && now() >= t_grace_end) {
            fprintf(stderr, "probe: %d connections still open after --grace\n", g.open);
            break;
        }
        /* A reply overdue: the server is stuck, not slow. */
        for (int i = 0; i < g.n_conns; i++) {
            struct conn *c = &g.conns[i];
            if (c->fd >= 0 && (c->sent || c->phase == PH_CONNECT || c->phase == PH_GREETING) &&
                t - c->t_sent > opt.reply_timeout) {
                error_at(c, "no reply within --timeout", NULL);
                conn_close(c);
            }
        }
        if (g.open == 0) break;
        /* Wake for the next probe, else at least every 100 ms for the limits. */
        int timeout_ms = 100;
        struct conn *p = &g.conns[0];
        if (g.probing && p->phase == PH_CMD && !p->sent) {
            double wait = g.t_next_probe - now();
            timeout_ms = wait <= 0 ? 0 : (int)(wait * 1e3) + (wait * 1e3 > (int)(wait * 1e3));
            if (timeout_ms > 100) timeout_ms = 100;
        }
        int n = epoll_wait(g.ep, evs, PROBE_EVENTS, timeout_ms);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            perror("probe: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd >= 0) on_event(c, evs[i].events);
        }
    }
    double elapsed = now() - g.t0;
    double window = g.t_probe0 > 0 ? (g.stopping ? g.t_probe_end : now()) - g.t_probe0 : 0;
    if (window > opt.duration) window = opt.duration;
    if (g.n_probe == 0 && g.t_probe0 == 0) {
        fprintf(stderr, "probe: the sleepers never all started (errors %ld)\n", g.errors);
    }
    qsort(g.probe_ms, (size_t)g.n_probe, sizeof *g.probe_ms, cmp_double);
    if (g.n_sleep) qsort(g.sleep_ms, (size_t)g.n_sleep, sizeof *g.sleep_ms, cmp_double);
    if (!opt.quiet)
        printf("probe: %ld round trips while %d connections slept (%ld sleeps answered)\n", g.n_probe,
               opt.sleepers, g.sleeps);
    printf("RESULT probes=%ld p50_ms=%.4f p99_ms=%.4f max_ms=%.4f sleeps=%ld sleeps_per_s=%.2f "
           "sleep_p50_ms=%.3f sleepers=%d errors=%ld elapsed=%.3f\n",
           g.n_probe, percentile(g.probe_ms, g.n_probe, 0.5), percentile(g.probe_ms, g.n_probe, 0.99),
           g.n_probe ? g.probe_ms[g.n_probe - 1] : 0.0, g.sleeps, window > 0 ? g.sleeps / window : 0.0,
           percentile(g.sleep_ms, g.n_sleep, 0.5), opt.sleepers, g.errors + (long)g.open, elapsed);
    return 0;
}
