/* tls.c — the TLS transport (mbedTLS 2.28, non-blocking, server side) and
 * certificate configs. The only file that includes mbedTLS headers. Must not
 * know SMTP, and must not touch watchers: conn.c arms them from the
 * want_read / want_write this file reports.
 *
 * mbedTLS contracts honoured here:
 *   - WANT_READ / WANT_WRITE can come from any call (a read may need to write
 *     and the reverse): reported through c->want_read / c->want_write;
 *   - a write that returned WANT_WRITE must be repeated with the same data and
 *     length (its record is already encrypted inside mbedTLS): tls_send
 *     remembers that length;
 *   - decrypted bytes may wait inside mbedTLS where poll cannot see them:
 *     tls_has_pending reports them, conn.c reads them before going idle. */
#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/md.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "log.h"
#include "tls_tickets.h"

struct tls_config {
    int refs;
    mbedtls_ssl_config conf;
    mbedtls_x509_crt chain;
    mbedtls_pk_context key;
    mbedtls_x509_crt client_ca;
};

/* Per-connection state: conn.tp_state while the TLS transport is active. */
struct tls_conn {
    struct tls_config *cfg; /* one reference */
    mbedtls_ssl_context ssl;
    size_t write_pending; /* length of a write mbedTLS holds after WANT_WRITE */
    bool established;
    bool resumed; /* the handshake resumed a ticket or cached session */
    /* Implicit TLS behind a PROXY header: TLS bytes that arrived with the
     * header, fed to mbedTLS before the socket. */
    struct buf early;
    char err[128];
};

/* ECDHE key exchange, AEAD only (RFC 7525 §4.2 and what RFC 8996 leaves). */
static const int tls_ciphersuites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    0,
};

static const mbedtls_ecp_group_id tls_curves[] = {
#ifdef MBEDTLS_ECP_DP_CURVE25519_ENABLED
    MBEDTLS_ECP_DP_CURVE25519,
#endif
    MBEDTLS_ECP_DP_SECP256R1,  MBEDTLS_ECP_DP_SECP384R1,
#ifdef MBEDTLS_ECP_DP_SECP521R1_ENABLED
    MBEDTLS_ECP_DP_SECP521R1,
#endif
    MBEDTLS_ECP_DP_NONE,
};

/* ------------------------------------------------------------------ random */

static mbedtls_entropy_context tls_entropy;
static mbedtls_ctr_drbg_context tls_drbg;
static pid_t tls_drbg_pid; /* the process that seeded or last reseeded; 0: none */

/* Seeds once per process. A forked worker inherits its parent's generator
 * state and would repeat the parent's (and its siblings') "random" bytes, so
 * a new pid reseeds from fresh entropy first. */
static bool tls_rng_ready(char *err, size_t errlen)
{
    pid_t pid = getpid();
    if (tls_drbg_pid == pid) return true;
    int r;
    if (tls_drbg_pid == 0) {
        static const char personal[] = "luasmtpd";
        mbedtls_entropy_init(&tls_entropy);
        mbedtls_ctr_drbg_init(&tls_drbg);
        r = mbedtls_ctr_drbg_seed(&tls_drbg, mbedtls_entropy_func, &tls_entropy,
                                  (const unsigned char *)personal, sizeof personal - 1);
    } else {
        r = mbedtls_ctr_drbg_reseed(&tls_drbg, (const unsigned char *)&pid, sizeof pid);
    }
    if (r != 0) {
        char e[100];
        mbedtls_strerror(r, e, sizeof e);
        snprintf(err, errlen, "cannot seed the TLS random generator: %s", e);
        if (tls_drbg_pid == 0) {
            mbedtls_ctr_drbg_free(&tls_drbg);
            mbedtls_entropy_free(&tls_entropy);
        }
        return false;
    }
    tls_drbg_pid = pid;
    return true;
}

/* ------------------------------------------------------------------ config */

/* mbedTLS reports a missing file as a parse error; say what the OS said. */
static bool tls_readable(const char *what, const char *path, char *err, size_t errlen)
{
    if (!path || !*path) {
        snprintf(err, errlen, "no %s file given", what);
        return false;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s file %s: %s", what, path, strerror(errno));
        return false;
    }
    fclose(f);
    return true;
}

