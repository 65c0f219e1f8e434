/* verbs.h — the SMTP verbs as a table (OpenSMTPD's commands[]): each row is
 * a name, a state check, a hook, what the hook gets and how the command
 * proceeds with its result. A session reads its commands through the table
 * its listener chose (s->verbs), so LMTP can be a second table. */
#ifndef LUASMTPD_VERBS_H
#define LUASMTPD_VERBS_H

#include <stddef.h>

#include "session.h"

/* aiosmtpd's commands, replies and order of checks. */
extern const struct verb_table verbs_smtp;

/* Sets up a new session's command budgets from the table in s->verbs. */
void verbs_session_init(struct session *s);

/* One command line, CR/LF already stripped (aiosmtpd's _handle_client):
 * parsing, the limits every command shares, then the verb's row. May
 * resume Lua. */
void verbs_dispatch(struct session *s, const char *line, size_t len);

/* The message text of a DATA transfer is complete (or refused by the
 * reader): the table's end-of-DATA row. May resume Lua. */
void verbs_message(struct session *s);

#endif
