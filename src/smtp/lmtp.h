/* lmtp.h — LMTP (RFC 2033) as a verb table a listener passes to
 * session_new instead of verbs_smtp. */
#ifndef LUASMTPD_LMTP_H
#define LUASMTPD_LMTP_H

#include "session.h"

/* LHLO for HELO/EHLO, one reply per recipient after DATA (delivery.md 4). */
extern const struct verb_table verbs_lmtp;

#endif
