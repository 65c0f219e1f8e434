/* auth.h — the AUTH command (auth-api.md 4): the checks in their order,
 * mechanism lookup, handle_AUTH, running the mechanism on a coroutine, 334
 * challenges and their responses (the "*" cancel, strict base64, the
 * 12288-octet limit), and turning an AuthResult into the reply. Must not
 * decide credentials: Lua does. */
#ifndef LUASMTPD_AUTH_H
#define LUASMTPD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct session;

/* Handles "AUTH <arg>" (arg NULL or empty when absent). May resume Lua. */
struct mechanism;

void auth_command(struct session *s, const char *arg, size_t len);

/* Sends "334 " + base64(challenge) (raw when !encode) and makes the
 * client's next line the hook's wait (session_await_line), decoded here.
 * Called by server:challenge_auth() after hook_wait_begin, before it yields. */
void auth_send_challenge(struct session *s, const char *challenge, size_t n, bool encode,
                         bool log_response);

/* True if mechanism m may be offered and used on s now (mechanisms.md 2):
 * -PLUS only on TLS with a channel binding we check, EXTERNAL only with a
 * verified client certificate. */
bool auth_mechanism_available(const struct session *s, const struct mechanism *m);

/* Channel-binding data for SCRAM -PLUS (type "tls-unique" or
 * "tls-server-end-point"): its length written to out (TLS_BINDING_MAX
 * bytes), or 0 when s has none of that type. */
size_t auth_channel_binding(const struct session *s, const char *type, unsigned char *out);

/* Whether an auth_fail_penalty hold keeps s from reading input. */
bool auth_holding(const struct session *s);

/* Stops an auth_fail_penalty hold and drops its held reply (close). */
void auth_cancel_hold(struct session *s);

/* Keeps (a copy of at most AUTH_LOGIN_LOG_MAX bytes of) the login the
 * running AUTH's mechanism names, for the failure log line. False if
 * memory ran out. */
bool auth_login_keep(struct session *s, const char *login, size_t n);

/* Session teardown: stops a hold, wipes and frees what an AUTH attempt
 * remembered (secrets, the initial response) and frees the login. */
void auth_session_free(struct session *s);

#endif
