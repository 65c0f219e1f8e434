/* listen_unix.h — UNIX-domain listening sockets: creating one in place of
 * a stale socket file (never over a live one), and removing it again only
 * while it is still the file this process made. Knows no SMTP. */
#ifndef LUASMTPD_LISTEN_UNIX_H
#define LUASMTPD_LISTEN_UNIX_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* sun_path's size on Linux, NUL included. */
#define LISTEN_UNIX_PATH_MAX 108

/* What identifies the socket file made by listen_unix. */
struct listen_unix_file {
    char path[LISTEN_UNIX_PATH_MAX];
    dev_t dev;
    ino_t ino;
};

/* Creates, binds (mode: permission bits of the file) and, unless
 * bind_only, listens on a non-blocking UNIX stream socket at path. A
 * socket file already there is replaced only if connect() to it is refused
 * (nothing listens: a stale file); a live socket or a file of another kind
 * is an error. Returns the descriptor (the caller owns it) and fills *file,
 * or -1 with a message in err. */
int listen_unix(const char *path, unsigned mode, bool bind_only, struct listen_unix_file *file,
                char *err, size_t errlen);

/* Removes the socket file if it is still the one listen_unix made (same
 * device and inode): another process may have replaced it meanwhile. A
 * failure (a directory the process may no longer write to after dropping
 * privileges) is logged; the stale file is replaced at the next start. */
void listen_unix_remove(const struct listen_unix_file *file);

/* What the kernel says about a UNIX-domain client (SO_PEERCRED); false
 * when it cannot tell. */
bool listen_unix_peer(int fd, long *pid, long *uid, long *gid);

#endif
