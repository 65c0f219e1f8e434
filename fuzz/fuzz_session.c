/* fuzz_session.c — the whole SMTP state machine under libFuzzer, after
 * Dovecot's fuzz-smtp-server. The input is what a client sends. Each input
 * is played against four server configurations (open, AUTH required,
 * STARTTLS required with a certificate, PROXY protocol header first), each
 * through a real session on one end of a socketpair, with the handler in
 * fuzz/handler.lua.
 *
 * Per input and configuration: session_new() on fds[0]; the input is
 * written into fds[1] in up to four chunks, cut at points derived from a
 * hash of the input (so partial lines and commands split across reads are
 * exercised, reproducibly), running the loop after each chunk; replies are
 * drained and checked as they arrive; fds[1] is closed and the loop runs
 * until the session is freed. Owns nothing but that harness: the code under
 * test is the core library, unmodified.
 *
 * Invariants checked (a violation aborts, so libFuzzer saves the input):
 *   - replies: the first line is the 220 greeting; every line starts with
 *     three digits followed by ' ', '-' or its end, and ends with CRLF
 *     (no bare LF: no reply injection; with FUZZ_STRICT_REPLIES=1 no
 *     bare CR either — see fuzz/README.md); nothing follows a 221/421;
 *     at most one final reply per line the client sent, plus the greeting
 *     and one closing 421; output stops on a line boundary;
 *   - the same replies whether the input arrives in those reads or in one
 *     (up to a switch to TLS, which by design discards what was pipelined
 *     after STARTTLS): the protocol does not depend on TCP segmentation;
 *   - the session is freed once the client has closed, within a bounded
 *     number of loop iterations; the server's session count is 0 again;
 *   - the policy's Lua state is back where it was: empty stack, no leaked
 *     registry references (coroutines pooled aside), refcount 1;
 *   - inside Lua (handler.lua calls fuzz_fail): accepted content ends with
 *     CRLF, a stale server object from a freed session raises;
 *   - ASan/UBSan/LeakSanitizer for everything else.
 * Lines of handler.lua and of the built-in mechanisms count as coverage
 * (fuzz_lua.h), so the fuzzer also steers through the Lua side.
 * Set FUZZ_LOG=<level> (0 errors .. 3 debug) to see the server's log and
 * FUZZ_VERBOSE=1 for the harness's cut points and replies. */
#include <ctype.h>
#include <errno.h>
#include <ev.h>
#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "fuzz_lua.h"
#include "conn.h"
#include "log.h"
#include "policy.h"
#include "verbs.h"
#include "server.h"
#include "session.h"
#include "tls.h"

#ifndef FUZZ_DIR
#define FUZZ_DIR "fuzz"
#endif

/* Loop iterations per chunk at most; the pump stops sooner once nothing
 * moves, so the bound only matters for a session that keeps the loop busy. */
#define PUMP_ITERATIONS 32
/* Iterations allowed between the client's close and the session's free. */
#define CLOSE_ITERATIONS 64
#define MAX_CUTS 3
/* The most of a reply transcript kept for comparing two deliveries. */
#define TRANSCRIPT_MAX (1 << 20)

struct config {
    const char *name;
    struct option_override ov[5];
    size_t n_ov;
    bool tls;
};

/* auth_fail_penalty is off in every configuration: its holds are timers
 * (a random 0-1 s before each 535), and replies that wait on the clock
 * cannot be compared across how the input was cut. bruteforce_spec covers
 * the holds. */
#define NO_PENALTY {"auth_fail_penalty", "false"}
static const struct config configs[] = {
    {"open", {{"enable_SMTPUTF8", "true"}, {"command_call_limit", "30"}, NO_PENALTY}, 3, false},
    {"auth-required",
     {{"auth_required", "true"},
      {"bare_newline", "normalize"},
      {"data_size_limit", "0"},
      {"auth_allow_authzid", "true"},
      NO_PENALTY},
     5,
     false},
    {"starttls", {{"require_starttls", "true"}, {"bare_newline", "keep"}, NO_PENALTY}, 3, true},
    /* A PROXY protocol listener: the header comes first (most inputs have
     * none, and are closed silently after their first bytes). */
    {"proxy", {{"proxy_protocol_timeout", "5"}, NO_PENALTY}, 2, false},
};
#define N_CONFIGS (sizeof configs / sizeof configs[0])

