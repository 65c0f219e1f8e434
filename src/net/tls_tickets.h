/* tls_tickets.h — TLS session resumption state shared by every process:
 * RFC 5077 ticket keys derived from one secret the first process creates,
 * and this process's bounded session-ID cache. Included by tls.c only (it
 * exposes mbedTLS types); must not know conns or SMTP. */
#ifndef LUASMTPD_TLS_TICKETS_H
#define LUASMTPD_TLS_TICKETS_H

#include <stdbool.h>
#include <stddef.h>

#include <mbedtls/ssl.h>

/* Gets the ticket secret: from the descriptor named by LUASMTPD_TICKET_FD if
 * this process inherited one (a worker), otherwise a fresh random one in a
 * new memfd whose number goes into LUASMTPD_TICKET_FD so that processes
 * exec'd from here (workers, their restarts) share it. Idempotent. */
bool tls_tickets_init(char *err, size_t errlen);

/* Installs the ticket and session-cache callbacks on a server config. */
void tls_tickets_conf(mbedtls_ssl_config *conf);

/* From the script's options (applied at start and on every reload):
 * ticket key period in seconds (0: no tickets issued or accepted), and the
 * session cache's maximum entries (0: no cache). */
void tls_tickets_set(long ticket_lifetime, long cache_size);

/* The handshake about to run in this process: a ticket or cache hit during
 * it sets *resumed. NULL after the call. */
void tls_tickets_current(bool *resumed);

/* In a forked worker before exec: lets it inherit the secret (clears
 * close-on-exec on the memfd and names it in the environment). Nothing else
 * the process starts inherits it. */
void tls_tickets_prepare_child(void);

#endif