static void tls_config_free(struct tls_config *cfg)
{
    mbedtls_ssl_config_free(&cfg->conf);
    mbedtls_x509_crt_free(&cfg->chain);
    mbedtls_x509_crt_free(&cfg->client_ca);
    mbedtls_pk_free(&cfg->key);
    free(cfg);
}

/* Parses a PEM certificate file into crt; a file with some certificates
 * mbedTLS cannot parse is refused rather than half-loaded. */
static bool tls_load_crt(mbedtls_x509_crt *crt, const char *what, const char *path, char *err,
                         size_t errlen)
{
    if (!tls_readable(what, path, err, errlen)) return false;
    int r = mbedtls_x509_crt_parse_file(crt, path);
    if (r != 0) {
        char e[100] = "";
        if (r < 0)
            mbedtls_strerror(r, e, sizeof e);
        else
            snprintf(e, sizeof e, "%d certificate(s) could not be parsed", r);
        snprintf(err, errlen, "%s file %s: %s", what, path, e);
        return false;
    }
    return true;
}

struct tls_config *tls_config_load(const char *cert_file, const char *key_file,
                                   const char *client_ca_file, char *err, size_t errlen)
{
    char e[100];
    if (!tls_rng_ready(err, errlen) || !tls_tickets_init(err, errlen)) return NULL;
    struct tls_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        snprintf(err, errlen, "out of memory loading TLS certificate %s", cert_file);
        return NULL;
    }
    cfg->refs = 1;
    mbedtls_ssl_config_init(&cfg->conf);
    mbedtls_x509_crt_init(&cfg->chain);
    mbedtls_x509_crt_init(&cfg->client_ca);
    mbedtls_pk_init(&cfg->key);

    if (!tls_load_crt(&cfg->chain, "certificate", cert_file, err, errlen)) goto fail;
    if (!tls_readable("key", key_file, err, errlen)) goto fail;
    int r = mbedtls_pk_parse_keyfile(&cfg->key, key_file, NULL);
    if (r != 0) {
        mbedtls_strerror(r, e, sizeof e);
        snprintf(err, errlen, "key file %s: %s", key_file, e);
        goto fail;
    }
    if (!mbedtls_pk_can_do(&cfg->key, MBEDTLS_PK_RSA) &&
        !mbedtls_pk_can_do(&cfg->key, MBEDTLS_PK_ECDSA)) {
        snprintf(err, errlen, "key file %s: %s keys are not supported (RSA or ECDSA only)",
                 key_file, mbedtls_pk_get_name(&cfg->key));
        goto fail;
    }
    if (mbedtls_pk_check_pair(&cfg->chain.pk, &cfg->key) != 0) {
        snprintf(err, errlen, "key file %s does not match the certificate in %s", key_file,
                 cert_file);
        goto fail;
    }
    if (client_ca_file && !tls_load_crt(&cfg->client_ca, "client CA", client_ca_file, err, errlen))
        goto fail;

    r = mbedtls_ssl_config_defaults(&cfg->conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT);
    if (r == 0) r = mbedtls_ssl_conf_own_cert(&cfg->conf, &cfg->chain, &cfg->key);
    if (r != 0) {
        mbedtls_strerror(r, e, sizeof e);
        snprintf(err, errlen, "TLS setup for certificate %s: %s", cert_file, e);
        goto fail;
    }
    mbedtls_ssl_conf_rng(&cfg->conf, mbedtls_ctr_drbg_random, &tls_drbg);
    mbedtls_ssl_conf_min_version(&cfg->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3); /* TLS 1.2 */
    mbedtls_ssl_conf_ciphersuites(&cfg->conf, tls_ciphersuites);
    mbedtls_ssl_conf_curves(&cfg->conf, tls_curves);
    tls_tickets_conf(&cfg->conf);
#ifdef MBEDTLS_SSL_RENEGOTIATION
    mbedtls_ssl_conf_renegotiation(&cfg->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
#endif
    if (client_ca_file) {
        mbedtls_ssl_conf_ca_chain(&cfg->conf, &cfg->client_ca, NULL);
        mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
    } else {
        mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_NONE);
    }
    return cfg;

