/* lua_session.h — the Lua side of one session: the `server` handle box and
 * the `session` / `envelope` tables hooks receive (auth-api.md 3). C keeps
 * mirrors of the fields it checks (host_name, authenticated, mail_from,
 * rcpt count) and re-reads them after every hook, since hooks may set them. */
#ifndef LUASMTPD_LUA_SESSION_H
#define LUASMTPD_LUA_SESSION_H

#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

struct session;

enum lsession_table { LS_SESSION, LS_ENVELOPE };

/* Creates the server box and both tables. Returns false on memory errors. */
bool lsession_open(struct session *s);
/* Clears the server box (its methods then raise "session is closed") and
 * drops the tables. */
void lsession_close(struct session *s);
/* A fresh envelope table. */
void lsession_new_envelope(struct session *s);
/* A fresh session table (after STARTTLS: RFC 3207 4.2 forgets everything). */
void lsession_new_session(struct session *s);
/* session.ssl = { version = ..., cipher = ..., peercert = pem or nil,
 * resumed = true if the handshake resumed an earlier TLS session }. */
void lsession_set_ssl(struct session *s, const char *version, const char *cipher,
                      const char *peer_pem, bool resumed);

struct proxy_info;
/* session.proxy_data from a parsed PROXY header (aiosmtpd's ProxyData
 * names), and pushes the same table onto L for handle_PROXY. */
void lsession_set_proxy_data(struct session *s, lua_State *L, const struct proxy_info *pi,
                             const char *raw, size_t raw_len);

/* Pushes server, session, envelope onto L (the hook's first three args). */
void lsession_push_args(struct session *s, lua_State *L);
void lsession_push_table(struct session *s, lua_State *L, enum lsession_table t);

/* Re-reads the C mirrors from the tables (after a hook ran), through the
 * tables' metamethods in a protected call. On an error (a script's strict
 * __index) returns false, leaves the mirrors as they were and, if co is
 * given, pushes the message twice onto co (error value, then log text: what
 * session_reply_hook_error reads). */
bool lsession_sync(struct session *s, lua_State *co);
/* The set/append functions write raw: C owns those fields. */

void lsession_set_string(struct session *s, enum lsession_table t, const char *key,
                         const char *v, size_t n);
void lsession_set_bool(struct session *s, enum lsession_table t, const char *key, bool v);
/* Appends the whitespace-separated words of opts to the array field key. */
void lsession_append_words(struct session *s, enum lsession_table t, const char *key,
                           const char *opts, size_t n);
/* Appends one string to the array field key. */
void lsession_append_string(struct session *s, enum lsession_table t, const char *key,
                            const char *v, size_t n);

/* Pushes a table of whitespace-separated words. */
void lsession_push_words(lua_State *L, const char *p, size_t n);

#endif
