/* script_store.c — a memfd holding one script behind a sequence-lock
 * header: the writer makes the sequence odd, writes, then makes it even; a
 * reader retries while it is odd or changed under it. Reads and writes go
 * through pread/pwrite, so the store can grow without remapping and a
 * reader needs nothing but the inherited descriptor. Must not know Lua. */
#include "script_store.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct store_header {
    uint64_t seq; /* odd while a write is under way */
    uint64_t len;
};

/* Bounds a reader that keeps meeting writes: 2 s of 1 ms pauses. */
#define STORE_READ_TRIES 2000

int script_store_create(char *err, size_t errlen)
{
    int fd = memfd_create("luasmtpd-script", MFD_CLOEXEC);
    struct store_header h = {0, 0};
    if (fd < 0 || pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        snprintf(err, errlen, "cannot create the script store: %s", strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

static bool write_all(int fd, const void *p, size_t n, off_t off)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = pwrite(fd, c, n, off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        c += w, n -= (size_t)w, off += w;
    }
    return true;
}

static bool read_all(int fd, void *p, size_t n, off_t off)
{
    char *c = p;
    while (n > 0) {
        ssize_t r = pread(fd, c, n, off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        c += r, n -= (size_t)r, off += r;
    }
    return true;
}

bool script_store_write(int fd, const char *src, size_t len, char *err, size_t errlen)
{
    struct store_header h;
    if (!read_all(fd, &h, sizeof h, 0)) goto failed;
    h.seq |= 1; /* odd: readers wait */
    if (!write_all(fd, &h, sizeof h, 0)) goto failed;
    if (ftruncate(fd, (off_t)(sizeof h + len)) || !write_all(fd, src, len, sizeof h)) goto failed;
    h.seq++;
    h.len = len;
    if (!write_all(fd, &h, sizeof h, 0)) goto failed;
    return true;
failed:
    snprintf(err, errlen, "cannot write the script store: %s", strerror(errno));
    return false;
}

char *script_store_read(int fd, size_t *len, char *err, size_t errlen)
{
    for (int i = 0; i < STORE_READ_TRIES; i++) {
        struct store_header a, b;
        if (!read_all(fd, &a, sizeof a, 0)) break;
        if (!(a.seq & 1) && a.seq > 0) {
            char *src = malloc(a.len + 1);
            if (!src) {
                snprintf(err, errlen, "out of memory");
                return NULL;
            }
            if (read_all(fd, src, a.len, sizeof a) && read_all(fd, &b, sizeof b, 0) &&
                b.seq == a.seq) {
                src[a.len] = '\0';
                *len = a.len;
                return src;
            }
            free(src);
        }
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    snprintf(err, errlen, "cannot read the script store%s%s", errno ? ": " : "",
             errno ? strerror(errno) : " (no script stored)");
    return NULL;
}
