/* tls_tickets.c — TLS session resumption: ticket keys and the session cache.
 * Owns the ticket secret and this process's mbedtls_ssl_cache. Must not log
 * or otherwise expose the secret or a derived key, and must not keep any
 * state that differs between workers other than the cache: a ticket issued
 * by one worker has to open on any other.
 *
 * Why our own f_ticket_write / f_ticket_parse instead of mbedtls_ssl_ticket:
 * in mbedTLS 2.28 that context draws its keys from the RNG inside each
 * process and rotates them on its own clock, and there is no API to install
 * a key, so every worker (and each restart) would reject the others'
 * tickets. Here the key for period N = time / lifetime is
 * HMAC-SHA256(secret, "luasmtpd ticket key" || N); every process computes
 * the same key without talking to the others, a ticket from period N or
 * N-1 opens, anything older or newer is a full handshake. The secret is
 * created once by the first process (the master, or a single-process server)
 * in a memfd inherited across fork + exec, so it survives reloads and worker
 * restarts and never touches the disk.
 *
 * Ticket = period (4 bytes, big-endian; the AAD) || IV (12) ||
 *          AES-256-GCM(mbedtls_ssl_session_save()) || tag (16). */
#include "tls_tickets.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/gcm.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl_cache.h>

#include "log.h"

#define TICKET_SECRET_LEN 32
#define TICKET_IV_LEN 12
#define TICKET_TAG_LEN 16
#define TICKET_NAME_LEN 4
#define TICKET_FD_ENV "LUASMTPD_TICKET_FD"
#define TICKET_MEMFD_NAME "luasmtpd-tickets"

static unsigned char ticket_secret[TICKET_SECRET_LEN];
static bool ticket_ready;
static long ticket_lifetime = 3600; /* options.c's default until set */
static long cache_size = 1000;
static mbedtls_ssl_cache_context cache;
static bool cache_ready;
static bool *current_resumed;
static int secret_fd = -1; /* the memfd this process created (close-on-exec) */

/* Only a descriptor that really is our memfd: an environment variable left
 * over from elsewhere must not make us read some unrelated file. */
static bool ticket_fd_is_ours(int fd)
{
    char link[64], target[128];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return false;
    target[n] = '\0';
    return strncmp(target, "/memfd:" TICKET_MEMFD_NAME, strlen("/memfd:" TICKET_MEMFD_NAME)) == 0;
}

bool tls_tickets_init(char *err, size_t errlen)
{
    if (ticket_ready) return true;
    const char *env = getenv(TICKET_FD_ENV);
    if (env && *env) {
        char *end;
        long fd = strtol(env, &end, 10);
        if (!*end && fd >= 0 && fd < 65536 && ticket_fd_is_ours((int)fd) &&
            pread((int)fd, ticket_secret, sizeof ticket_secret, 0) ==
                (ssize_t)sizeof ticket_secret) {
            /* A worker needs it no further: programs its hooks start must
             * not inherit the secret. */
            close((int)fd);
            unsetenv(TICKET_FD_ENV);
            ticket_ready = true;
            return true;
        }
        /* Not ours (inherited from some other program): make our own. */
    }
    /* Close-on-exec: only workers get it (tls_tickets_prepare_child), never
     * a program a hook or the script's top level starts. */
    int fd = memfd_create(TICKET_MEMFD_NAME, MFD_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create the TLS ticket secret: %s", strerror(errno));
        return false;
    }
    if (getrandom(ticket_secret, sizeof ticket_secret, 0) != (ssize_t)sizeof ticket_secret ||
        pwrite(fd, ticket_secret, sizeof ticket_secret, 0) != (ssize_t)sizeof ticket_secret) {
        snprintf(err, errlen, "cannot create the TLS ticket secret: %s", strerror(errno));
        close(fd);
        return false;
    }
    secret_fd = fd;
    ticket_ready = true;
    return true;
}

void tls_tickets_prepare_child(void)
{
    if (secret_fd < 0) return;
    char num[16];
    snprintf(num, sizeof num, "%d", secret_fd);
    fcntl(secret_fd, F_SETFD, 0);
    setenv(TICKET_FD_ENV, num, 1);
}

void tls_tickets_set(long lifetime, long size)
{
    ticket_lifetime = lifetime;
    cache_size = size;
    if (cache_ready) {
        mbedtls_ssl_cache_set_max_entries(&cache, (int)(size > 0 ? size : 1));
        mbedtls_ssl_cache_set_timeout(&cache, (int)(lifetime > 0 ? 2 * lifetime : 7200));
    }
}

void tls_tickets_current(bool *resumed)
{
    current_resumed = resumed;
}

static uint32_t ticket_period(void)
{
    return (uint32_t)((uint64_t)time(NULL) / (uint64_t)ticket_lifetime);
}

static bool ticket_key(uint32_t period, unsigned char key[32])
{
    unsigned char msg[sizeof "luasmtpd ticket key" - 1 + 4];
    memcpy(msg, "luasmtpd ticket key", sizeof msg - 4);
    for (int i = 0; i < 4; i++)
        msg[sizeof msg - 4 + i] = (unsigned char)(period >> (24 - 8 * i));
    return mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), ticket_secret,
                           sizeof ticket_secret, msg, sizeof msg, key) == 0;
}

