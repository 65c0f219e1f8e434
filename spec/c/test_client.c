/* test_client.c — unit tests for src/net/client.c that need no peer: the
 * literal targets netc_addr_parse accepts and refuses, the contract's error
 * strings netc_strerror gives for each errno (some, such as "no route",
 * cannot be produced on a loopback-only test machine), and a connect that
 * fails at once. The functional specs (spec/functional/socket_spec.lua)
 * cover everything with a real peer; fuzz_socket_receive the patterns. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "check.h"
#include "client.h"

static void test_parse(void)
{
    struct netc_addr a;
    case_begin("IPv4 literal");
    CHECK(netc_addr_parse("127.0.0.1", 25, &a) == 1, "parsed");
    CHECK(((struct sockaddr_in *)&a.ss)->sin_family == AF_INET, "family");
    CHECK(ntohs(((struct sockaddr_in *)&a.ss)->sin_port) == 25, "port");
    case_end();

    case_begin("IPv6 literal, bare and bracketed");
    CHECK(netc_addr_parse("::1", 587, &a) == 1, "bare");
    CHECK(((struct sockaddr_in6 *)&a.ss)->sin6_family == AF_INET6, "family");
    CHECK(ntohs(((struct sockaddr_in6 *)&a.ss)->sin6_port) == 587, "port");
    CHECK(netc_addr_parse("[2001:db8::1]", 25, &a) == 1, "bracketed");
    CHECK(netc_addr_parse("[::1", 25, &a) == 0, "half a bracket is a name");
    case_end();

    case_begin("names are not literals");
    CHECK(netc_addr_parse("mx.example.org", 25, &a) == 0, "a name");
    CHECK(netc_addr_parse("127.0.0.1.example", 25, &a) == 0, "a name that starts like an address");
    CHECK(netc_addr_parse("", 25, &a) == 0, "empty");
    case_end();

    case_begin("unix paths");
    CHECK(netc_addr_is_unix("unix:/run/x.sock"), "prefix");
    CHECK(netc_addr_parse("unix:/run/x.sock", 0, &a) == 1, "parsed");
    CHECK(strcmp(((struct sockaddr_un *)&a.ss)->sun_path, "/run/x.sock") == 0, "path");
    CHECK(netc_addr_parse("unix:", 0, &a) == -1, "empty path");
    char longp[200] = "unix:/";
    memset(longp + 6, 'p', 150);
    longp[156] = '\0';
    CHECK(netc_addr_parse(longp, 0, &a) == -1, "too long for sun_path");
    case_end();
}

static void test_strerror(void)
{
    char buf[64];
    case_begin("errno -> the contract's strings");
    CHECK(strcmp(netc_strerror(ECONNREFUSED, buf, sizeof buf), "connection refused") == 0,
          "refused");
    CHECK(strcmp(netc_strerror(ENOENT, buf, sizeof buf), "connection refused") == 0, "no listener");
    CHECK(strcmp(netc_strerror(ENETUNREACH, buf, sizeof buf), "no route") == 0, "net unreachable");
    CHECK(strcmp(netc_strerror(EHOSTUNREACH, buf, sizeof buf), "no route") == 0,
          "host unreachable");
    CHECK(strcmp(netc_strerror(ETIMEDOUT, buf, sizeof buf), "timeout") == 0, "timed out");
    CHECK(strcmp(netc_strerror(ECONNRESET, buf, sizeof buf), "closed") == 0, "reset");
    CHECK(strcmp(netc_strerror(EPIPE, buf, sizeof buf), "closed") == 0, "pipe");
    CHECK(strcmp(netc_strerror(EACCES, buf, sizeof buf), "permission denied") == 0,
          "others: strerror in lower case, got %s", buf);
    case_end();
}

static void test_connect_refused(void)
{
    struct netc_addr a;
    bool in_progress;
    int err = 0;
    case_begin("a unix path nobody listens on fails at once");
    CHECK(netc_addr_parse("unix:/nonexistent/luasmtpd-test.sock", 0, &a) == 1, "parsed");
    CHECK(netc_connect_start(&a, &in_progress, &err) == -1, "refused");
    CHECK(err == ENOENT, "ENOENT, got %d", err);
    case_end();
}

int main(void)
{
    test_parse();
    test_strerror();
    test_connect_refused();
    return check_report();
}
