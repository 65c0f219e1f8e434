/* server.h — listeners, accept, the session registry, and the current
 * policy generation. Must not touch Lua stacks. */
#ifndef LUASMTPD_SERVER_H
#define LUASMTPD_SERVER_H

#include <ev.h>

#include "listen_unix.h"
#include "session.h"
#include <stdbool.h>
#include <stddef.h>

struct policy;
struct session;
struct tls_config;

#define SERVER_MAX_LISTENERS 16
#define SERVER_IP_BUCKETS 1024
/* A listener's address as logged and reported on --ready-fd: "[v6]:port",
 * or "unix:" and a socket path. */
#define SERVER_ADDR_MAX (LISTEN_UNIX_PATH_MAX + 8)

/* How many sessions one client address has open. */
struct ip_count {
    struct ip_count *next;
    long count;
    char ip[64];
};

struct listener {
    int fd;
    ev_io io;
    struct server *srv;
    char addr[SERVER_ADDR_MAX]; /* "127.0.0.1:8025" / "[::1]:8025" / "unix:/run/x.sock" */
    bool is_unix;  /* a UNIX-domain socket */
    bool owns_file; /* made the socket file (not inherited): removes it at stop */
    struct listen_unix_file file;
    /* RFC 8314 implicit TLS (port 465 style): the server's config slot this
     * listener uses (srv->tls or srv->smtps_tls), NULL for plain SMTP. */
    struct tls_config **implicit_tls;
};

struct server {
    /* What sessions see of the server (loop, current generation, STARTTLS
     * config, DATA budget, counts): sessions include session.h, not this. */
    struct session_host host;
    struct listener listeners[SERVER_MAX_LISTENERS];
    size_t n_listeners;
    struct session *sessions; /* registry, for shutdown */
    bool stopping;
    struct ip_count *per_ip[SERVER_IP_BUCKETS];
    /* Certificates: STARTTLS on plain listeners (--tlscert), and implicit
     * TLS listeners (--smtpscert, else --tlscert). NULL when not configured.
     * Replaced on SIGHUP; live connections hold their own reference. */
    struct tls_config *smtps_tls; /* STARTTLS's is host.tls */
    ev_timer stop_timer; /* bounds a graceful stop */
    /* Permission bits for "unix:" listeners made from now on (the
     * unix_socket_mode option of the generation loaded at start-up). */
    unsigned unix_socket_mode;
};

/* Binds "[HOST][:PORT]" (default host localhost, default port 8025; port 0 =
 * any free port) or "unix:PATH" (a UNIX-domain socket with the mode
 * srv->unix_socket_mode, listening at once: SO_REUSEPORT and bind-only do
 * not apply, workers share the master's descriptor; a stale socket file is
 * replaced, a live one is an error), or adopts "unix-fd:N:PATH" (a worker:
 * the master's listening descriptor N for PATH, whose file the master
 * removes). Returns false with a message in err. */
/* flags for server_listen */
#define LISTEN_REUSEPORT 1 /* share the port with sibling worker processes */
#define LISTEN_BIND_ONLY 2 /* reserve the port without accepting (the master) */

bool server_listen(struct server *srv, const char *spec, struct tls_config **implicit_tls,
                   int flags, char *err, size_t errlen);

/* Removes the socket files of the UNIX listeners made so far (start-up
 * failed after them). */
void server_remove_unix_files(struct server *srv);

/* Gives the UNIX listeners' socket files to uid:gid (before a privilege
 * drop). Returns false with a message in err. */
bool server_chown_unix_files(struct server *srv, uid_t uid, gid_t gid, char *err, size_t errlen);

/* Sets up a server that will run sessions on loop (before server_start, or
 * before any session_new on its host). */
void server_init(struct server *srv, struct ev_loop *loop);

/* Starts accepting on every listener. */
void server_start(struct server *srv);

/* Graceful stop: close listeners (removing UNIX socket files), tell
 * sessions, exit the loop once they are gone or after timeout seconds. */
void server_stop(struct server *srv, double timeout);

/* Counts a session from ip; returns the address's count including it (0 if
 * memory ran out). server_ip_release undoes it. */
long server_ip_acquire(struct server *srv, const char *ip);
void server_ip_release(struct server *srv, const char *ip);

void server_add_session(struct server *srv, struct session *s);
void server_remove_session(struct server *srv, struct session *s);

/* Registers this program's Lua classes and bindings in a fresh state
 * (struct policy_inputs.register_classes): the server class and every
 * smtpd binding that lives outside the smtpd module itself. */
struct lua_State;
void server_register_lua_classes(struct lua_State *L);

#endif