fail:
    tls_config_free(cfg);
    return NULL;
}

void tls_config_hold(struct tls_config *cfg)
{
    cfg->refs++;
}

void tls_config_release(struct tls_config *cfg)
{
    if (cfg && --cfg->refs == 0) tls_config_free(cfg);
}

/* --------------------------------------------------------------- transport */

static void tls_note(struct tls_conn *t, int r)
{
    mbedtls_strerror(r, t->err, sizeof t->err);
}

static const struct transport tls_transport;

static int tls_bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    struct conn *c = ctx;
    ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0) return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    if (errno == EPIPE || errno == ECONNRESET) return MBEDTLS_ERR_NET_CONN_RESET;
    return MBEDTLS_ERR_NET_SEND_FAILED;
}

static int tls_bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    struct conn *c = ctx;
    /* Once the handshake has switched transports, our state is tp_state. */
    struct tls_conn *t = c->tp == &tls_transport ? c->tp_state : c->hs.state;
    if (t && buf_len(&t->early) > 0) {
        size_t n = buf_len(&t->early) < len ? buf_len(&t->early) : len;
        memcpy(buf, buf_head(&t->early), n);
        buf_consume(&t->early, n);
        return (int)n;
    }
    ssize_t n = recv(c->fd, buf, len, 0);
    if (n >= 0) return (int)n; /* 0: mbedTLS turns EOF into CONN_EOF */
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return MBEDTLS_ERR_SSL_WANT_READ;
    if (errno == ECONNRESET) return MBEDTLS_ERR_NET_CONN_RESET;
    return MBEDTLS_ERR_NET_RECV_FAILED;
}

/* CONN_AGAIN with the direction mbedTLS waits for, or CONN_ERROR. */
static int tls_blocked(struct conn *c, struct tls_conn *t, int r)
{
    if (r == MBEDTLS_ERR_SSL_WANT_READ) {
        c->want_read = true;
        return CONN_AGAIN;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_WRITE) {
        c->want_write = true;
        return CONN_AGAIN;
    }
    tls_note(t, r);
    return CONN_ERROR;
}

static ssize_t tls_recv(struct conn *c, void *buf, size_t len)
{
    struct tls_conn *t = c->tp_state;
    int r = mbedtls_ssl_read(&t->ssl, buf, len);
    if (r > 0) return r;
    /* close_notify, or EOF without it (mbedTLS maps CONN_EOF to 0): SMTP
     * frames its own data, so a truncation cannot pass as a message end. */
    if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || r == MBEDTLS_ERR_SSL_CONN_EOF) return 0;
    return tls_blocked(c, t, r);
}

/* How much of len one mbedtls_ssl_write may take, for the server and the
 * client side alike. After WANT_WRITE mbedTLS holds the encrypted record
 * and answers a repeated write with the length it is given, not the one it
 * encrypted: the repeat must be the same length (pending). Otherwise at
 * most one record. False (err set) when the caller repeats with less. */
static bool tls_write_length(mbedtls_ssl_context *ssl, size_t pending, size_t *len, char *err,
                             size_t errlen)
{
    if (pending) {
        if (*len < pending) {
            snprintf(err, errlen, "TLS write repeated with less data");
            return false;
        }
        *len = pending;
        return true;
    }
    int max = mbedtls_ssl_get_max_out_record_payload(ssl);
    if (max > 0 && *len > (size_t)max) *len = (size_t)max;
    return true;
}

static ssize_t tls_send(struct conn *c, const void *buf, size_t len)
{
    struct tls_conn *t = c->tp_state;
    if (!tls_write_length(&t->ssl, t->write_pending, &len, t->err, sizeof t->err))
        return CONN_ERROR;
    int r = mbedtls_ssl_write(&t->ssl, buf, len);
    if (r >= 0) {
        t->write_pending = 0;
        return r;
    }
    int rc = tls_blocked(c, t, r);
    if (rc == CONN_AGAIN) t->write_pending = len;
    return rc;
}

static bool tls_has_pending(struct conn *c)
{
    struct tls_conn *t = c->tp_state;
    return buf_len(&t->early) > 0 || mbedtls_ssl_get_bytes_avail(&t->ssl) > 0 ||
           mbedtls_ssl_check_pending(&t->ssl);
}

