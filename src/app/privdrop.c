/* privdrop.c — owns the switch from root to an unprivileged user after the
 * listeners are bound (aiosmtpd's setuid to nobody, done fully: groups,
 * gid, uid, then a check that root is gone). Must not bind sockets, load Lua
 * or decide when it is called: main.c calls it once listeners exist. */
#include "privdrop.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define DEFAULT_USER "nobody"

static bool lookup_group(const char *name, gid_t *gid, char *err, size_t errlen)
{
    struct group *gr = getgrnam(name);
    if (gr) {
        *gid = gr->gr_gid;
        return true;
    }
    /* A numeric group id with no name in /etc/group is still a group. */
    char *end;
    unsigned long n = strtoul(name, &end, 10);
    if (*name && !*end) {
        *gid = (gid_t)n;
        return true;
    }
    snprintf(err, errlen, "--user: no such group '%s'", name);
    return false;
}

bool privdrop_resolve(struct privdrop *pd, const char *spec, bool stay_root, char *err,
                      size_t errlen)
{
    memset(pd, 0, sizeof *pd);
    if (stay_root) {
        if (spec) {
            snprintf(err, errlen, "--user and -n/--no-setuid contradict each other");
            return false;
        }
        return true;
    }
    /* Not root and nothing asked: there is nothing to drop or look up. */
    if (!spec && geteuid() != 0) return true;
    char user[64], group[64] = "";
    const char *colon = spec ? strchr(spec, ':') : NULL;
    size_t ulen = spec ? (colon ? (size_t)(colon - spec) : strlen(spec)) : strlen(DEFAULT_USER);
    if (ulen == 0 || ulen >= sizeof user ||
        (colon && (!colon[1] || strlen(colon + 1) >= sizeof group))) {
        snprintf(err, errlen, "--user expects USER or USER:GROUP, got '%s'", spec);
        return false;
    }
    memcpy(user, spec ? spec : DEFAULT_USER, ulen);
    user[ulen] = '\0';
    if (colon) snprintf(group, sizeof group, "%s", colon + 1);
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        snprintf(err, errlen, "--user: no such user '%s'%s", user,
                 spec ? "" : " (start with -n to stay root, or --user USER)");
        return false;
    }
    snprintf(pd->user, sizeof pd->user, "%s", pw->pw_name);
    pd->uid = pw->pw_uid;
    pd->gid = pw->pw_gid; /* the user's primary group: nogroup for nobody */
    if (*group && !lookup_group(group, &pd->gid, err, errlen)) return false;
    if (geteuid() != 0) {
        /* Nothing to drop; but a --user we cannot become is a mistake worth
         * stopping for rather than running as someone else. */
        if (spec && (pd->uid != geteuid() || (*group && pd->gid != getegid()))) {
            snprintf(err, errlen, "--user %s needs root (running as uid %d gid %d)", spec,
                     (int)geteuid(), (int)getegid());
            return false;
        }
        return true;
    }
    pd->active = true;
    return true;
}

bool privdrop_apply(const struct privdrop *pd, char *err, size_t errlen)
{
    if (!pd->active) return true;
    int pdeath = 0;
    prctl(PR_GET_PDEATHSIG, &pdeath);
    /* Order matters: groups and gid need root, so uid goes last. */
    if (initgroups(pd->user, pd->gid) || setgid(pd->gid) || setuid(pd->uid)) {
        snprintf(err, errlen, "cannot switch to user %s (uid %d gid %d): %s", pd->user,
                 (int)pd->uid, (int)pd->gid, strerror(errno));
        return false;
    }
    if (pd->uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
        snprintf(err, errlen, "switched to user %s but root could be regained", pd->user);
        return false;
    }
    if (getuid() != pd->uid || geteuid() != pd->uid || getgid() != pd->gid ||
        getegid() != pd->gid) {
        snprintf(err, errlen, "switch to user %s did not take", pd->user);
        return false;
    }
    if (pdeath) {
        prctl(PR_SET_PDEATHSIG, pdeath);
        /* The parent may have died before the signal was set again. */
        if (getppid() == 1) raise(pdeath);
    }
    return true;
}

/* The master stays root but reads what the workers will run (the script on
 * reload) with the dropped user's rights, so a file that user cannot read is
 * refused at validation, not later. Effective ids only, restored after. */
static gid_t saved_groups[64];
static int n_saved_groups = -1;

bool privdrop_as_user_begin(const struct privdrop *pd, char *err, size_t errlen)
{
    if (!pd->active) return true;
    n_saved_groups = getgroups(64, saved_groups);
    gid_t g = pd->gid;
    if (n_saved_groups < 0 || setgroups(1, &g) || setegid(pd->gid) || seteuid(pd->uid)) {
        snprintf(err, errlen, "cannot act as user %s: %s", pd->user, strerror(errno));
        privdrop_as_user_end(pd);
        return false;
    }
    return true;
}

void privdrop_as_user_end(const struct privdrop *pd)
{
    if (!pd->active) return;
    if (seteuid(0) || setegid(0) ||
        (n_saved_groups >= 0 && setgroups((size_t)n_saved_groups, saved_groups))) {
        /* The master cannot restart workers without root: stop loudly. */
        fprintf(stderr, "luasmtpd: cannot return to root after reading as %s: %s\n", pd->user,
                strerror(errno));
        abort();
    }
}
