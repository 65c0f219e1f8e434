/* test_auth_limit.c — unit tests for src/smtp/auth_limit.c: the address
 * group a failed AUTH counts to (IPv4, IPv6 /48, IPv4-mapped IPv6, not an
 * address), Dovecot's penalty sequence 2, 4, 8, 15 s and its decay, and the
 * bounded table (many more addresses than slots). Must not test anything
 * but auth_limit.h. */
#include <stdio.h>
#include <string.h>

#include "auth_limit.h"
#include "check.h"

static void key_is(const char *peer, const char *want)
{
    char out[AUTH_LIMIT_KEY_MAX] = "unchanged";
    case_begin("auth_limit_key(%s)", peer);
    bool ok = auth_limit_key(peer, out);
    if (want) {
        CHECK(ok, "returned false");
        CHECK(!strcmp(out, want), "got %s, want %s", out, want);
    } else {
        CHECK(!ok, "returned true (%s)", out);
        CHECK(!strcmp(out, "unchanged"), "wrote %s", out);
    }
    case_end();
}

static void test_keys(void)
{
    key_is("203.0.113.9", "203.0.113.9");
    key_is("2001:db8:1:2:3:4:5:6", "2001:db8:1::/48");
    key_is("2001:db8:1:ffff::1", "2001:db8:1::/48");
    key_is("2001:db8:2::1", "2001:db8:2::/48");
    key_is("::1", "::/48");
    key_is("::ffff:192.0.2.1", "192.0.2.1");
    key_is("unix:/run/luasmtpd.sock", NULL);
    key_is("", NULL);
}

static void test_sequence(void)
{
    const char *k = "198.51.100.7";
    case_begin("penalty 0 before any failure");
    CHECK(auth_penalty_delay(k, 1000) == 0, "%g", auth_penalty_delay(k, 1000));
    case_end();
    static const double want[] = {2, 4, 8, 15, 15, 15};
    for (int i = 0; i < 6; i++) {
        case_begin("after %d failures", i + 1);
        auth_penalty_failed(k, 1000);
        double d = auth_penalty_delay(k, 1000);
        CHECK(d == want[i], "delay %g, want %g", d, want[i]);
        case_end();
    }
    case_begin("the time since the last failure counts");
    CHECK(auth_penalty_delay(k, 1010) == 5, "%g", auth_penalty_delay(k, 1010));
    CHECK(auth_penalty_delay(k, 1020) == 0, "%g", auth_penalty_delay(k, 1020));
    case_end();
    case_begin("forgotten after AUTH_PENALTY_FORGET_SECS");
    auth_penalty_failed(k, 1000 + AUTH_PENALTY_FORGET_SECS + 1);
    double d = auth_penalty_delay(k, 1000 + AUTH_PENALTY_FORGET_SECS + 1);
    CHECK(d == 2, "delay %g (the count started over)", d);
    case_end();
    case_begin("a success forgives");
    auth_penalty_succeeded(k);
    CHECK(auth_penalty_delay(k, 1000 + AUTH_PENALTY_FORGET_SECS + 1) == 0, "not forgiven");
    case_end();
    case_begin("another address is not penalised");
    auth_penalty_failed("198.51.100.8", 1000);
    CHECK(auth_penalty_delay("198.51.100.9", 1000) == 0, "shares a count");
    case_end();
}

static void test_bounded(void)
{
    /* Ten times the slots: the table keeps working and the most recent
     * addresses are remembered (the oldest in a set is the one replaced). */
    char key[64];
    for (int i = 0; i < 10 * AUTH_PENALTY_SLOTS; i++) {
        snprintf(key, sizeof key, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        auth_penalty_failed(key, 5000 + i * 0.001);
    }
    case_begin("the last address failed is remembered");
    CHECK(auth_penalty_delay(key, 5000 + 10 * AUTH_PENALTY_SLOTS * 0.001) > 0, "forgotten");
    case_end();
    case_begin("the pause is in [0, 1)");
    for (int i = 0; i < 1000; i++) {
        double p = auth_fail_pause();
        CHECK(p >= 0 && p < AUTH_FAIL_PAUSE_MAX_SECS, "%g", p);
    }
    case_end();
}

int main(void)
{
    test_keys();
    test_sequence();
    test_bounded();
    return check_report();
}