static int ticket_write(void *p, const mbedtls_ssl_session *session, unsigned char *start,
                        const unsigned char *end, size_t *tlen, uint32_t *lifetime)
{
    (void)p;
    *tlen = 0;
    if (!ticket_ready || ticket_lifetime <= 0) return MBEDTLS_ERR_SSL_FEATURE_UNAVAILABLE;
    size_t overhead = TICKET_NAME_LEN + TICKET_IV_LEN + TICKET_TAG_LEN;
    if (end < start || (size_t)(end - start) <= overhead) return MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
    unsigned char *state = start + TICKET_NAME_LEN + TICKET_IV_LEN;
    size_t room = (size_t)(end - start) - overhead, clen = 0;
    int r = mbedtls_ssl_session_save(session, state, room, &clen);
    if (r != 0) return r;
    uint32_t period = ticket_period();
    for (int i = 0; i < 4; i++)
        start[i] = (unsigned char)(period >> (24 - 8 * i));
    if (getrandom(start + TICKET_NAME_LEN, TICKET_IV_LEN, 0) != TICKET_IV_LEN)
        return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
    unsigned char key[32];
    mbedtls_gcm_context gcm;
    mbedtls_gcm_init(&gcm);
    r = ticket_key(period, key) ? mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 256)
                                : MBEDTLS_ERR_SSL_INTERNAL_ERROR;
    if (r == 0)
        r = mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, clen, start + TICKET_NAME_LEN,
                                      TICKET_IV_LEN, start, TICKET_NAME_LEN, state, state,
                                      TICKET_TAG_LEN, state + clen);
    mbedtls_gcm_free(&gcm);
    mbedtls_platform_zeroize(key, sizeof key);
    if (r != 0) return r;
    *tlen = overhead + clen;
    /* The client may keep it while it still opens: up to two periods. */
    *lifetime = (uint32_t)ticket_lifetime;
    return 0;
}

static int ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf, size_t len)
{
    (void)p;
    if (!ticket_ready || ticket_lifetime <= 0) return MBEDTLS_ERR_SSL_FEATURE_UNAVAILABLE;
    size_t overhead = TICKET_NAME_LEN + TICKET_IV_LEN + TICKET_TAG_LEN;
    if (len <= overhead) return MBEDTLS_ERR_SSL_BAD_INPUT_DATA;
    uint32_t period = 0;
    for (int i = 0; i < 4; i++)
        period = period << 8 | buf[i];
    uint32_t now = ticket_period();
    if (period != now && period + 1 != now) {
        log_msg(LOG_DEBUG, NULL, "TLS ticket from key period %u refused (now %u): full handshake",
                period, now);
        return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
    }
    size_t clen = len - overhead;
    unsigned char *state = buf + TICKET_NAME_LEN + TICKET_IV_LEN;
    unsigned char key[32];
    mbedtls_gcm_context gcm;
    mbedtls_gcm_init(&gcm);
    int r = ticket_key(period, key) ? mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 256)
                                    : MBEDTLS_ERR_SSL_INTERNAL_ERROR;
    if (r == 0)
        r = mbedtls_gcm_auth_decrypt(&gcm, clen, buf + TICKET_NAME_LEN, TICKET_IV_LEN, buf,
                                     TICKET_NAME_LEN, state + clen, TICKET_TAG_LEN, state, state);
    mbedtls_gcm_free(&gcm);
    mbedtls_platform_zeroize(key, sizeof key);
    if (r != 0) {
        log_msg(LOG_DEBUG, NULL, "TLS ticket does not authenticate: full handshake");
        return MBEDTLS_ERR_SSL_INVALID_MAC;
    }
    r = mbedtls_ssl_session_load(session, state, clen);
    if (r != 0) return r;
    if (current_resumed) *current_resumed = true;
    return 0;
}

static int cache_get(void *data, mbedtls_ssl_session *session)
{
    if (cache_size <= 0) return 1;
    int r = mbedtls_ssl_cache_get(data, session);
    if (r == 0 && current_resumed) *current_resumed = true;
    return r;
}

static int cache_set(void *data, const mbedtls_ssl_session *session)
{
    if (cache_size <= 0) return 1;
    int r = mbedtls_ssl_cache_set(data, session);
    if (log_enabled(LOG_DEBUG)) {
        int n = 0;
        for (const mbedtls_ssl_cache_entry *e = cache.chain; e; e = e->next)
            n++;
        log_msg(LOG_DEBUG, NULL, "TLS session cache: %d of %ld entries", n, cache_size);
    }
    return r;
}

void tls_tickets_conf(mbedtls_ssl_config *conf)
{
    if (!cache_ready) {
        mbedtls_ssl_cache_init(&cache);
        cache_ready = true;
        tls_tickets_set(ticket_lifetime, cache_size);
    }
    mbedtls_ssl_conf_session_tickets_cb(conf, ticket_write, ticket_parse, NULL);
    mbedtls_ssl_conf_session_cache(conf, &cache, cache_get, cache_set);
}