static struct ev_loop *loop;
static struct server servers[N_CONFIGS];
static int baseline_refs[N_CONFIGS];
static bool verbose;
static bool strict;

/* ------------------------------------------------------------ failures */

static const uint8_t *cur_input;
static size_t cur_size;
static const char *cur_config = "-";

/* The text replies of one run (up to a switch to TLS), as the client got
 * them: for the failure message and for comparing deliveries. */
struct transcript {
    char *p;
    size_t len, cap;
    bool truncated;
};

static struct transcript runs[2];
static struct transcript *cur_transcript = &runs[0];

static void transcript_add(struct transcript *t, char c)
{
    if (t->len == t->cap) {
        if (t->cap >= TRANSCRIPT_MAX) {
            t->truncated = true;
            return;
        }
        t->cap = t->cap ? 2 * t->cap : 4096;
        t->p = realloc(t->p, t->cap);
        if (!t->p) abort();
    }
    t->p[t->len++] = c;
}

static void print_escaped(const char *what, const char *p, size_t n)
{
    fprintf(stderr, "%s (%zu bytes): \"", what, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n')
            fputs("\\n\"\n  \"", stderr);
        else if (c == '\r')
            fputs("\\r", stderr);
        else if (c == '"' || c == '\\')
            fprintf(stderr, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fputs("\"\n", stderr);
}

static void fuzz_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\nfuzz_session: invariant broken (configuration %s): ", cur_config);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (cur_input) print_escaped("input", (const char *)cur_input, cur_size);
    size_t n = cur_transcript->len, from = n > 4096 ? n - 4096 : 0;
    print_escaped(from ? "replies so far, the last 4096 bytes" : "replies so far",
                  cur_transcript->p + from, n - from);
    abort();
}

/* fuzz_fail(msg) for handler.lua. */
static int l_fuzz_fail(lua_State *L)
{
    fuzz_fail("handler.lua: %s", luaL_optstring(L, 1, "(no message)"));
}

/* ------------------------------------------------------------ reply checker */

struct reply_check {
    char line[16]; /* the first bytes of the current line */
    size_t pos;    /* bytes of the current line so far */
    bool after_cr;
    size_t lines, finals;
    bool closed; /* a 221 or 421 went out: nothing may follow */
    bool binary; /* after "220 Ready to start TLS": TLS records follow */
};

static void reply_line_done(struct reply_check *rc)
{
    const char *l = rc->line;
    size_t n = rc->pos - 2; /* without CRLF */
    if (rc->lines == 0 && (n < 4 || memcmp(l, "220 ", 4)))
        fuzz_fail("the first reply is not a 220 greeting");
    rc->lines++;
    if (n == 3 || l[3] == ' ') {
        rc->finals++;
        if (!memcmp(l, "221", 3) || !memcmp(l, "421", 3)) rc->closed = true;
    }
    if (n == strlen("220 Ready to start TLS") && !memcmp(l, "220 Rea", 7)) rc->binary = true;
}

static void reply_byte(struct reply_check *rc, unsigned char c)
{
    if (rc->binary) return;
    if (rc->closed) fuzz_fail("a reply after a closing 221/421");
    if (rc->pos < sizeof rc->line) rc->line[rc->pos] = (char)c;
    size_t i = rc->pos++;
    if (rc->after_cr) {
        rc->after_cr = false;
        if (c == '\n') {
            if (i < 4) fuzz_fail("a reply line shorter than its code");
            reply_line_done(rc);
            rc->pos = 0;
            return;
        }
        /* The CR before c was bare. Only CRLF ends a reply line (RFC 5321
         * 4.1.1), so one inside the text cannot forge another line; strict
         * mode refuses it all the same, since it echoes a client's control
         * byte. */
        if (strict) fuzz_fail("a bare CR in a reply line");
        if (i - 1 <= 3) fuzz_fail("a bare CR in a reply code");
    }
    if (c == '\r') {
        rc->after_cr = true;
        return;
    }
    if (c == '\n') fuzz_fail("a bare LF in a reply line");
    if (i < 3 && !isdigit(c)) fuzz_fail("a reply line that does not start with 3 digits");
    if (i == 3 && c != ' ' && c != '-') fuzz_fail("a reply code not followed by ' ' or '-'");
}

static size_t drain(int fd, struct reply_check *rc)
{
    char buf[16384];
    size_t total = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        if (verbose) fwrite(buf, 1, (size_t)n, stderr);
        for (ssize_t i = 0; i < n; i++) {
            if (!rc->binary) transcript_add(cur_transcript, buf[i]);
            reply_byte(rc, (unsigned char)buf[i]);
        }
        total += (size_t)n;
    }
    return total;
}

