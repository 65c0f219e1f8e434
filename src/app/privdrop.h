/* privdrop.h — giving up root after the listeners are bound: which user and
 * group to become (--user, default nobody), and the irreversible switch.
 * Must not bind sockets, load Lua or know about workers. */
#ifndef LUASMTPD_PRIVDROP_H
#define LUASMTPD_PRIVDROP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct privdrop {
    bool active; /* started as root and not -n: drop in privdrop_apply */
    char user[64];
    uid_t uid;
    gid_t gid;
};

/* Decides what to become. spec is "USER[:GROUP]" from --user or NULL
 * (nobody); stay_root is -n/--no-setuid. Not root: nothing to drop, and a
 * --user naming anyone but the current user is an error. Returns false with
 * a message in err. */
bool privdrop_resolve(struct privdrop *pd, const char *spec, bool stay_root, char *err,
                      size_t errlen);

/* Switches to pd's user and group (supplementary groups from initgroups)
 * and checks that root cannot be regained. Keeps the parent-death signal,
 * which the kernel clears on a credential change. Returns false with a
 * message in err; the caller must then exit. */
bool privdrop_apply(const struct privdrop *pd, char *err, size_t errlen);

/* The master (which stays root) reads a file with pd's rights between these
 * two calls: effective ids and groups only, restored by _end. No-ops when
 * nothing is dropped. */
bool privdrop_as_user_begin(const struct privdrop *pd, char *err, size_t errlen);
void privdrop_as_user_end(const struct privdrop *pd);

#endif