/* One non-blocking attempt: a peer that does not read gets no goodbye. */
static void tls_shutdown(struct conn *c)
{
    struct tls_conn *t = c->tp_state;
    if (t->established) mbedtls_ssl_close_notify(&t->ssl);
}

static void tls_state_free(struct tls_conn *t)
{
    mbedtls_ssl_free(&t->ssl);
    tls_config_release(t->cfg);
    buf_free(&t->early);
    free(t);
}

static void tls_free_state(struct conn *c)
{
    tls_state_free(c->tp_state);
    c->tp_state = NULL;
}

static int tls_handshake(struct conn *c)
{
    struct tls_conn *t = c->tp_state;
    tls_tickets_current(&t->resumed);
    int r = mbedtls_ssl_handshake(&t->ssl);
    tls_tickets_current(NULL);
    if (r == 0) {
        t->established = true;
        return 1;
    }
    r = tls_blocked(c, t, r);
    if (r == CONN_ERROR) log_msg(LOG_DEBUG, NULL, "TLS handshake failed: %s", t->err);
    return r;
}

static const struct transport tls_transport = {
    "tls", tls_recv, tls_send, tls_has_pending, tls_shutdown, tls_free_state, tls_handshake,
};

static bool tls_begin(struct conn *c, struct tls_config *cfg, double timeout,
                      void (*on_done)(struct conn *c, void *owner, bool ok), bool keep_input);

bool tls_start(struct conn *c, struct tls_config *cfg, double timeout,
               void (*on_done)(struct conn *c, void *owner, bool ok))
{
    return tls_begin(c, cfg, timeout, on_done, false);
}

bool tls_start_implicit(struct conn *c, struct tls_config *cfg, double timeout,
                        void (*on_done)(struct conn *c, void *owner, bool ok))
{
    return tls_begin(c, cfg, timeout, on_done, true);
}

static bool tls_begin(struct conn *c, struct tls_config *cfg, double timeout,
                      void (*on_done)(struct conn *c, void *owner, bool ok), bool keep_input)
{
    char err[160];
    if (!cfg || c->tp == &tls_transport) return false;
    if (!tls_rng_ready(err, sizeof err)) {
        log_msg(LOG_ERROR, NULL, "%s", err);
        return false;
    }
    struct tls_conn *t = calloc(1, sizeof *t);
    if (!t) return false;
    mbedtls_ssl_init(&t->ssl);
    t->cfg = cfg;
    tls_config_hold(cfg);
    int r = mbedtls_ssl_setup(&t->ssl, &cfg->conf);
    if (r != 0) {
        tls_note(t, r);
        log_msg(LOG_ERROR, NULL, "TLS session setup failed: %s", t->err);
        tls_state_free(t);
        return false;
    }
    mbedtls_ssl_set_bio(&t->ssl, c, tls_bio_send, tls_bio_recv, NULL);
    /* Implicit TLS: what arrived already (after a PROXY header) is the
     * start of the TLS stream, not plaintext to discard. */
    if (keep_input && !buf_append(&t->early, buf_head(&c->in), buf_len(&c->in))) {
        tls_state_free(t);
        return false;
    }
    if (!conn_start_handshake(c, &tls_transport, t, timeout, on_done)) {
        tls_state_free(t);
        return false;
    }
    return true;
}

bool conn_is_tls(const struct conn *c)
{
    if (c->tp != &tls_transport) return false;
    const struct tls_conn *t = c->tp_state;
    return t->established;
}

bool tls_resumed(const struct conn *c)
{
    if (!conn_is_tls(c)) return false;
    const struct tls_conn *t = c->tp_state;
    return t->resumed;
}

void tls_set_resumption(long ticket_lifetime, long cache_size)
{
    tls_tickets_set(ticket_lifetime, cache_size);
}

const char *tls_error(const struct conn *c)
{
    if (c->tp != &tls_transport) return "";
    const struct tls_conn *t = c->tp_state;
    if (t->err[0]) return t->err;
    if (!t->established && !c->hs.active) return "handshake did not complete";
    return "";
}