/* ------------------------------------------------------------ the loop */

static int server_fd(struct server *srv)
{
    return srv->sessions && srv->sessions->conn ? srv->sessions->conn->fd : -1;
}

/* Runs the loop until nothing moves: no replies, nothing unread on the
 * server's socket, no pending watchers, twice in a row (bounded). */
static void pump(struct server *srv, int client, struct reply_check *rc)
{
    int quiet = 0;
    for (int i = 0; i < PUMP_ITERATIONS && quiet < 2; i++) {
        ev_run(loop, EVRUN_NOWAIT);
        size_t got = drain(client, rc);
        int unread = 0;
        int fd = server_fd(srv);
        if (fd < 0 || ioctl(fd, FIONREAD, &unread) != 0) unread = 0;
        quiet = got == 0 && unread == 0 && ev_pending_count(loop) == 0 ? quiet + 1 : 0;
    }
}

static void send_all(struct server *srv, int client, const uint8_t *p, size_t n,
                     struct reply_check *rc)
{
    for (int tries = 0; n > 0 && tries < 64; tries++) {
        ssize_t w = send(client, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return; /* server closed */
        pump(srv, client, rc);
    }
}

/* ------------------------------------------------------------ Lua state */

/* Registry references in use: luaL_ref's free slots hold numbers. */
static int live_refs(lua_State *L)
{
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, LUA_REGISTRYINDEX)) {
        if (lua_type(L, -2) == LUA_TNUMBER && lua_type(L, -1) != LUA_TNUMBER) n++;
        lua_pop(L, 1);
    }
    return n;
}

static int policy_refs(const struct policy *p)
{
    return live_refs(p->vm.L) - p->vm.n_pool;
}

static void check_policy(size_t v)
{
    struct policy *p = servers[v].host.policy;
    if (lua_gettop(p->vm.L) != 0)
        fuzz_fail("the policy's Lua stack holds %d values", lua_gettop(p->vm.L));
    int refs = policy_refs(p);
    if (refs != baseline_refs[v])
        fuzz_fail("registry references: %d, %d before the session", refs, baseline_refs[v]);
    if (p->refcount != 1) fuzz_fail("the policy's refcount is %d after the session", p->refcount);
}

/* ------------------------------------------------------------ libFuzzer */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    signal(SIGPIPE, SIG_IGN);
    const char *lv = getenv("FUZZ_LOG");
    log_max_level = lv ? atoi(lv) : -1;
    verbose = getenv("FUZZ_VERBOSE") != NULL;
    strict = getenv("FUZZ_STRICT_REPLIES") != NULL;
    loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop) {
        fprintf(stderr, "fuzz_session: ev_loop_new failed\n");
        exit(1);
    }
    for (size_t v = 0; v < N_CONFIGS; v++) {
        char err[1024];
        struct server *srv = &servers[v];
        server_init(srv, loop);
        srv->host.drain_timeout = 60;
        struct policy_inputs in = {configs[v].ov, configs[v].n_ov, server_register_lua_classes};
        srv->host.policy = policy_load(FUZZ_DIR "/handler.lua", &in, err, sizeof err);
        if (!srv->host.policy) {
            fprintf(stderr, "fuzz_session: %s\n", err);
            exit(1);
        }
        policy_attach(srv->host.policy, loop);
        lua_register(srv->host.policy->vm.L, "fuzz_fail", l_fuzz_fail);
        fuzz_lua_coverage(srv->host.policy->vm.L);
        if (configs[v].tls) {
            srv->host.tls = tls_config_load(FUZZ_DIR "/tls/cert.pem", FUZZ_DIR "/tls/key.pem", NULL, err,
                                       sizeof err);
            if (!srv->host.tls) {
                fprintf(stderr, "fuzz_session: %s\n", err);
                exit(1);
            }
        }
        baseline_refs[v] = policy_refs(srv->host.policy);
    }
    return 0;
}

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static size_t count_lf(const uint8_t *p, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += p[i] == '\n';
    return c;
}

