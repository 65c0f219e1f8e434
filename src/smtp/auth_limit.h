/* auth_limit.h — failed-AUTH defences per client address (mechanisms.md 3):
 * the address group a failure counts to (IPv4 address, IPv6 /48), and this
 * process's penalty table (Dovecot's auth penalty: 2, 4, 8, then 15 s
 * before the next AUTH of an address that failed). Must not touch sessions
 * or Lua: auth.c asks, and holds the session itself. */
#ifndef LUASMTPD_AUTH_LIMIT_H
#define LUASMTPD_AUTH_LIMIT_H

#include <stdbool.h>
#include <stddef.h>

/* Dovecot's auth penalty (src/auth/auth-penalty.h): the first delay, the
 * most, and how long an address's failures are remembered. */
#define AUTH_PENALTY_INIT_SECS 2.0
#define AUTH_PENALTY_MAX_SECS 15.0
#define AUTH_PENALTY_FORGET_SECS 3600.0
/* OpenSMTPD's pause before a failed AUTH's 535: random, up to 1 s. */
#define AUTH_FAIL_PAUSE_MAX_SECS 1.0
/* Addresses the per-process table remembers (the oldest in a set goes). */
#define AUTH_PENALTY_SLOTS 4096

/* "203.0.113.9" -> "203.0.113.9"; "2001:db8:1:2::5" -> "2001:db8:1::/48";
 * "::ffff:192.0.2.1" -> "192.0.2.1". False (out unchanged) for anything
 * that is not an IP address (a UNIX-domain peer). out holds
 * AUTH_LIMIT_KEY_MAX bytes. */
#define AUTH_LIMIT_KEY_MAX 64
bool auth_limit_key(const char *peer, char *out);

/* Seconds the next AUTH from key must still wait at time now (0: none):
 * the penalty for its failures so far, less the time since the last one. */
double auth_penalty_delay(const char *key, double now);
/* A failed AUTH from key at now. */
void auth_penalty_failed(const char *key, double now);
/* A successful AUTH from key: its penalty is forgiven. */
void auth_penalty_succeeded(const char *key);

/* The pause before a 535: uniform in [0, AUTH_FAIL_PAUSE_MAX_SECS). */
double auth_fail_pause(void);

#endif