size_t tls_channel_binding(const struct conn *c, enum tls_binding type, unsigned char *out,
                           size_t cap)
{
    if (!conn_is_tls(c) || cap < TLS_BINDING_MAX) return 0;
    const struct tls_conn *t = c->tp_state;
    if (type == TLS_BINDING_UNIQUE) {
#if defined(MBEDTLS_SSL_RENEGOTIATION)
        /* mbedTLS keeps both Finished messages for renegotiation (RFC 5746);
         * renegotiation itself is disabled, so they stay the first ones. */
        if (t->ssl.minor_ver != MBEDTLS_SSL_MINOR_VERSION_3) return 0;
        size_t n = t->ssl.verify_data_len;
        if (n == 0 || n > cap) return 0;
        memcpy(out, t->resumed ? t->ssl.own_verify_data : t->ssl.peer_verify_data, n);
        return n;
#else
        return 0;
#endif
    }
    if (type != TLS_BINDING_SERVER_END_POINT) return 0;
    const mbedtls_x509_crt *crt = &t->cfg->chain;
    mbedtls_md_type_t md = crt->sig_md;
    if (md == MBEDTLS_MD_MD5 || md == MBEDTLS_MD_SHA1 || md == MBEDTLS_MD_NONE)
        md = MBEDTLS_MD_SHA256;
    const mbedtls_md_info_t *info = mbedtls_md_info_from_type(md);
    if (!info || mbedtls_md_get_size(info) > cap) return 0;
    if (mbedtls_md(info, crt->raw.p, crt->raw.len, out) != 0) return 0;
    return mbedtls_md_get_size(info);
}

/* The verified client certificate as PEM, or NULL. */
static char *tls_peer_pem(struct tls_conn *t)
{
    static const char begin[] = "-----BEGIN CERTIFICATE-----\n";
    static const char end[] = "-----END CERTIFICATE-----\n";
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&t->ssl);
    /* With VERIFY_OPTIONAL a certificate that failed verification still gets
     * here; a script must never see it as the client's identity. */
    if (!crt || mbedtls_ssl_get_verify_result(&t->ssl) != 0) return NULL;
    size_t need = 0;
    mbedtls_pem_write_buffer(begin, end, crt->raw.p, crt->raw.len, NULL, 0, &need);
    if (need == 0) return NULL;
    unsigned char *pem = malloc(need);
    if (!pem) return NULL;
    if (mbedtls_pem_write_buffer(begin, end, crt->raw.p, crt->raw.len, pem, need, &need) != 0) {
        free(pem);
        return NULL;
    }
    return (char *)pem;
}

bool tls_info(struct conn *c, char *version, size_t vlen, char *cipher, size_t clen,
              char **peer_pem)
{
    if (peer_pem) *peer_pem = NULL;
    if (vlen) version[0] = '\0';
    if (clen) cipher[0] = '\0';
    if (!conn_is_tls(c)) return false;
    struct tls_conn *t = c->tp_state;
    if (vlen) snprintf(version, vlen, "%s", mbedtls_ssl_get_version(&t->ssl));
    if (clen) snprintf(cipher, clen, "%s", mbedtls_ssl_get_ciphersuite(&t->ssl));
    if (peer_pem) *peer_pem = tls_peer_pem(t);
    return true;
}

/* ------------------------------------------------------------ client side */

struct tls_client_config {
    int refs;
    bool cached;
    bool verify;
    char *cafile; /* NULL: TLS_CLIENT_CA_BUNDLE */
    mbedtls_ssl_config conf;
    mbedtls_x509_crt ca;
    struct tls_client_config *next;
};

struct tls_session {
    mbedtls_ssl_session s;
};

struct tls_client {
    struct tls_client_config *cfg; /* one reference */
    int fd;
    mbedtls_ssl_context ssl;
    size_t write_pending;
    bool established;
    char err[256];
};

/* Scripts name a handful of CA files; a cache that a script filling it
 * with paths cannot grow without bound. */
#define TLS_CLIENT_CACHE_MAX 16
static struct tls_client_config *tls_client_cache;
static int tls_client_cached;

static void tls_client_config_free(struct tls_client_config *cfg)
{
    mbedtls_ssl_config_free(&cfg->conf);
    mbedtls_x509_crt_free(&cfg->ca);
    free(cfg->cafile);
    free(cfg);
}

