/* auth.h — the AUTH command (auth-api.md 4): the checks in their order,
 * mechanism lookup, handle_AUTH, running the mechanism on a coroutine, 334
 * challenges and their responses (the "*" cancel, strict base64, the
 * 12288-octet limit), and turning an AuthResult into the reply. Must not
 * decide credentials: Lua does. */
#ifndef LUASMTPD_AUTH_H
#define LUASMTPD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

struct session;

/* Handles "AUTH <arg>" (arg NULL or empty when absent). May resume Lua. */
void auth_command(struct session *s, const char *arg, size_t len);

/* Sends "334 " + base64(challenge) (raw when !encode) and arms the wait for
 * the client's next line. Called by server:challenge_auth() before it yields. */
void auth_send_challenge(struct session *s, const char *challenge, size_t n, bool encode,
                         bool log_response);

/* The client's line for a pending challenge (too_long: it exceeded
 * AUTH_LINE_MAX and was discarded). Resumes the mechanism. May resume Lua. */
void auth_deliver_line(struct session *s, const char *line, size_t len, bool too_long);

/* Wipes and frees what an AUTH attempt remembered (session teardown). */
void auth_forget(struct session *s);

/* hook_timeout expired for a suspended AUTH hook: 454, attempt failed. */
void auth_on_hook_deadline(struct ev_loop *loop, ev_timer *w, int revents);

#endif
