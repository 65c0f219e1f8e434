/* tls.h — TLS for a conn: server certificates (struct tls_config) and the TLS
 * transport behind struct transport, with mbedTLS in non-blocking mode.
 * Owns every mbedTLS call but the hash primitives of crypto.c: no other file
 * includes an mbedTLS header. Must not know SMTP: the caller decides when to start TLS and what to say around it. */
#ifndef LUASMTPD_TLS_H
#define LUASMTPD_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "conn.h"

/* One certificate chain + key + mbedtls_ssl_config, refcounted. */
struct tls_config;

/* Loads a PEM certificate chain (leaf first) and its key (RSA or ECDSA,
 * unencrypted), checks that they match, and builds a server config: TLS 1.2 or
 * newer, ECDHE with AEAD cipher suites only, no renegotiation, with session
 * resumption by RFC 5077 tickets (keys shared by all workers, tls_tickets.c)
 * and a per-process session-ID cache. With client_ca_file (may be NULL), a client certificate is
 * requested and verified against it if presented (optional: a client without
 * one still connects). Returns a config holding one reference (the caller's),
 * or NULL with a message naming the offending file in err. Seeds the process's
 * random generator on first use. */
struct tls_config *tls_config_load(const char *cert_file, const char *key_file,
                                   const char *client_ca_file, char *err, size_t errlen);

/* Takes / drops a reference. The config is freed with the last one: every
 * conn in TLS holds its own, so live sessions keep the config they started
 * with across a reload. */
void tls_config_hold(struct tls_config *cfg);
void tls_config_release(struct tls_config *cfg);

/* Switches c to TLS as the server side and starts a non-blocking handshake
 * (conn_start_handshake() in conn.h has the details):
 *   - bytes already in c->in are DISCARDED (STARTTLS command injection,
 *     CVE-2011-0411, CVE-2024-34083); the owner must not look at c->in again
 *     before on_done;
 *   - output already queued (the "220 Ready to start TLS" reply) is sent in
 *     plaintext before the switch; output queued afterwards is encrypted and
 *     leaves once the handshake is done;
 *   - on a freshly accepted conn (nothing queued) this is implicit TLS.
 * on_done(c, owner, ok) is called from the event loop, never from inside
 * tls_start; ok=false (c is failed: conn_close() it) on a handshake error, EOF
 * or after timeout seconds. The conn holds a reference to cfg from here on.
 * Returns false, with on_done never called, if c is closing, closed, failed,
 * already in TLS or handshaking, if timeout is not positive, or memory runs
 * out; the owner should then close c. */
bool tls_start(struct conn *c, struct tls_config *cfg, double timeout,
               void (*on_done)(struct conn *c, void *owner, bool ok));

/* The same for implicit TLS (RFC 8314): bytes already in c->in are kept and
 * handed to the handshake first, since after a PROXY header they are the
 * client's ClientHello. */
bool tls_start_implicit(struct conn *c, struct tls_config *cfg, double timeout,
                        void (*on_done)(struct conn *c, void *owner, bool ok));

/* For session.ssl: the protocol ("TLSv1.2", "TLSv1.3") and cipher suite name
 * (IANA-style as mbedTLS names it, e.g. "TLS-ECDHE-RSA-WITH-AES-256-GCM-SHA384"),
 * truncated to vlen / clen. *peer_pem (if peer_pem is not NULL) receives the
 * client certificate as PEM, malloc'd and the caller's to free, or NULL when
 * the client sent none or it did not verify against the client CA. Returns
 * false (outputs empty) unless the TLS handshake on c has completed. */
bool tls_info(struct conn *c, char *version, size_t vlen, char *cipher, size_t clen,
              char **peer_pem);

/* True if the completed handshake on c resumed an earlier session (ticket or
 * session ID) instead of a full key exchange. */
bool tls_resumed(const struct conn *c);