static bool tls_same_file(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

struct tls_client_config *tls_client_config_get(const char *cafile, bool verify, char *err,
                                                size_t errlen)
{
    if (!verify) cafile = NULL; /* no chain is checked: one config for all */
    for (struct tls_client_config *c = tls_client_cache; c; c = c->next)
        if (c->verify == verify && tls_same_file(c->cafile, cafile)) {
            c->refs++;
            return c;
        }
    if (!tls_rng_ready(err, errlen)) return NULL;
    struct tls_client_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg || (cafile && !(cfg->cafile = strdup(cafile)))) {
        free(cfg);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    cfg->refs = 1;
    cfg->verify = verify;
    mbedtls_ssl_config_init(&cfg->conf);
    mbedtls_x509_crt_init(&cfg->ca);
    if (verify) {
        const char *path = cafile ? cafile : TLS_CLIENT_CA_BUNDLE;
        if (!tls_load_crt(&cfg->ca, "CA", path, err, errlen)) {
            tls_client_config_free(cfg);
            return NULL;
        }
    }
    int r = mbedtls_ssl_config_defaults(&cfg->conf, MBEDTLS_SSL_IS_CLIENT,
                                        MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (r != 0) {
        char e[100];
        mbedtls_strerror(r, e, sizeof e);
        snprintf(err, errlen, "TLS client setup: %s", e);
        tls_client_config_free(cfg);
        return NULL;
    }
    mbedtls_ssl_conf_rng(&cfg->conf, mbedtls_ctr_drbg_random, &tls_drbg);
    mbedtls_ssl_conf_min_version(&cfg->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3); /* TLS 1.2 */
#ifdef MBEDTLS_SSL_RENEGOTIATION
    mbedtls_ssl_conf_renegotiation(&cfg->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
#endif
    if (verify) {
        mbedtls_ssl_conf_ca_chain(&cfg->conf, &cfg->ca, NULL);
        mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    } else {
        mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_NONE);
    }
    if (tls_client_cached < TLS_CLIENT_CACHE_MAX) {
        cfg->cached = true;
        cfg->refs++; /* the cache's */
        cfg->next = tls_client_cache;
        tls_client_cache = cfg;
        tls_client_cached++;
    }
    return cfg;
}

void tls_client_config_release(struct tls_client_config *cfg)
{
    if (cfg && --cfg->refs == 0) tls_client_config_free(cfg);
}

void tls_session_free(struct tls_session *s)
{
    if (!s) return;
    mbedtls_ssl_session_free(&s->s);
    free(s);
}

static int tls_client_bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    struct tls_client *t = ctx;
    ssize_t n = send(t->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0) return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    if (errno == EPIPE || errno == ECONNRESET) return MBEDTLS_ERR_NET_CONN_RESET;
    return MBEDTLS_ERR_NET_SEND_FAILED;
}

static int tls_client_bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    struct tls_client *t = ctx;
    ssize_t n = recv(t->fd, buf, len, 0);
    if (n >= 0) return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return MBEDTLS_ERR_SSL_WANT_READ;
    if (errno == ECONNRESET) return MBEDTLS_ERR_NET_CONN_RESET;
    return MBEDTLS_ERR_NET_RECV_FAILED;
}

struct tls_client *tls_client_new(int fd, struct tls_client_config *cfg, const char *server_name,
                                  const struct tls_session *session, char *err, size_t errlen)
{
    char e[100];
    /* A forked process reseeds before its first handshake. */
    if (!tls_rng_ready(err, errlen)) return NULL;
    struct tls_client *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->fd = fd;
    mbedtls_ssl_init(&t->ssl);
    int r = mbedtls_ssl_setup(&t->ssl, &cfg->conf);
    if (r == 0 && server_name) r = mbedtls_ssl_set_hostname(&t->ssl, server_name);
    if (r == 0 && session) r = mbedtls_ssl_set_session(&t->ssl, &session->s);
    if (r != 0) {
        mbedtls_strerror(r, e, sizeof e);
        snprintf(err, errlen, "TLS setup: %s", e);
        mbedtls_ssl_free(&t->ssl);
        free(t);
        return NULL;
    }
    cfg->refs++;
    t->cfg = cfg;
    mbedtls_ssl_set_bio(&t->ssl, t, tls_client_bio_send, tls_client_bio_recv, NULL);
    return t;
}

