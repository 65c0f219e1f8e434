/* main.c — the command line, start-up, signals. Runs in the foreground and
 * logs to stderr; SIGTERM/SIGINT stop gracefully, SIGHUP reloads the
 * handler script. Must not parse SMTP. */
#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <termios.h>
#include <unistd.h>

#include "check.h"
#include "l_shared.h"
#include "log.h"
#include "lua_hook.h"
#include "master.h"
#include "passhash.h"
#include "pool.h"
#include "policy.h"
#include "policy_builder.h"
#include "privdrop.h"
#include "script_store.h"
#include "server.h"
#include "shdict.h"
#include "tls.h"
#include "tls_tickets.h"

/* How long a graceful stop waits for sessions before cutting them. */
#define STOP_TIMEOUT_SECONDS 30.0
#define MAX_OVERRIDES 64
#define MAX_LISTEN 16
/* Defaults for a retired generation's sessions and for --watch debouncing
 * (an editor's save is several file events; reload once they settle). */
#define DEFAULT_DRAIN_TIMEOUT 300.0
#define WATCH_SETTLE_SECONDS 0.3
#define DEFAULT_WATCHDOG_SECONDS 10.0
#define MAX_SCRIPT_ARGS 64

struct cli {
    const char *handler;
    const char *listen[MAX_LISTEN];
    size_t n_listen;
    struct option_override ov[MAX_OVERRIDES];
    size_t n_ov;
    bool check;
    int ready_fd;
    const char *tlscert, *tlskey;     /* STARTTLS, and --listen-smtps */
    const char *smtpscert, *smtpskey; /* makes the --listen sockets implicit TLS */
    const char *client_ca;            /* verify client certificates if presented */
    const char *listen_smtps[MAX_LISTEN];
    size_t n_listen_smtps;
    bool watch;
    double drain_timeout;
    int workers;        /* 0: single process (the default) */
    double watchdog;
    int worker_slot;    /* >= 0 in a worker started by the master */
    int worker_status_fd;
    int script_fd;      /* a worker: the master's store of the validated script */
    int shdict_fd;      /* a worker: the master's shared dictionaries */
    bool requiretls_given; /* --requiretls/--no-requiretls: else on with --tlscert */
    bool stay_root;        /* -n: no privilege drop */
    const char *user;      /* --user USER[:GROUP] */
    /* The arguments every worker gets (everything but listen addresses and
     * the master's own flags). */
    char *pass[256];
    size_t n_pass;
    /* After `--`: the handler's `...`. Workers get them as --script-arg
     * pairs, since the master appends its own flags after cli.pass. */
    const char *script_args[MAX_SCRIPT_ARGS];
    int n_script_args;
    bool hash_password;        /* --hash-password [METHOD] */
    /* -c NAME [ARGS...]: a shipped handler (delivery.md 3). It runs as the
     * embedded default script with `...` = "-c", NAME, ARGS, which hands
     * over to lua/smtpd/handlers/NAME.lua; so workers, reloads and -t need
     * nothing of their own. */
    const char *builtin;
};

static struct server srv;
static struct cli cli;
static struct privdrop drop;

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: luasmtpd [OPTIONS]\n"
            "An SMTP server whose policy is a Lua handler script (aiosmtpd's handler API).\n\n"
            "  -l, --listen [HOST][:PORT]  listen address (default localhost:8025; port 0 = any\n"
            "                              free port; repeatable)\n"
            "      --handler FILE.lua      handler script (default: the embedded Debugging\n"
            "                              handler, which prints messages to stdout)\n"
            "  -o, --option NAME=VALUE     set a handler option; wins over the script's\n"
            "                              `options` table (repeatable)\n"
            "  -s, --size N                data_size_limit in bytes (0 = none)\n"
            "  -u, --smtputf8              enable SMTPUTF8\n"
            "      --hostname NAME         hostname in replies (default: this machine's FQDN)\n"
            "      --ident TEXT            greeting text after the hostname\n"
            "      --timeout SECONDS       idle timeout (default 300)\n"
            "      --ready-fd N            write \"ready ADDR...\" to fd N once listening\n"
            "      --tlscert FILE          certificate chain (PEM) for STARTTLS\n"
            "      --tlskey FILE           its private key\n"
            "      --smtpscert FILE        certificate chain: --listen sockets speak TLS from\n"
            "                              the first byte (implicit TLS, RFC 8314)\n"
            "      --smtpskey FILE         its private key\n"
            "  -l unix:PATH                a UNIX-domain socket (mode unix_socket_mode, 0660;\n"
            "                              a stale socket file is replaced, removed at stop)\n"
            "      --lmtp                  speak LMTP (RFC 2033: LHLO, one reply per recipient\n"
            "                              after DATA) instead of SMTP; same as -o lmtp=true\n"
            "      --listen-smtps [HOST][:PORT]  an implicit TLS listener beside the plain ones,\n"
            "                              with the --tlscert certificate (repeatable)\n"
            "      --tls-client-ca FILE    verify client certificates against these CAs\n"
            "      --watch                 reload when the handler script changes (development)\n"
            "      --drain-timeout SECONDS after a reload, sessions still on the old script get\n"
            "                              421 at their next command after this long (300)\n"
            "      --load-timeout SECONDS  a script whose top level runs longer is refused (5)\n"
            "      --workers N|auto        N worker processes under a supervising master\n"
            "                              (auto: one per CPU); default: one process\n"
            "      --watchdog SECONDS      with --workers: kill and replace a worker whose\n"
            "                              event loop is stuck this long (10; 0 = off)\n"
            "      --proxy-protocol[=SECONDS]  expect a PROXY v1/v2 header first, within\n"
            "                              SECONDS (proxy_protocol_timeout, default 10)\n"
            "      --requiretls            require_starttls: 530 until STARTTLS\n"
            "      --no-requiretls         do not (default: on when --tlscert is given,\n"
            "                              unless the script sets require_starttls)\n"
            "      --user USER[:GROUP]     started as root: bind, then run as USER (default\n"
            "                              nobody; GROUP: USER's primary group)\n"
            "  -n, --no-setuid             started as root: stay root (also --nosetuid)\n"
            "  -t, --check                 load and validate the handler, then exit 0/1\n"
            "      --hash-password [METHOD]  read a password from standard input, print its\n"
            "                              hash and exit (yescrypt, bcrypt, sha512crypt,\n"
            "                              argon2id; default yescrypt)\n"
            "  -c, --class NAME [ARG...]   a shipped handler instead of --handler (last on the\n"
            "                              line): sink, debugging, relay HOST [PORT],\n"
            "                              maildir DIR, mbox PATH, lmtp unix:/PATH|HOST:PORT\n"
            "  -- ARG...                   arguments for the handler script (its `...`)\n"
            "  -d, --debug                 more logging (repeat for even more)\n"
            "  -v, --version               print the version\n"
            "  -h, --help                  this help\n\n"
            "Signals: SIGHUP reloads the handler script; SIGTERM/SIGINT stop gracefully.\n");
}