static void run_config(size_t v, const uint8_t *data, size_t size, const size_t *cuts, size_t ncuts,
                       struct transcript *t)
{
    struct server *srv = &servers[v];
    cur_config = configs[v].name;
    cur_transcript = t;
    t->len = 0;
    t->truncated = false;
    if (verbose) fprintf(stderr, "--- configuration %s, %zu reads\n", cur_config, ncuts + 1);

    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds)) {
        perror("fuzz_session: socketpair");
        abort();
    }
    struct reply_check rc = {0};
    /* Takes fds[0]; sends the greeting. */
    if (!session_new(&srv->host, &verbs_smtp, fds[0], "127.0.0.1", 1234, NULL, NULL)) fuzz_fail("session_new failed");
    pump(srv, fds[1], &rc);

    size_t off = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : size;
        if (end > off) {
            send_all(srv, fds[1], data + off, end - off, &rc);
            pump(srv, fds[1], &rc);
        }
        off = end;
    }
    if (!rc.binary && rc.pos != 0) fuzz_fail("the replies stop in the middle of a line");
    if (!rc.binary && rc.finals > 2 + count_lf(data, size))
        fuzz_fail("%zu final replies to %zu lines", rc.finals, count_lf(data, size));

    close(fds[1]);
    for (int i = 0; i < CLOSE_ITERATIONS && srv->host.n_sessions > 0; i++)
        ev_run(loop, EVRUN_NOWAIT);
    if (srv->host.n_sessions != 0) fuzz_fail("the session is still open after the client closed");
    if (srv->sessions) fuzz_fail("the session registry is not empty");
    check_policy(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cur_input = data;
    cur_size = size;
    uint32_t h = fnv1a(data, size);
    size_t cuts[MAX_CUTS];
    size_t ncuts = h % (MAX_CUTS + 1);
    for (size_t i = 0; i < ncuts; i++) {
        h = h * 1103515245u + 12345u;
        cuts[i] = (h >> 8) % (size + 1);
    }
    qsort(cuts, ncuts, sizeof cuts[0], cmp_size);
    if (verbose) {
        fprintf(stderr, "fuzz_session: %zu bytes, cut at", size);
        for (size_t i = 0; i < ncuts; i++)
            fprintf(stderr, " %zu", cuts[i]);
        fputc('\n', stderr);
    }
    for (size_t v = 0; v < N_CONFIGS; v++) {
        run_config(v, data, size, cuts, ncuts, &runs[0]);
        if (ncuts == 0) continue;
        /* Replies must not depend on how TCP cut the stream into reads. */
        run_config(v, data, size, NULL, 0, &runs[1]);
        size_t n = runs[0].len < runs[1].len ? runs[0].len : runs[1].len;
        if (runs[0].truncated || runs[1].truncated) continue;
        if (runs[0].len != runs[1].len || memcmp(runs[0].p, runs[1].p, n)) {
            size_t d = 0;
            while (d < n && runs[0].p[d] == runs[1].p[d])
                d++;
            size_t from = d > 200 ? d - 200 : 0;
            print_escaped("\nreplies when read in one piece, from the first difference",
                          runs[1].p + from, runs[1].len - from);
            char at[64] = "";
            for (size_t i = 0, o = 0; i < ncuts; i++)
                o += (size_t)snprintf(at + o, sizeof at - o, " %zu", cuts[i]);
            cur_transcript = &runs[0];
            fuzz_fail("the replies differ from byte %zu when the input arrives cut at%s "
                      "rather than in one piece",
                      d, at);
        }
    }
    cur_input = NULL;
    return 0;
}