/* CONN_AGAIN with the direction, or CONN_ERROR with the reason noted. */
static int tls_client_blocked(struct tls_client *t, int r, int *want)
{
    if (r == MBEDTLS_ERR_SSL_WANT_READ) {
        *want = EV_READ;
        return CONN_AGAIN;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_WRITE) {
        *want = EV_WRITE;
        return CONN_AGAIN;
    }
    mbedtls_strerror(r, t->err, sizeof t->err);
    return CONN_ERROR;
}

/* "certificate verify failed: " and mbedTLS's reasons, one line. */
static void tls_client_note_verify(struct tls_client *t)
{
    char info[512];
    uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
    int n = mbedtls_x509_crt_verify_info(info, sizeof info, "", flags);
    if (n <= 0) snprintf(info, sizeof info, "flags 0x%x", (unsigned)flags);
    /* One reason per line: join them, lowercase the first letter. */
    for (char *p = info; *p; p++)
        if (*p == '\n') *p = p[1] ? ';' : '\0';
    size_t len = strlen(info);
    if (len && info[len - 1] == ';') info[len - 1] = '\0';
    if (info[0] >= 'A' && info[0] <= 'Z' && !(info[1] >= 'A' && info[1] <= 'Z'))
        info[0] = (char)(info[0] - 'A' + 'a');
    snprintf(t->err, sizeof t->err, "certificate verify failed: %.200s", info);
}

int tls_client_handshake(struct tls_client *t, int *want)
{
    int r = mbedtls_ssl_handshake(&t->ssl);
    if (r == 0) {
        t->established = true;
        return 1;
    }
    if (r == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
        tls_client_note_verify(t);
        return CONN_ERROR;
    }
    if (r == MBEDTLS_ERR_SSL_CONN_EOF || r == MBEDTLS_ERR_NET_CONN_RESET ||
        r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
        snprintf(t->err, sizeof t->err, "closed");
        return 0;
    }
    r = tls_client_blocked(t, r, want);
    if (r == CONN_ERROR) {
        char e[sizeof t->err];
        memcpy(e, t->err, sizeof e);
        snprintf(t->err, sizeof t->err, "handshake failed: %.200s", e);
    }
    return r;
}

ssize_t tls_client_recv(struct tls_client *t, void *buf, size_t len, int *want)
{
    int r = mbedtls_ssl_read(&t->ssl, buf, len);
    if (r > 0) return r;
    if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || r == MBEDTLS_ERR_SSL_CONN_EOF) return 0;
    return tls_client_blocked(t, r, want);
}

ssize_t tls_client_send(struct tls_client *t, const void *buf, size_t len, int *want)
{
    if (!tls_write_length(&t->ssl, t->write_pending, &len, t->err, sizeof t->err))
        return CONN_ERROR;
    int r = mbedtls_ssl_write(&t->ssl, buf, len);
    if (r >= 0) {
        t->write_pending = 0;
        return r;
    }
    int rc = tls_client_blocked(t, r, want);
    if (rc == CONN_AGAIN) t->write_pending = len;
    return rc;
}

bool tls_client_pending(struct tls_client *t)
{
    return mbedtls_ssl_get_bytes_avail(&t->ssl) > 0 || mbedtls_ssl_check_pending(&t->ssl);
}

struct tls_session *tls_client_session(struct tls_client *t)
{
    if (!t->established) return NULL;
    struct tls_session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    mbedtls_ssl_session_init(&s->s);
    if (mbedtls_ssl_get_session(&t->ssl, &s->s) != 0) {
        tls_session_free(s);
        return NULL;
    }
    return s;
}

const char *tls_client_error(const struct tls_client *t)
{
    return t->err;
}

void tls_client_free(struct tls_client *t, bool goodbye)
{
    if (!t) return;
    if (goodbye && t->established) mbedtls_ssl_close_notify(&t->ssl);
    mbedtls_ssl_free(&t->ssl);
    tls_client_config_release(t->cfg);
    free(t);
}