static void add_override(const char *name, const char *value)
{
    if (cli.n_ov == MAX_OVERRIDES) {
        fprintf(stderr, "luasmtpd: too many options\n");
        exit(2);
    }
    cli.ov[cli.n_ov].name = name;
    cli.ov[cli.n_ov].value = value;
    cli.n_ov++;
}

static void pass(const char *opt, const char *arg)
{
    if (cli.n_pass + 3 > sizeof cli.pass / sizeof cli.pass[0]) {
        fprintf(stderr, "luasmtpd: too many arguments\n");
        exit(2);
    }
    cli.pass[cli.n_pass++] = strdup(opt);
    if (arg) cli.pass[cli.n_pass++] = strdup(arg);
}

static void add_script_arg(const char *arg)
{
    if (cli.n_script_args == MAX_SCRIPT_ARGS) {
        fprintf(stderr, "luasmtpd: more than %d handler arguments after --\n", MAX_SCRIPT_ARGS);
        exit(2);
    }
    cli.script_args[cli.n_script_args++] = arg;
}

static double seconds_arg(const char *flag, const char *v)
{
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !(x > 0)) {
        fprintf(stderr, "luasmtpd: %s expects a positive number of seconds, got '%s'\n", flag, v);
        exit(2);
    }
    return x;
}

/* The password on standard input: one line, without its line end; no echo
 * when it is a terminal. Returns its length, or -1. */
static ssize_t read_password(char *buf, size_t cap)
{
    struct termios saved, quiet;
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved) == 0;
    if (tty) {
        /* Echo off before the prompt: what is typed after the prompt must
         * neither echo nor be flushed away. */
        quiet = saved;
        quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
        fprintf(stderr, "Password: ");
        fflush(stderr);
    }
    size_t n = 0;
    bool got = false;
    int ch;
    while ((ch = getchar()) != EOF) {
        got = true;
        if (ch == '\n') break;
        if (n + 1 >= cap) {
            n = cap; /* too long */
            break;
        }
        buf[n++] = (char)ch;
    }
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
        fprintf(stderr, "\n");
    }
    if (!got || n >= cap) return -1;
    if (n > 0 && buf[n - 1] == '\r') n--;
    buf[n] = '\0';
    return (ssize_t)n;
}

/* --hash-password [METHOD]: prints the hash of the password on standard
 * input, so operators can fill a user store without writing code. */
static int hash_password(const char *method, const char *extra)
{
    if (extra) {
        fprintf(stderr, "luasmtpd: --hash-password takes at most one METHOD, got '%s' too\n",
                extra);
        return 2;
    }
    enum passhash_method m = passhash_method_parse(method);
    if (m == PASSHASH_METHOD_UNKNOWN) {
        fprintf(stderr, "luasmtpd: --hash-password: unknown method '%s' (expected %s)\n", method,
                passhash_method_names);
        return 2;
    }
    if (!passhash_method_supported(m)) {
        fprintf(stderr, "luasmtpd: --hash-password: %s is not supported yet (expected %s)\n",
                method, passhash_method_names);
        return 2;
    }
    /* Well above what a person types; crypt(3) hashes at most 512 bytes. */
    static char pw[4096];
    ssize_t n = read_password(pw, sizeof pw);
    if (n < 0) {
        fprintf(stderr, "luasmtpd: --hash-password: no password (one line, at most %zu bytes) "
                        "on standard input\n", sizeof pw - 1);
        return 1;
    }
    char err[160];
    char *hash = passhash_hash(m, pw, (size_t)n, err, sizeof err);
    passhash_wipe(pw, sizeof pw);
    if (!hash) {
        fprintf(stderr, "luasmtpd: --hash-password: %s\n", err);
        return 1;
    }
    printf("%s\n", hash);
    free(hash);
    return fflush(stdout) == 0 ? 0 : 1;
}

