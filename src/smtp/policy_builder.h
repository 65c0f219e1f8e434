/* policy_builder.h — builds a policy generation on a thread of its own, so
 * that a script whose top level is slow never stops the event loop (every
 * other client goes on being served while a reload loads), and hands the
 * result back on the loop. One build at a time. */
#ifndef LUASMTPD_POLICY_BUILDER_H
#define LUASMTPD_POLICY_BUILDER_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

#include "policy.h"

/* Called on the loop when a build ends: p is the new generation (the
 * callee owns its reference) or NULL with err saying why; src/len are the
 * bytes that were loaded (NULL for the embedded default), valid during the
 * call. */
typedef void (*policy_built_fn)(struct policy *p, const char *src, size_t len, const char *err,
                                void *ud);

/* Starts a build of path's script: from src (taken over, malloc'd) when
 * given, else read from path by the thread. False if a build is already
 * running (the caller queues one more) or the thread cannot start (err). */
bool policy_builder_start(struct ev_loop *loop, const char *path, char *src, size_t len,
                          const struct policy_inputs *in, policy_built_fn done, void *ud,
                          char *err, size_t errlen);

bool policy_builder_busy(void);

#endif
