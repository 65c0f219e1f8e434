/* fsdeliver.h — durable local delivery for the thread pool (delivery.md 3):
 * one message into a Maildir (tmp -> new, a unique name, fsync before the
 * rename and of the directory after), or appended to a file under an fcntl
 * lock (mbox), fsync'd before it returns. Plain blocking C, meant to run on
 * a pool thread; no Lua, no loop. */
#ifndef LUASMTPD_FSDELIVER_H
#define LUASMTPD_FSDELIVER_H

#include <stddef.h>

/* How long fsdeliver_append waits for another writer's lock (seconds)
 * before it gives up with "mailbox locked". */
#define FSDELIVER_LOCK_WAIT 10

/* Delivers data[0..len) into the Maildir dir (tmp/, new/ and cur/ are
 * created when missing). On success writes the file's name (in new/) into
 * name and returns 0; on failure -1 with err set ("open tmp/...: <reason>").
 * Nothing is left in tmp/ after a failure. */
int fsdeliver_maildir(const char *dir, const char *data, size_t len, char *name, size_t namelen,
                      char *err, size_t errlen);

/* Appends data[0..len) to path (created 0600 when missing) under an
 * exclusive fcntl lock, then fsyncs. A failed write is truncated back to
 * the old size. Returns 0, or -1 with err set. */
int fsdeliver_append(const char *path, const char *data, size_t len, char *err, size_t errlen);

#endif