static void parse_args(int argc, char **argv)
{
    enum {
        OPT_HANDLER = 256, OPT_HOSTNAME, OPT_IDENT, OPT_TIMEOUT, OPT_READY_FD, OPT_TLSCERT,
        OPT_TLSKEY, OPT_SMTPSCERT, OPT_SMTPSKEY, OPT_LISTEN_SMTPS, OPT_CLIENT_CA, OPT_REQUIRETLS,
        OPT_NO_REQUIRETLS, OPT_WATCH, OPT_DRAIN_TIMEOUT, OPT_LOAD_TIMEOUT, OPT_WORKERS,
        OPT_WATCHDOG, OPT_WORKER_SLOT, OPT_WORKER_STATUS_FD, OPT_PROXY_PROTOCOL, OPT_SCRIPT_FD,
        OPT_USER, OPT_SCRIPT_ARG, OPT_SHDICT_FD, OPT_HASH_PASSWORD, OPT_WORKER_COUNT, OPT_LMTP
    };
    static const struct option longopts[] = {
        {"listen", required_argument, 0, 'l'},   {"handler", required_argument, 0, OPT_HANDLER},
        {"option", required_argument, 0, 'o'},   {"size", required_argument, 0, 's'},
        {"smtputf8", no_argument, 0, 'u'},       {"hostname", required_argument, 0, OPT_HOSTNAME},
        {"ident", required_argument, 0, OPT_IDENT}, {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"ready-fd", required_argument, 0, OPT_READY_FD}, {"check", no_argument, 0, 't'},
        {"debug", no_argument, 0, 'd'},          {"version", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},           {"tlscert", required_argument, 0, OPT_TLSCERT},
        {"tlskey", required_argument, 0, OPT_TLSKEY}, {"smtpscert", required_argument, 0, OPT_SMTPSCERT},
        {"smtpskey", required_argument, 0, OPT_SMTPSKEY},
        {"listen-smtps", required_argument, 0, OPT_LISTEN_SMTPS},
        {"tls-client-ca", required_argument, 0, OPT_CLIENT_CA},
        {"requiretls", no_argument, 0, OPT_REQUIRETLS},
        {"no-requiretls", no_argument, 0, OPT_NO_REQUIRETLS},
        {"watch", no_argument, 0, OPT_WATCH},
        {"drain-timeout", required_argument, 0, OPT_DRAIN_TIMEOUT},
        {"load-timeout", required_argument, 0, OPT_LOAD_TIMEOUT},
        {"workers", required_argument, 0, OPT_WORKERS},
        {"watchdog", required_argument, 0, OPT_WATCHDOG},
        {"proxy-protocol", optional_argument, 0, OPT_PROXY_PROTOCOL},
        {"user", required_argument, 0, OPT_USER}, {"no-setuid", no_argument, 0, 'n'},
        {"nosetuid", no_argument, 0, 'n'},
        {"worker-slot", required_argument, 0, OPT_WORKER_SLOT},
        {"worker-status-fd", required_argument, 0, OPT_WORKER_STATUS_FD},
        {"script-fd", required_argument, 0, OPT_SCRIPT_FD},
        {"shdict-fd", required_argument, 0, OPT_SHDICT_FD},
        {"script-arg", required_argument, 0, OPT_SCRIPT_ARG},
        {"hash-password", no_argument, 0, OPT_HASH_PASSWORD},
        {"worker-count", required_argument, 0, OPT_WORKER_COUNT},
        {"lmtp", no_argument, 0, OPT_LMTP},
        {"class", required_argument, 0, 'c'}, {0, 0, 0, 0},
    };
    cli.ready_fd = -1;
    cli.drain_timeout = DEFAULT_DRAIN_TIMEOUT;
    cli.watchdog = DEFAULT_WATCHDOG_SECONDS;
    cli.worker_slot = -1;
    cli.worker_status_fd = -1;
    cli.script_fd = -1;
    cli.shdict_fd = -1;
    pass(argv[0], NULL);
    int c;
    int longindex;
    /* "+": stop at the first non-option, so only `--` starts the handler's
     * arguments and a stray word before it is still an error. */
    while ((c = getopt_long(argc, argv, "+l:o:s:utndvhc:", longopts, &longindex)) != -1) {
        /* Workers get every option but addresses and the master's own. */
        bool master_only = c == 'l' || c == OPT_LISTEN_SMTPS || c == OPT_READY_FD ||
                           c == OPT_WORKERS || c == OPT_WATCHDOG || c == OPT_WATCH ||
                           c == OPT_WORKER_SLOT || c == OPT_WORKER_STATUS_FD ||
                           c == OPT_SCRIPT_FD || c == OPT_SHDICT_FD || c == OPT_SCRIPT_ARG ||
                           c == 't' || c == 'v' || c == 'h' || c == '?' ||
                           c == OPT_HASH_PASSWORD || c == OPT_WORKER_COUNT || c == 'c';
        if (!master_only) {
            if (c < 256) {
                char shortopt[3] = {'-', (char)c, 0};
                pass(shortopt, optarg);
            } else {
                /* "--name=value": the one form optional arguments accept. */
                char longname[4096];
                snprintf(longname, sizeof longname, "--%s%s%s", longopts[longindex].name,
                         optarg ? "=" : "", optarg ? optarg : "");
                pass(longname, NULL);
            }
        }
        switch (c) {
        case 'l':
            if (cli.n_listen == MAX_LISTEN) {
                fprintf(stderr, "luasmtpd: too many --listen addresses\n");
                exit(2);
            }
            cli.listen[cli.n_listen++] = optarg;
            break;
        case OPT_HANDLER: cli.handler = optarg; break;
        case 'o': {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg) {
                fprintf(stderr, "luasmtpd: -o expects NAME=VALUE, got '%s'\n", optarg);
                exit(2);
            }
            *eq = '\0';
            add_override(optarg, eq + 1);
            break;
        }
        case 's': add_override("data_size_limit", optarg); break;
        case 'u': add_override("enable_SMTPUTF8", "true"); break;
        case OPT_HOSTNAME: add_override("hostname", optarg); break;
        case OPT_IDENT: add_override("ident", optarg); break;
        case OPT_TIMEOUT: add_override("timeout", optarg); break;
        case OPT_READY_FD: cli.ready_fd = atoi(optarg); break;
        case OPT_WATCH: cli.watch = true; break;
        case OPT_WORKERS:
            if (!strcmp(optarg, "auto")) cli.workers = (int)sysconf(_SC_NPROCESSORS_ONLN);
            else cli.workers = atoi(optarg);
            if (cli.workers < 1 || cli.workers > MASTER_MAX_WORKERS) {
                fprintf(stderr, "luasmtpd: --workers expects 1..%d or auto\n", MASTER_MAX_WORKERS);
                exit(2);
            }
            /* Each worker's default thread_pool_size divides the CPUs by
             * the number of workers: they learn it from --worker-count. */
            {
                char count[16];
                snprintf(count, sizeof count, "%d", cli.workers);
                pass("--worker-count", count);
            }
            break;
        case OPT_WORKER_COUNT:
            pool_process_count = atoi(optarg) > 0 ? atoi(optarg) : 1;
            break;
        case OPT_HASH_PASSWORD: cli.hash_password = true; break;
        /* -o lmtp=true: like every -o, it wins over the script's options. */
        case OPT_LMTP: add_override("lmtp", "true"); break;
        case OPT_WATCHDOG:
            cli.watchdog = !strcmp(optarg, "0") ? 0 : seconds_arg("--watchdog", optarg);
            break;
        case OPT_WORKER_SLOT: cli.worker_slot = atoi(optarg); break;
        case OPT_PROXY_PROTOCOL: add_override("proxy_protocol_timeout", optarg ? optarg : "10"); break;
        case OPT_WORKER_STATUS_FD: cli.worker_status_fd = atoi(optarg); break;
        case OPT_SCRIPT_FD: cli.script_fd = atoi(optarg); break;
        case OPT_SHDICT_FD: cli.shdict_fd = atoi(optarg); break;
        case OPT_SCRIPT_ARG: add_script_arg(optarg); break;
        case OPT_DRAIN_TIMEOUT: cli.drain_timeout = seconds_arg("--drain-timeout", optarg); break;
        case OPT_LOAD_TIMEOUT:
            policy_load_timeout = seconds_arg("--load-timeout", optarg);
            break;
        case OPT_TLSCERT: cli.tlscert = optarg; break;
        case OPT_TLSKEY: cli.tlskey = optarg; break;
        case OPT_SMTPSCERT: cli.smtpscert = optarg; break;
        case OPT_SMTPSKEY: cli.smtpskey = optarg; break;
        case OPT_CLIENT_CA: cli.client_ca = optarg; break;
        case OPT_REQUIRETLS:
            cli.requiretls_given = true;
            add_override("require_starttls", "true");
            break;
        case OPT_NO_REQUIRETLS:
            cli.requiretls_given = true;
            add_override("require_starttls", "false");
            break;
        case 'n': cli.stay_root = true; break;
        case OPT_USER: cli.user = optarg; break;
        case OPT_LISTEN_SMTPS:
            if (cli.n_listen_smtps == MAX_LISTEN) {
                fprintf(stderr, "luasmtpd: too many --listen-smtps addresses\n");
                exit(2);
            }
            cli.listen_smtps[cli.n_listen_smtps++] = optarg;
            break;
        case 't': cli.check = true; break;
        case 'c': cli.builtin = optarg; break;
        case 'd': log_max_level++; break;
        case 'v': printf("luasmtpd %s\n", LUASMTPD_VERSION); exit(0);
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (cli.builtin) {
        /* Everything after -c NAME is the handler's (a `--` first is
         * skipped); the default script dispatches on the "-c" marker. */
        if (cli.handler) {
            fprintf(stderr, "luasmtpd: --handler and -c are exclusive\n");
            exit(2);
        }
        if (cli.n_script_args) {
            fprintf(stderr, "luasmtpd: -c takes its arguments after NAME, not after --\n");
            exit(2);
        }
        if (optind < argc && !strcmp(argv[optind], "--") &&
            (optind == 1 || strcmp(argv[optind - 1], "--")))
            optind++;
        const char *head[] = {"-c", cli.builtin};
        for (int i = 0; i < 2; i++) {
            add_script_arg(head[i]);
            pass("--script-arg", head[i]);
        }
        for (int i = optind; i < argc; i++) {
            add_script_arg(argv[i]);
            pass("--script-arg", argv[i]);
        }
        optind = argc;
    }
    if (optind > 1 && optind <= argc && !strcmp(argv[optind - 1], "--")) {
        for (int i = optind; i < argc; i++) {
            add_script_arg(argv[i]);
            pass("--script-arg", argv[i]);
        }
        optind = argc;
    }
    policy_script_args = cli.script_args;
    policy_n_script_args = cli.n_script_args;
    if (cli.hash_password) exit(hash_password(optind < argc ? argv[optind] : NULL,
                                              argc - optind > 1 ? argv[optind + 1] : NULL));
    if (optind < argc) {
        fprintf(stderr, "luasmtpd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        exit(2);
    }
    if (cli.n_listen == 0) cli.listen[cli.n_listen++] = "localhost:8025";
    const char *problem = NULL;
    if (!cli.tlscert != !cli.tlskey) problem = "--tlscert and --tlskey go together";
    else if (!cli.smtpscert != !cli.smtpskey) problem = "--smtpscert and --smtpskey go together";
    else if (cli.n_listen_smtps && !cli.tlscert) problem = "--listen-smtps needs --tlscert/--tlskey";
    if (cli.watch && !cli.handler) problem = "--watch needs --handler";
    if (problem) {
        fprintf(stderr, "luasmtpd: %s\n", problem);
        exit(2);
    }
}

/* Loads the certificate pairs given on the command line into fresh configs.
 * Returns false (nothing replaced) with a message naming the file. */
static bool load_tls(struct tls_config **tls, struct tls_config **smtps, char *err, size_t errlen)
{
    *tls = *smtps = NULL;
    if (cli.tlscert && !(*tls = tls_config_load(cli.tlscert, cli.tlskey, cli.client_ca, err, errlen)))
        return false;
    if (cli.smtpscert &&
        !(*smtps = tls_config_load(cli.smtpscert, cli.smtpskey, cli.client_ca, err, errlen))) {
        if (*tls) tls_config_release(*tls);
        *tls = NULL;
        return false;
    }
    return true;
}

static void swap_tls(struct tls_config *tls, struct tls_config *smtps)
{
    if (srv.host.tls) tls_config_release(srv.host.tls);
    if (srv.smtps_tls) tls_config_release(srv.smtps_tls);
    srv.host.tls = tls;
    srv.smtps_tls = smtps;
}

/* The handler as the log names it: the script, or "-c NAME" for a shipped
 * handler (workers know it from the "-c" marker in the script arguments). */
static const char *handler_label(const struct policy *p)
{
    static char label[96];
    if (!cli.handler && cli.n_script_args >= 2 && !strcmp(cli.script_args[0], "-c")) {
        snprintf(label, sizeof label, "-c %s", cli.script_args[1]);
        return label;
    }
    return p->script_name;
}

/* Start-up facts an operator needs: mechanisms, and why AUTH may be off. */
static void log_policy(const struct policy *p)
{
    /* Not a log line, but every generation that goes live passes here. */
    tls_set_resumption(p->opt.tls_ticket_lifetime, p->opt.tls_session_cache_size);
    char names[512] = "";
    size_t o = 0;
    for (size_t i = 0; i < p->n_mechs && o < sizeof names - 80; i++)
        o += (size_t)snprintf(names + o, sizeof names - o, "%s%s%s", i ? " " : "",
                              p->mechs[i].name, p->mechs[i].builtin ? "(builtin)" : "");
    log_msg(LOG_INFO, NULL, "handler %s loaded (policy generation %u); AUTH mechanisms: %s",
            handler_label(p), p->generation, p->n_mechs ? names : "(none)");
    if (p->opt.proxy_protocol_timeout > 0 && !policy_has_hook(p, HOOK_PROXY))
        log_msg(LOG_WARN, NULL, "PROXY protocol is on but the script has no handle_PROXY: every "
                                "connection will be closed (as in aiosmtpd); define handle_PROXY "
                                "returning true to accept");
    if (p->opt.auth_required && !p->opt.auth_require_tls)
        log_msg(LOG_WARN, NULL, "auth_required is true but auth_require_tls is false: "
                                "credentials may cross the network in clear text");
    if (p->opt.auth_require_tls && !srv.host.tls && !srv.smtps_tls)
        log_msg(LOG_WARN, NULL, "AUTH is not offered: auth_require_tls is true and no TLS "
                                "is configured (set auth_require_tls = false only for testing)");
    else if (!policy_has_hook(p, HOOK_AUTHENTICATOR))
        log_msg(LOG_INFO, NULL, "no authenticator defined: built-in PLAIN and LOGIN reject "
                                "every attempt");
}

/* aiosmtpd's CLI: with --tlscert, STARTTLS is required unless
 * --no-requiretls; a script that sets require_starttls decides itself.
 * Applied to every generation, at start-up and on reload. */
static struct policy *apply_cli_defaults(struct policy *p)
{
    if (p && cli.tlscert && !cli.requiretls_given && !p->opt.require_starttls_set)
        p->opt.require_starttls = true;
    /* A timer's premature run (the generation retired) may wait no longer
     * than the sessions left on it may go on. */
    if (p) p->vm.drain_timeout = cli.drain_timeout;
    return p;
}

/* Start-up: a worker loads the bytes the master validated (its store), any
 * other process reads the file itself. *src_out, when given, receives the
 * bytes that were loaded (the master stores them). */
static struct policy_inputs policy_inputs(void)
{
    return (struct policy_inputs){cli.ov, cli.n_ov, server_register_lua_classes};
}

static struct policy *load_policy(char *err, size_t errlen, char **src_out, size_t *len_out)
{
    struct policy_inputs in = policy_inputs();
    if (!cli.handler) return apply_cli_defaults(policy_load(NULL, &in, err, errlen));
    size_t len;
    char *src = cli.script_fd >= 0 ? script_store_read(cli.script_fd, &len, err, errlen)
                                   : policy_read_script(cli.handler, &len, err, errlen);
    if (!src) return NULL;
    struct policy *p = policy_load_source(cli.handler, src, len, &in, err, errlen);
    if (p && src_out) {
        *src_out = src;
        *len_out = len;
    } else free(src);
    return apply_cli_defaults(p);
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    if (srv.stopping) {
        log_msg(LOG_WARN, NULL, "second stop signal: exiting now");
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    log_msg(LOG_INFO, NULL, "%s received: stopping gracefully",
            w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
    server_stop(&srv, STOP_TIMEOUT_SECONDS);
}

/* A SIGHUP that arrives while a reload is being built: one more build
 * follows it, so the last change is never missed. */
static bool reload_queued;
/* What the builder thread builds with (it outlives the call that starts it). */
static struct policy_inputs build_inputs;
static void reload(struct ev_loop *loop, const char *why);

/* The dictionaries exist once per process life: a generation that declares
 * another set (or another size) cannot go live. */
static bool shared_dicts_unchanged(const struct policy *p, char *msg, size_t msglen)
{
    char why[128];
    if (shdict_region_same(shdict_process_region(), p->opt.shared_dict, p->opt.n_shared_dict, why,
                           sizeof why))
        return true;
    snprintf(msg, msglen, "shared_dict changed: restart to apply (%s)", why);
    return false;
}

/* The new generation is built (or refused): swap it in on the loop. */
static void reload_built(struct policy *p, const char *src, size_t len, const char *err, void *ud)
{
    struct ev_loop *loop = ud;
    char msg[256];
    if (p && !shared_dicts_unchanged(p, msg, sizeof msg)) {
        policy_release(p);
        p = NULL;
        err = msg;
    }
    if (!p) {
        log_msg(LOG_ERROR, NULL, "reload refused, keeping generation %u: %s%s%s%s",
                srv.host.policy->generation, err, drop.active ? " (files are read as user " : "",
                drop.active ? drop.user : "", drop.active ? ")" : "");
    } else {
        apply_cli_defaults(p);
        struct policy *old = srv.host.policy;
        srv.host.policy = p;
        policy_attach(p, loop);
        policy_retire(old, ev_now(loop));
        log_policy(p);
        if (old->refcount > 1)
            log_msg(LOG_INFO, NULL, "generation %u retired; %d sessions or timer runs finish on it",
                    old->generation, old->refcount - 1);
        policy_release(old);
    }
    if (reload_queued) {
        reload_queued = false;
        reload(loop, "a reload was asked for while the last one loaded");
    }
}

/* SIGHUP: build a new generation beside the running one, on a thread of its
 * own so that serving goes on while the script's top level runs; on any
 * error keep the old one. Sessions finish on the generation they started
 * with. A worker builds from the master's store (the master validated those
 * bytes), anyone else from the file. */
static void reload(struct ev_loop *loop, const char *why)
{
    char err[2048];
    if (policy_builder_busy()) {
        reload_queued = true;
        log_msg(LOG_INFO, NULL, "%s: a reload is still loading; another follows it", why);
        return;
    }
    log_msg(LOG_INFO, NULL, "%s: reloading %s", why,
            cli.handler ? cli.handler : "the default handler");
    /* Certificates reload on their own: a bad pair keeps the old one. */
    struct tls_config *tls, *smtps;
    if (cli.tlscert || cli.smtpscert) {
        if (load_tls(&tls, &smtps, err, sizeof err)) {
            swap_tls(tls, smtps);
            log_msg(LOG_INFO, NULL, "TLS certificates reloaded");
        } else
            log_msg(LOG_ERROR, NULL, "TLS reload refused, keeping the old certificates: %s%s%s%s",
                    err, drop.active ? " (files are read as user " : "",
                    drop.active ? drop.user : "", drop.active ? ")" : "");
    }
    char *src = NULL;
    size_t len = 0;
    if (cli.handler && cli.script_fd >= 0 &&
        !(src = script_store_read(cli.script_fd, &len, err, sizeof err))) {
        log_msg(LOG_ERROR, NULL, "reload refused, keeping generation %u: %s",
                srv.host.policy->generation, err);
        return;
    }
    if (!policy_builder_start(loop, cli.handler, src, len, &build_inputs, reload_built, loop,
                              err, sizeof err))
        log_msg(LOG_ERROR, NULL, "reload refused, keeping generation %u: %s",
                srv.host.policy->generation, err);
}

/* ------------------------------------------------ the master's reload */

static int master_store_fd = -1;
static bool master_reload_queued;
static void master_reload(struct ev_loop *loop, const char *why);

/* The master validated the script (or refused it): store the bytes it
 * checked and tell the workers, or tell them nothing. */
static void master_reload_built(struct policy *p, const char *src, size_t len, const char *err,
                                void *ud)
{
    struct ev_loop *loop = ud;
    char msg[512];
    if (!p) {
        log_msg(LOG_ERROR, NULL, "reload refused, workers keep their generation: %s", err);
    } else if (!shared_dicts_unchanged(p, msg, sizeof msg)) {
        log_msg(LOG_ERROR, NULL, "reload refused, workers keep their generation: %s", msg);
    } else if (src && !script_store_write(master_store_fd, src, len, msg, sizeof msg)) {
        log_msg(LOG_ERROR, NULL, "reload refused, workers keep their generation: %s", msg);
    } else {
        log_msg(LOG_INFO, NULL, "%s validated: reloading every worker",
                cli.handler ? cli.handler : "the default handler");
        master_signal_workers(SIGHUP);
    }
    if (p) policy_release(p);
    if (master_reload_queued) {
        master_reload_queued = false;
        master_reload(loop, "a reload was asked for while the last one loaded");
    }
}

/* SIGHUP or --watch in the master: validate the file once, here, before
 * any worker swaps; a broken script never reaches them. */
static void master_reload(struct ev_loop *loop, const char *why)
{
    char err[2048];
    if (policy_builder_busy()) {
        master_reload_queued = true;
        log_msg(LOG_INFO, NULL, "%s: a reload is still being validated; another follows it", why);
        return;
    }
    log_msg(LOG_INFO, NULL, "%s: validating %s", why,
            cli.handler ? cli.handler : "the default handler");
    /* Read as the workers' user: what they could not read is refused here. */
    char *src = NULL;
    size_t len = 0;
    if (cli.handler) {
        if (privdrop_as_user_begin(&drop, err, sizeof err)) {
            src = policy_read_script(cli.handler, &len, err, sizeof err);
            privdrop_as_user_end(&drop);
        }
        if (!src) {
            log_msg(LOG_ERROR, NULL, "reload refused, workers keep their generation: %s%s%s%s",
                    err, drop.active ? " (files are read as user " : "",
                    drop.active ? drop.user : "", drop.active ? ")" : "");
            return;
        }
    }
    if (!policy_builder_start(loop, cli.handler, src, len, &build_inputs, master_reload_built,
                              loop, err, sizeof err))
        log_msg(LOG_ERROR, NULL, "reload refused, workers keep their generation: %s", err);
}

static void on_reload_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    reload(loop, "SIGHUP received");
}

/* --watch: the script file changed (written in place, or replaced by a
 * rename as editors do); reload once the events settle. */
static ev_timer watch_settle;

static void on_watch_settled(struct ev_loop *loop, ev_timer *w, int revents)
{
    reload(loop, "the script changed");
}

static void on_script_changed(struct ev_loop *loop, ev_stat *w, int revents)
{
    if (!w->attr.st_nlink) return; /* deleted; a rename into place follows */
    ev_timer_stop(loop, &watch_settle);
    ev_timer_set(&watch_settle, WATCH_SETTLE_SECONDS, 0.);
    ev_timer_start(loop, &watch_settle);
}

/* Start-up, once the first generation loaded: its dictionaries created
 * (by the master, a single process, or for -t), or, in a worker that mapped
 * the master's, checked to be the same. */
static bool setup_shared_dicts(const struct policy *p, char *err, size_t errlen)
{
    if (cli.shdict_fd >= 0) return shared_dicts_unchanged(p, err, errlen);
    if (p->opt.n_shared_dict > 0) {
        struct shdict_region *r =
            shdict_region_create(p->opt.shared_dict, p->opt.n_shared_dict, err, errlen);
        if (!r) return false;
        shdict_process_set(r);
    }
    /* What the top level stored provisionally moves into them. */
    return l_shared_startup_end(err, errlen);
}

/* In each forked worker before exec: what it inherits from the master. */
static void worker_child_setup(void)
{
    tls_tickets_prepare_child();
    if (shdict_process_region()) fcntl(shdict_region_fd(shdict_process_region()), F_SETFD, 0);
}

static void write_ready(void)
{
    if (cli.ready_fd < 0) return;
    char line[SERVER_MAX_LISTENERS * (SERVER_ADDR_MAX + 1) + 32] = "ready";
    /* A worker names its slot: the master counts workers, not lines, so a
     * worker that restarts during start-up is not counted twice. */
    if (cli.worker_slot >= 0)
        snprintf(line, sizeof line, "ready w%d", cli.worker_slot);
    for (size_t i = 0; i < srv.n_listeners; i++) {
        strcat(line, " ");
        strcat(line, srv.listeners[i].addr);
    }
    strcat(line, "\n");
    ssize_t w = write(cli.ready_fd, line, strlen(line));
    (void)w;
    close(cli.ready_fd);
}

int main(int argc, char **argv)
{
    /* A SIGHUP before the loop handles it would kill us while the script
     * loads (the default action); hold it until ev_signal is in place. */
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    sigprocmask(SIG_BLOCK, &hup, NULL);
    parse_args(argc, argv);
    build_inputs = policy_inputs();
    char err[2048];
    if (!cli.check && !privdrop_resolve(&drop, cli.user, cli.stay_root, err, sizeof err)) {
        fprintf(stderr, "luasmtpd: %s\n", err);
        return 2;
    }
    bool master = cli.workers > 0 && cli.worker_slot < 0;
    char *src = NULL;
    size_t src_len = 0;
    /* A worker maps the master's dictionaries before its script loads, so
     * its top level uses them; anyone else makes them from the options that
     * top level returns, which it meanwhile fills provisionally. */
    if (cli.shdict_fd >= 0) {
        struct shdict_region *r = shdict_region_attach(cli.shdict_fd, err, sizeof err);
        if (!r) {
            log_msg(LOG_ERROR, NULL, "%s", err);
            return 1;
        }
        shdict_process_set(r);
    } else
        l_shared_startup_begin();
    struct policy *p = load_policy(err, sizeof err, master ? &src : NULL, &src_len);
    if (cli.check) {
        if (p && !setup_shared_dicts(p, err, sizeof err)) {
            policy_release(p);
            p = NULL;
        }
        if (!p) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        check_warnings(p, stderr);
        printf("%s: OK (%zu AUTH mechanisms)\n", p->script_name, p->n_mechs);
        policy_release(p);
        return 0;
    }
    if (!p) {
        log_msg(LOG_ERROR, NULL, "cannot load handler: %s", err);
        return 1;
    }
    if (!setup_shared_dicts(p, err, sizeof err)) {
        log_msg(LOG_ERROR, NULL, "%s", err);
        return 1;
    }
    if (master) {
        /* The master: the script and certificates were checked above. The
         * bytes it checked go into the store every worker loads from, now
         * and whenever one is restarted. */
        if (cli.handler) {
            master_store_fd = script_store_create(err, sizeof err);
            if (master_store_fd < 0 || !script_store_write(master_store_fd, src, src_len, err, sizeof err)) {
                log_msg(LOG_ERROR, NULL, "%s", err);
                return 1;
            }
        }
        free(src);
        /* Every worker (and its restarts) maps the master's dictionaries. */
        if (shdict_process_region()) {
            char num[16];
            snprintf(num, sizeof num, "%d", shdict_region_fd(shdict_process_region()));
            pass("--shdict-fd", num);
        }
        struct tls_config *tls, *smtps;
        if (!load_tls(&tls, &smtps, err, sizeof err)) {
            log_msg(LOG_ERROR, NULL, "%s", err);
            return 1;
        }
        if (tls) tls_config_release(tls);
        if (smtps) tls_config_release(smtps);
        long p_unix_mode = p->opt.unix_socket_mode;
        policy_release(p);
        struct master_config mc = {
            .workers = cli.workers, .worker_argv = cli.pass, .worker_argc = cli.n_pass,
            .listen = cli.listen, .n_listen = cli.n_listen, .listen_smtps = cli.listen_smtps,
            .n_listen_smtps = cli.n_listen_smtps, .watchdog = cli.watchdog,
            .stop_timeout = STOP_TIMEOUT_SECONDS, .ready_fd = cli.ready_fd,
            .watch_path = cli.watch ? cli.handler : NULL, .script_fd = master_store_fd,
            .reload = master_reload, .child_setup = worker_child_setup,
            .unix_socket_mode = (unsigned)p_unix_mode, .chown_unix = drop.active,
            .unix_uid = drop.uid, .unix_gid = drop.gid,
        };
        return master_run(&mc);
    }
    bool worker = cli.worker_slot >= 0;
    if (worker && !master_worker_attach(cli.worker_status_fd, cli.worker_slot)) {
        log_msg(LOG_ERROR, NULL, "worker %d: cannot attach to the master's status memory",
                cli.worker_slot);
        return 1;
    }
    if (worker) hook_status_slot = master_worker_hook_slot(&hook_status_slot_size);
    if (worker) {
        snprintf(log_process_tag, sizeof log_process_tag, "w%d", cli.worker_slot);
        log_msg(LOG_INFO, NULL, "worker %d (pid %d)", cli.worker_slot, (int)getpid());
    }
    signal(SIGPIPE, SIG_IGN);
    server_init(&srv, EV_DEFAULT);
    srv.host.policy = p;
    policy_attach(p, srv.host.loop);
    struct tls_config *tls, *smtps;
    if (!load_tls(&tls, &smtps, err, sizeof err)) {
        log_msg(LOG_ERROR, NULL, "%s", err);
        return 1;
    }
    swap_tls(tls, smtps);
    srv.unix_socket_mode = (unsigned)p->opt.unix_socket_mode;
    for (size_t i = 0; i < cli.n_listen; i++) {
        if (!server_listen(&srv, cli.listen[i], cli.smtpscert ? &srv.smtps_tls : NULL,
                           worker ? LISTEN_REUSEPORT : 0, err, sizeof err)) {
            log_msg(LOG_ERROR, NULL, "%s", err);
            server_remove_unix_files(&srv);
            return 1;
        }
    }
    for (size_t i = 0; i < cli.n_listen_smtps; i++) {
        if (!server_listen(&srv, cli.listen_smtps[i], &srv.host.tls, worker ? LISTEN_REUSEPORT : 0,
                           err, sizeof err)) {
            log_msg(LOG_ERROR, NULL, "%s", err);
            server_remove_unix_files(&srv);
            return 1;
        }
    }
    /* The user the server runs as owns its UNIX socket files (the mode's
     * group bits then mean that user's group). */
    if (drop.active && !server_chown_unix_files(&srv, drop.uid, drop.gid, err, sizeof err)) {
        log_msg(LOG_ERROR, NULL, "%s", err);
        server_remove_unix_files(&srv);
        return 1;
    }
    /* Bound: root is no longer needed here (the master, if any, keeps it to
     * start replacement workers, which bind their own SO_REUSEPORT sockets). */
    if (!privdrop_apply(&drop, err, sizeof err)) {
        log_msg(LOG_ERROR, NULL, "%s", err);
        return 1;
    }
    if (drop.active)
        log_msg(LOG_INFO, NULL, "running as user %s (uid %d gid %d)", drop.user, (int)drop.uid,
                (int)drop.gid);
    log_msg(LOG_INFO, NULL, "luasmtpd %s starting", LUASMTPD_VERSION);
    log_policy(p);
    ev_now_update(srv.host.loop);

    ev_signal sigterm, sigint, sighup;
    ev_signal_init(&sigterm, on_stop_signal, SIGTERM);
    ev_signal_init(&sigint, on_stop_signal, SIGINT);
    ev_signal_init(&sighup, on_reload_signal, SIGHUP);
    ev_signal_start(srv.host.loop, &sigterm);
    ev_signal_start(srv.host.loop, &sigint);
    ev_signal_start(srv.host.loop, &sighup);
    sigprocmask(SIG_UNBLOCK, &hup, NULL);

    srv.host.drain_timeout = cli.drain_timeout;
    ev_stat watcher;
    if (cli.watch) {
        ev_timer_init(&watch_settle, on_watch_settled, WATCH_SETTLE_SECONDS, 0.);
        /* ev_stat polls too (every second), so a rename that replaces the
         * inode is seen even where inotify watches the old one. */
        ev_stat_init(&watcher, on_script_changed, cli.handler, 1.0);
        ev_stat_start(srv.host.loop, &watcher);
        log_msg(LOG_INFO, NULL, "watching %s for changes", cli.handler);
    }
    server_start(&srv);
    write_ready();
    ev_run(srv.host.loop, 0);
    /* Running jobs finish (their results are dropped) before Lua goes. */
    pool_shutdown();
    log_msg(LOG_INFO, NULL, "stopped");
    policy_release(srv.host.policy);
    swap_tls(NULL, NULL);
    return 0;
}