/* Resumption settings from the script's options (start and every reload):
 * seconds per ticket key period (tickets from this period and the previous
 * one open; 0 = no tickets) and the session cache's entries (0 = none). */
void tls_set_resumption(long ticket_lifetime, long cache_size);

/* Channel bindings (RFC 5929) for SCRAM's -PLUS mechanisms. */
enum tls_binding {
    TLS_BINDING_UNIQUE,           /* "tls-unique": the first Finished message (TLS 1.2) */
    TLS_BINDING_SERVER_END_POINT, /* "tls-server-end-point": hash of our certificate */
};
#define TLS_BINDING_MAX 64

/* Writes the binding data of type for the completed handshake on c into out
 * (cap >= TLS_BINDING_MAX) and returns its length, or 0 when there is none
 * (no TLS, the handshake not done, or a TLS version without tls-unique:
 * mbedTLS 2.28 here negotiates TLS 1.2 only, whose Finished messages it
 * keeps). tls-unique is the client's Finished after a full handshake and the
 * server's after a resumption (RFC 5929 3.1). tls-server-end-point hashes
 * the leaf certificate we sent with its signature's hash, SHA-256 for MD5
 * and SHA-1 (RFC 5929 4.1). */
size_t tls_channel_binding(const struct conn *c, enum tls_binding type, unsigned char *out,
                           size_t cap);

/* True once a TLS handshake on c has completed successfully. */
bool conn_is_tls(const struct conn *c);

/* Why the last TLS operation on c failed (mbedTLS's description), or "" —
 * for the owner's log line after on_done(ok=false) or a read error. The
 * string belongs to c. */
const char *tls_error(const struct conn *c);

/* ------------------------------------------------------------ client side
 * For the cosockets (client.h): TLS 1.2+ as a client over a connected
 * non-blocking fd. */

/* A client config: verify (the peer's chain against cafile, NULL = the
 * system bundle TLS_CLIENT_CA_BUNDLE, and the name) or not. Cached per
 * (cafile, verify) for the process, so the bundle is parsed once, not per
 * connection. Returns a reference the caller releases with
 * tls_client_config_release, or NULL with a message in err. */
#define TLS_CLIENT_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
struct tls_client_config;
struct tls_client_config *tls_client_config_get(const char *cafile, bool verify, char *err,
                                                size_t errlen);
void tls_client_config_release(struct tls_client_config *cfg);

/* A TLS session a later handshake may resume (mbedtls_ssl_get_session). */
struct tls_session;
void tls_session_free(struct tls_session *s);

/* One client connection over fd (not owned). server_name (may be NULL) is
 * sent as SNI and, when the config verifies, checked against the
 * certificate. session (may be NULL) is offered for resumption. Holds a
 * reference to cfg. NULL with a message in err on failure. */
struct tls_client;
struct tls_client *tls_client_new(int fd, struct tls_client_config *cfg, const char *server_name,
                                  const struct tls_session *session, char *err, size_t errlen);
/* Advances the handshake: 1 when done, CONN_AGAIN (*want EV_READ or
 * EV_WRITE), 0 when the peer closed, or CONN_ERROR (tls_client_error says
 * why: "certificate verify failed: ..." for a refused certificate). */
int tls_client_handshake(struct tls_client *t, int *want);
/* As netc_recv / netc_send (client.h). */
ssize_t tls_client_recv(struct tls_client *t, void *buf, size_t len, int *want);
ssize_t tls_client_send(struct tls_client *t, const void *buf, size_t len, int *want);
bool tls_client_pending(struct tls_client *t);
/* The session of a completed handshake, the caller's to free, or NULL. */
struct tls_session *tls_client_session(struct tls_client *t);
/* Why the last operation failed, or "". The string belongs to t. */
const char *tls_client_error(const struct tls_client *t);
/* Frees t, after one non-blocking close_notify if goodbye and the
 * handshake completed. The fd stays open (the caller closes it). */
void tls_client_free(struct tls_client *t, bool goodbye);

#endif
