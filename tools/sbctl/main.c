/*
 * sbctl: the command-line client of Switchboard. Finds the command, parses
 * its options (args.h), resolves the endpoint and runs it. See `sbctl --help`.
 */
#include "tools/sbctl/sbctl.h"

#include <stdio.h>
#include <string.h>

#ifndef SBCTL_VERSION
#define SBCTL_VERSION "unknown"
#endif

static const sbctl_cmd *const commands[] = {
    &sbctl_cmd_pub,      &sbctl_cmd_sub,         &sbctl_cmd_tail,        &sbctl_cmd_stats,
    &sbctl_cmd_dlq_list, &sbctl_cmd_dlq_redrive, &sbctl_cmd_dlq_purge,
    &sbctl_cmd_ping,     &sbctl_cmd_bench,       &sbctl_cmd_passwd,
    &sbctl_cmd_route_test,
    &sbctl_cmd_check,    &sbctl_cmd_compact,
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void print_main_help(FILE *f)
{
    fprintf(f, "Usage: sbctl [-e ENDPOINT] COMMAND [ARGS] [OPTIONS]\n"
               "\n"
               "Command-line client of the Switchboard message broker. It speaks the jsonl\n"
               "protocol to the broker's admin endpoint (or any jsonl adapter, or over an\n"
               "rpc adapter's MS-RPC interface); passwd edits a password file locally.\n"
               "\n"
               "Commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char left[64];
        snprintf(left, sizeof(left), "%s %s", commands[i]->name, commands[i]->args);
        if (strlen(left) > 26) /* too wide for the column: summary below */
            fprintf(f, "  %s\n  %-26s %s\n", left, "", commands[i]->summary);
        else
            fprintf(f, "  %-26s %s\n", left, commands[i]->summary);
    }
    fprintf(f,
            "\n"
            "Global options:\n"
            "  -e, --endpoint ENDPOINT    where the broker listens: unix:PATH, tcp:HOST:PORT,\n"
            "                             tls:HOST:PORT, HOST:PORT, \\\\.\\pipe\\NAME, rpc:NAME or\n"
            "                             rpc:HOST:PORT (MS-RPC, Windows) or a socket path\n"
            "                             (default: $SB_ADMIN, else %s)\n"
            "      --ca FILE              tls: the CAs that verify the broker (PEM; default:\n"
            "                             OpenSSL's CA file, none on Windows); its\n"
            "                             certificate must name HOST\n"
            "      --cert FILE --key FILE tls: a client certificate and its key (PEM)\n"
            "      --json                 machine-readable output: JSON on stdout (every\n"
            "                             command), errors as {\"error\",\"code\"} lines on\n"
            "                             stderr (usage errors stay text)\n"
            "      --progress             progress of long operations (pub --count, bench,\n"
            "                             dlq redrive/purge) on stderr also when it is not a\n"
            "                             terminal (on a terminal it is always shown)\n"
            "  -h, --help                 show this help\n"
            "  -V, --version              show the version\n"
            "\n"
            "Durations take a unit: 500ms, 10s, 1.5m, 2h, 1d.\n"
            "\n"
            "Exit status:\n"
            "  0  success\n"
            "  1  the broker reported an error, or the operation failed\n"
            "  2  usage error (the command line)\n"
            "  3  cannot connect (TLS handshake included), or the connection failed or\n"
            "     timed out\n"
            "  4  the broker refused for lack of rights: its ACL, or an operation the\n"
            "     endpoint does not allow (SB_EAUTH, SB_EACCES)\n"
            "  5  sub, tail: --timeout expired before --count messages arrived\n"
            "  130, 143  sub, tail: ended by Ctrl-C (SIGINT), SIGTERM, after a clean\n"
            "     detach (what was printed is acknowledged; a tail's subscription goes)\n"
            "\n"
            "Run 'sbctl COMMAND --help' for the options of a command.\n",
            sb_client_platform_endpoint());
}

static void print_cmd_help(const sbctl_cmd *cmd)
{
    printf("Usage: sbctl %s%s%s [OPTIONS]\n\n%s\n\n%s\nOptions:\n", cmd->name,
           cmd->args[0] != '\0' ? " " : "", cmd->args, cmd->summary, cmd->help);
    sbctl_args_print_help(stdout, cmd->opts, cmd->nopts);
}

static int has_opt(const sbctl_cmd *cmd, const char *name)
{
    for (size_t i = 0; i < cmd->nopts; i++)
        if (strcmp(cmd->opts[i].name, name) == 0)
            return 1;
    return 0;
}

/* Commands without an --endpoint option (passwd) work on local files. */
static int takes_endpoint(const sbctl_cmd *cmd)
{
    return has_opt(cmd, "endpoint");
}

static const sbctl_cmd *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i]->name, name) == 0)
            return commands[i];
    return NULL;
}

