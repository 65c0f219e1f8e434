/* fsdeliver.c — Maildir and locked-append delivery (see fsdeliver.h). Runs
 * on pool threads: blocking calls are the point; nothing here may touch the
 * loop or Lua. The Maildir name follows the maildir(5) convention
 * (time.MusecPpidQn.host), unique across processes by pid and across the
 * pool's threads by an atomic counter; the file is created with O_EXCL. */
#include "fsdeliver.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static unsigned long fsdeliver_counter;

static int fail(char *err, size_t errlen, const char *what, const char *path)
{
    snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
    return -1;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int ensure_dir(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST) return 0;
    return -1;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int fsdeliver_maildir(const char *dir, const char *data, size_t len, char *name, size_t namelen,
                      char *err, size_t errlen)
{
    char tmp[4096], new[4096], sub[4096];
    const char *subs[] = {"", "/tmp", "/new", "/cur"};
    for (int i = 0; i < 4; i++) {
        snprintf(sub, sizeof sub, "%s%s", dir, subs[i]);
        if (ensure_dir(sub)) return fail(err, errlen, "mkdir", sub);
    }
    char host[256];
    if (gethostname(host, sizeof host - 1)) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    /* maildir(5): '/' and ':' in the host part are encoded. */
    for (char *p = host; *p; p++)
        if (*p == '/' || *p == ':') *p = '_';
    struct timeval tv;
    gettimeofday(&tv, NULL);
    unsigned long n = __atomic_add_fetch(&fsdeliver_counter, 1, __ATOMIC_RELAXED);
    snprintf(name, namelen, "%lld.M%ldP%ldQ%lu.%s", (long long)tv.tv_sec, (long)tv.tv_usec,
             (long)getpid(), n, host);
    snprintf(tmp, sizeof tmp, "%s/tmp/%s", dir, name);
    snprintf(new, sizeof new, "%s/new/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return fail(err, errlen, "open", tmp);
    if (write_all(fd, data, len) || fsync(fd)) {
        fail(err, errlen, "write", tmp);
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd)) {
        fail(err, errlen, "close", tmp);
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, new)) {
        fail(err, errlen, "rename to", new);
        unlink(tmp);
        return -1;
    }
    snprintf(sub, sizeof sub, "%s/new", dir);
    if (fsync_dir(sub)) return fail(err, errlen, "fsync", sub);
    return 0;
}

int fsdeliver_append(const char *path, const char *data, size_t len, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return fail(err, errlen, "open", path);
    struct flock lk = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    /* An open-file-description lock: it excludes the pool's other threads
     * as well as other processes (a classic POSIX lock is per process, so
     * two threads of ours would both hold it), and conflicts with the
     * fcntl locks of other mbox writers. F_OFD_SETLK with retries rather
     * than waiting: a lock held forever must not hold a thread forever. */
    int tries = FSDELIVER_LOCK_WAIT * 20;
    while (fcntl(fd, F_OFD_SETLK, &lk) < 0) {
        if ((errno != EACCES && errno != EAGAIN && errno != EINTR) || --tries <= 0) {
            int e = errno;
            close(fd);
            if (e == EACCES || e == EAGAIN) {
                snprintf(err, errlen, "mailbox locked");
                return -1;
            }
            errno = e;
            return fail(err, errlen, "lock", path);
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    struct stat st;
    if (fstat(fd, &st)) {
        fail(err, errlen, "stat", path);
        close(fd);
        return -1;
    }
    if (write_all(fd, data, len) || fsync(fd)) {
        fail(err, errlen, "write", path);
        if (ftruncate(fd, st.st_size) == 0) fsync(fd);
        close(fd); /* releases the lock */
        return -1;
    }
    if (close(fd)) return fail(err, errlen, "close", path);
    return 0;
}
