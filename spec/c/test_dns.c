/* test_dns.c — the C side of src/async/dns.h that no Lua binding reaches:
 * dns_lookup_host (the cosockets' name resolution) on a real libev loop
 * against a real dnsmasq on a free loopback port, and a silent UDP port for
 * cancellation. Checks the order of the addresses (A, then AAAA), the
 * synchronous paths (a literal, localhost, a cached name: NULL returned,
 * done already called), the error strings, and that a cancelled lookup
 * never calls back (ASan's leak check covers "nothing leaks"). It must not
 * test anything but dns.h. */
#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

#include "check.h"
#include "dns.h"

/* CHECK with the condition as its message. */
#define EXPECT(cond) CHECK(cond, "%s", "")

struct result {
    int calls;
    int n;
    char ips[4][64];
    char err[64];
};

static void on_done(void *ud, const char *const *ips, int n, const char *err)
{
    struct result *r = ud;
    r->calls++;
    r->n = n;
    for (int i = 0; i < n && i < 4; i++)
        snprintf(r->ips[i], sizeof r->ips[i], "%s", ips[i]);
    snprintf(r->err, sizeof r->err, "%s", err ? err : "");
}

/* A port below the kernel's ephemeral range (so no outgoing connection of
 * another test holds it) that is free for both UDP and TCP, or 0. */
static int free_port(void)
{
    for (int tries = 0; tries < 100; tries++) {
        int port = 20000 + rand() % 12000;
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int u = socket(AF_INET, SOCK_DGRAM, 0), t = socket(AF_INET, SOCK_STREAM, 0);
        bool ok = u >= 0 && t >= 0 && !bind(u, (struct sockaddr *)&a, sizeof a) &&
                  !bind(t, (struct sockaddr *)&a, sizeof a);
        if (u >= 0) close(u);
        if (t >= 0) close(t);
        if (ok) return port;
    }
    return 0;
}

/* A UDP socket bound to a free loopback port (kept open: silent server). */
static int udp_bound(int *port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        getsockname(fd, (struct sockaddr *)&a, &len))
        return -1;
    *port = ntohs(a.sin_port);
    return fd;
}

static pid_t start_dnsmasq(int port)
{
    char portarg[32];
    snprintf(portarg, sizeof portarg, "--port=%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        int log = open("/tmp/test_dns-dnsmasq.log", O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(log >= 0 ? log : null, 2);
        execlp("dnsmasq", "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", portarg,
               "--listen-address=127.0.0.1", "--bind-interfaces", "--conf-file=/dev/null",
               "--user=root", "--group=root",
               "--pid-file=", "--auth-zone=example.test,127.0.0.0/24,::/64",
               "--auth-server=ns.example.test,127.0.0.1", "--auth-ttl=300",
               "--auth-soa=1,hostmaster.example.test,1200,180,1209600,300",
               "--host-record=mail.example.test,127.0.0.10,::10", (char *)NULL);
        _exit(127);
    }
    return pid;
}

static struct ev_loop *loop;

/* Runs the loop until r got its callback (bounded). */
static void run_until(struct result *r, double secs)
{
    double end = ev_time() + secs;
    while (r->calls == 0 && ev_time() < end)
        ev_run(loop, EVRUN_ONCE);
}