static int main_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "sbctl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'sbctl --help'.\n");
    return SBCTL_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    const char *global_eps[64];
    const char *global_tls[3] = {NULL, NULL, NULL}; /* --ca, --cert, --key */
    static const char *const tls_opts[3] = {"ca", "cert", "key"};
    size_t nglobal = 0;
    int global_json = 0, global_progress = 0;
    const char *endpoints[128];
    char cmdname[64], msg[256];
    const sbctl_cmd *cmd;
    sbctl_args a;
    sbctl_ctx ctx;
    int i = 1, rc;

    sbctl_platform_init(&argc, &argv);

    /* Global options before the command. */
    while (i < argc && argv[i][0] == '-' && argv[i][1] != '\0') {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            print_main_help(stdout);
            return SBCTL_EXIT_OK;
        }
        if (strcmp(arg, "-V") == 0 || strcmp(arg, "--version") == 0) {
            printf("sbctl %s (Switchboard)\n", SBCTL_VERSION);
            return SBCTL_EXIT_OK;
        }
        if (strcmp(arg, "--json") == 0 || strcmp(arg, "--progress") == 0) {
            *(arg[2] == 'j' ? &global_json : &global_progress) = 1;
            i++;
            continue;
        }
        if (strcmp(arg, "-e") == 0 || strcmp(arg, "--endpoint") == 0) {
            if (i + 1 >= argc)
                return main_usage("%s needs a value (ENDPOINT)", arg);
            if (nglobal < sizeof(global_eps) / sizeof(global_eps[0]))
                global_eps[nglobal++] = argv[i + 1];
            i += 2;
            continue;
        }
        if (strncmp(arg, "--endpoint=", 11) == 0 || (arg[1] == 'e' && arg[2] != '\0')) {
            if (nglobal < sizeof(global_eps) / sizeof(global_eps[0]))
                global_eps[nglobal++] = arg[1] == 'e' ? arg + 2 : arg + 11;
            i++;
            continue;
        }
        {
            size_t k;
            for (k = 0; k < 3; k++)
                if (strncmp(arg, "--", 2) == 0 && strcmp(arg + 2, tls_opts[k]) == 0)
                    break;
            if (k < 3) {
                if (i + 1 >= argc)
                    return main_usage("%s needs a value (FILE)", arg);
                global_tls[k] = argv[i + 1];
                i += 2;
                continue;
            }
        }
        return main_usage("unknown option %s", arg);
    }
    if (i >= argc) {
        print_main_help(stderr);
        return SBCTL_EXIT_USAGE;
    }

    /* The command: one word, or "dlq" and an action; "help CMD" too. */
    if (strcmp(argv[i], "help") == 0) {
        if (i + 1 >= argc) {
            print_main_help(stdout);
            return SBCTL_EXIT_OK;
        }
        i++;
        if ((strcmp(argv[i], "dlq") == 0 || strcmp(argv[i], "route") == 0) && i + 1 < argc)
            snprintf(cmdname, sizeof(cmdname), "%s %s", argv[i], argv[i + 1]);
        else
            snprintf(cmdname, sizeof(cmdname), "%s", argv[i]);
        cmd = find_command(cmdname);
        if (cmd == NULL)
            return main_usage("unknown command '%s'", cmdname);
        print_cmd_help(cmd);
        return SBCTL_EXIT_OK;
    }
    if (strcmp(argv[i], "dlq") == 0) {
        if (i + 1 >= argc || argv[i + 1][0] == '-') {
            fprintf(stderr, "sbctl dlq: expected an action: list, redrive or purge\n"
                            "Usage: sbctl dlq list|redrive|purge [SUB] [OPTIONS]\n");
            return SBCTL_EXIT_USAGE;
        }
        snprintf(cmdname, sizeof(cmdname), "dlq %s", argv[i + 1]);
        i += 2;
    } else if (strcmp(argv[i], "route") == 0) {
        if (i + 1 >= argc || argv[i + 1][0] == '-') {
            fprintf(stderr, "sbctl route: expected an action: test\n"
                            "Usage: sbctl route test ROUTE --topic T [--payload P] [OPTIONS]\n");
            return SBCTL_EXIT_USAGE;
        }
        snprintf(cmdname, sizeof(cmdname), "route %s", argv[i + 1]);
        i += 2;
    } else {
        snprintf(cmdname, sizeof(cmdname), "%s", argv[i]);
        i++;
    }
    cmd = find_command(cmdname);
    if (cmd == NULL)
        return main_usage("unknown command '%s'", cmdname);

    rc = sbctl_args_parse(&a, cmd->opts, cmd->nopts, argc - i, argv + i, msg, sizeof(msg));
    if (rc != 0) {
        sbctl_args_free(&a);
        if (rc == -2) {
            sbctl_errorf("out of memory");
            return SBCTL_EXIT_ERROR;
        }
        return sbctl_usage_error(cmd, "%s", msg);
    }
    if (sbctl_arg_flag(&a, "help")) {
        print_cmd_help(cmd);
        sbctl_args_free(&a);
        return SBCTL_EXIT_OK;
    }
    if (a.npos < cmd->min_pos || a.npos > cmd->max_pos) {
        rc = a.npos < cmd->min_pos
                 ? sbctl_usage_error(cmd, "missing argument")
                 : sbctl_usage_error(cmd, "unexpected argument '%s'", a.pos[cmd->max_pos]);
        sbctl_args_free(&a);
        return rc;
    }

    memset(&ctx, 0, sizeof(ctx));
    sb_client_options_init(&ctx.client);
    if (takes_endpoint(cmd)) {
        const sbctl_optval *ev = sbctl_arg(&a, "endpoint");
        ctx.client.tls.ca = sbctl_arg_str(&a, "ca", global_tls[0]);
        ctx.client.tls.cert = sbctl_arg_str(&a, "cert", global_tls[1]);
        ctx.client.tls.key = sbctl_arg_str(&a, "key", global_tls[2]);
        if ((ctx.client.tls.cert == NULL) != (ctx.client.tls.key == NULL)) {
            rc = sbctl_usage_error(cmd, "--cert and --key go together");
            sbctl_args_free(&a);
            return rc;
        }
        for (size_t k = 0; k < nglobal; k++)
            endpoints[ctx.nendpoints++] = global_eps[k];
        for (int k = 0; k < ev->count && ctx.nendpoints < 128; k++)
            endpoints[ctx.nendpoints++] = ev->list[k];
    }
    ctx.json = global_json || (has_opt(cmd, "json") && sbctl_arg_flag(&a, "json"));
    sbctl_json_errors(ctx.json);
    ctx.progress = global_progress || (has_opt(cmd, "progress") && sbctl_arg_flag(&a, "progress"));
    if (ctx.nendpoints == 0)
        endpoints[ctx.nendpoints++] = sb_client_default_endpoint();
    ctx.endpoints = endpoints;
    if (ctx.nendpoints > 1 && cmd != &sbctl_cmd_bench) {
        rc = sbctl_usage_error(cmd, "--endpoint given %zu times (only bench takes several)",
                               ctx.nendpoints);
        sbctl_args_free(&a);
        return rc;
    }
    ctx.tty_in = sbctl_isatty(0);
    ctx.tty_out = sbctl_isatty(1);
    ctx.tty_err = sbctl_isatty(2);

    rc = cmd->run(&ctx, cmd, &a);
    sbctl_args_free(&a);
    if (fflush(stdout) != 0 && rc == SBCTL_EXIT_OK) {
        perror("sbctl: writing to stdout");
        rc = SBCTL_EXIT_ERROR;
    }
    return rc;
}
