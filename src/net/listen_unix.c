/* listen_unix.c — UNIX-domain listening sockets (see listen_unix.h). Must
 * not know about sessions or options: the caller says what mode to use. */
#include "listen_unix.h"

#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Something answers on path: another server owns it. Refused or missing
 * means the file (if any) is stale. */
static bool someone_listens(const struct sockaddr_un *sa, socklen_t len)
{
    /* Non-blocking: a listener with a full backlog answers EAGAIN at once
     * (it is live) rather than holding up the start. */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    bool live = connect(fd, (const struct sockaddr *)sa, len) == 0 || errno == EAGAIN;
    close(fd);
    return live;
}

int listen_unix(const char *path, unsigned mode, bool bind_only, struct listen_unix_file *file,
                char *err, size_t errlen)
{
    struct sockaddr_un sa = {0};
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof sa.sun_path) {
        snprintf(err, errlen, "unix:%s: a socket path must be 1 to %zu bytes", path,
                 sizeof sa.sun_path - 1);
        return -1;
    }
    memcpy(sa.sun_path, path, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "unix:%s: exists and is not a socket; not replacing it", path);
            return -1;
        }
        if (someone_listens(&sa, len)) {
            snprintf(err, errlen,
                     "unix:%s: another server is listening on this socket; not replacing it", path);
            return -1;
        }
        if (unlink(path) && errno != ENOENT) {
            snprintf(err, errlen, "unix:%s: cannot remove the stale socket: %s", path,
                     strerror(errno));
            return -1;
        }
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "unix:%s: socket: %s", path, strerror(errno));
        return -1;
    }
    /* No one can connect before listen(), so setting the mode between bind
     * and listen leaves no window with the umask's bits. */
    const char *step = "bind";
    if (bind(fd, (const struct sockaddr *)&sa, len)) goto fail;
    step = "chmod";
    if (chmod(path, mode)) goto fail_bound;
    step = "stat";
    if (stat(path, &st)) goto fail_bound;
    step = "listen";
    if (!bind_only && listen(fd, SOMAXCONN)) goto fail_bound;
    snprintf(file->path, sizeof file->path, "%s", path);
    file->dev = st.st_dev;
    file->ino = st.st_ino;
    return fd;
fail_bound:
    snprintf(err, errlen, "unix:%s: %s: %s", path, step, strerror(errno));
    unlink(path);
    close(fd);
    return -1;
fail:
    snprintf(err, errlen, "unix:%s: %s: %s", path, step, strerror(errno));
    close(fd);
    return -1;
}

void listen_unix_remove(const struct listen_unix_file *file)
{
    struct stat st;
    if (!file->path[0] || lstat(file->path, &st)) return;
    if (S_ISSOCK(st.st_mode) && st.st_dev == file->dev && st.st_ino == file->ino &&
        unlink(file->path))
        log_msg(LOG_WARN, NULL, "cannot remove unix:%s: %s (the next start replaces it)",
                file->path, strerror(errno));
}

bool listen_unix_peer(int fd, long *pid, long *uid, long *gid)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len)) return false;
    *pid = (long)cred.pid;
    *uid = (long)cred.uid;
    *gid = (long)cred.gid;
    return true;
}