int main(void)
{
    loop = ev_default_loop(0);
    /* A port free for UDP may be taken for TCP (other tests listen on
     * ephemeral ports): dnsmasq then exits at once, and we try another. */
    srand((unsigned)getpid());
    int port = 0;
    pid_t dns = 0; /* never kill() a pid <= 0: -1 means every process */
    for (int attempt = 0; attempt < 5 && dns <= 0; attempt++) {
        port = free_port();
        if (!port) continue;
        dns = start_dnsmasq(port);
        for (int i = 0; i < 25 && dns > 0; i++) {
            usleep(20000);
            if (waitpid(dns, NULL, WNOHANG) == dns) dns = 0; /* exited: try another port */
        }
    }
    if (dns <= 0) {
        fprintf(stderr, "test_dns: dnsmasq did not start (see /tmp/test_dns-dnsmasq.log)\n");
        case_begin("dnsmasq runs");
        EXPECT(dns > 0);
        case_end();
        return check_report();
    }
    char servers[64];
    snprintf(servers, sizeof servers, "127.0.0.1:%d", port);
    struct dns_config cfg = {servers, 2.0, 100};
    char err[256];
    struct dns_resolver *r = dns_resolver_get(loop, &cfg, err, sizeof err);

    case_begin("a resolver is made, and shared for the same configuration");
    EXPECT(r != NULL);
    struct dns_resolver *again = dns_resolver_get(loop, &cfg, err, sizeof err);
    EXPECT(again == r);
    dns_resolver_put(again);
    case_end();

    /* dnsmasq answers once it is up: retry a bounded number of times. */
    struct result res = {0};
    for (int tries = 0; tries < 50; tries++) {
        memset(&res, 0, sizeof res);
        struct dns_lookup *l = dns_lookup_host(r, "mail.example.test", on_done, &res);
        if (l) run_until(&res, 3);
        if (res.n == 2) break;
        usleep(100000);
    }
    case_begin("a name's A, then AAAA addresses");
    EXPECT(res.calls == 1);
    EXPECT(res.n == 2);
    EXPECT(!strcmp(res.ips[0], "127.0.0.10"));
    EXPECT(!strcmp(res.ips[1], "::10"));
    EXPECT(!strcmp(res.err, ""));
    case_end();

    case_begin("a cached name is answered before dns_lookup_host returns");
    memset(&res, 0, sizeof res);
    EXPECT(dns_lookup_host(r, "MAIL.example.test.", on_done, &res) == NULL);
    EXPECT(res.calls == 1 && res.n == 2 && !strcmp(res.ips[0], "127.0.0.10"));
    case_end();

    case_begin("literals and localhost are their own answer");
    memset(&res, 0, sizeof res);
    EXPECT(dns_lookup_host(r, "192.0.2.7", on_done, &res) == NULL);
    EXPECT(res.calls == 1 && res.n == 1 && !strcmp(res.ips[0], "192.0.2.7"));
    memset(&res, 0, sizeof res);
    EXPECT(dns_lookup_host(r, "2001:db8::1", on_done, &res) == NULL);
    EXPECT(res.calls == 1 && res.n == 1 && !strcmp(res.ips[0], "2001:db8::1"));
    memset(&res, 0, sizeof res);
    EXPECT(dns_lookup_host(r, "localhost", on_done, &res) == NULL);
    EXPECT(res.calls == 1 && res.n == 2 && !strcmp(res.ips[0], "127.0.0.1") &&
           !strcmp(res.ips[1], "::1"));
    case_end();

    case_begin("errors: name not found, bad name");
    memset(&res, 0, sizeof res);
    struct dns_lookup *l = dns_lookup_host(r, "nope.example.test", on_done, &res);
    if (l) run_until(&res, 5);
    EXPECT(res.calls == 1 && res.n == 0 && !strcmp(res.err, "name not found"));
    memset(&res, 0, sizeof res);
    EXPECT(dns_lookup_host(r, "a..b", on_done, &res) == NULL);
    EXPECT(res.calls == 1 && res.n == 0 && !strcmp(res.err, "bad name"));
    case_end();
    dns_resolver_put(r);
    if (dns > 0) {
        kill(dns, SIGTERM);
        waitpid(dns, NULL, 0);
    }

    /* A server that never answers. */
    int silent_port = 0, silent = udp_bound(&silent_port);
    snprintf(servers, sizeof servers, "127.0.0.1:%d", silent_port);
    struct dns_config slow = {servers, 0.3, 100};
    r = dns_resolver_get(loop, &slow, err, sizeof err);

    case_begin("timeout, and a cancelled lookup never calls back");
    memset(&res, 0, sizeof res);
    l = dns_lookup_host(r, "mail.example.test", on_done, &res);
    EXPECT(l != NULL);
    run_until(&res, 5);
    EXPECT(res.calls == 1 && res.n == 0 && !strcmp(res.err, "timeout"));
    struct result cancelled = {0};
    l = dns_lookup_host(r, "other.example.test", on_done, &cancelled);
    EXPECT(l != NULL);
    dns_lookup_cancel(l);
    dns_resolver_put(r);
    /* Let c-ares give up on the detached queries; the resolver then goes. */
    double end = ev_time() + 3;
    while (ev_time() < end)
        ev_run(loop, EVRUN_ONCE | EVRUN_NOWAIT), usleep(10000);
    EXPECT(cancelled.calls == 0);
    case_end();
    close(silent);
    return check_report();
}
