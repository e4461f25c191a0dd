/*
 * switchboard: the broker executable.
 *   switchboard run --config FILE     run in the foreground
 *   switchboard check-config FILE     validate a config and exit
 *   switchboard version
 * (On Windows the same executable is also the service; see service/win/.)
 */
#include "config/config.h"
#include "service/broker.h"
#include "service/log.h"
#include "service/platform.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage:\n"
               "  switchboard run --config FILE [--log-level debug|info|warn|error]\n"
               "  switchboard check-config FILE\n"
               "  switchboard version\n"
               "\n"
               "run           run the broker in the foreground (Ctrl-C stops it; SIGHUP reloads\n"
               "              the config)\n"
               "check-config  report every error in FILE as FILE:LINE:COL: key: message\n");
}

static int load_config(const char *path, sb_config **out)
{
    sb_config_errors errs = {0};
    int rc = sb_config_load(out, path, &errs);
    if (rc != 0) {
        sb_config_errors_print(&errs, stderr);
        fprintf(stderr, "%s: %zu error%s\n", path, errs.count, errs.count == 1 ? "" : "s");
        sb_config_errors_clear(&errs);
    }
    return rc;
}

static int cmd_check_config(int argc, char **argv)
{
    sb_config *cfg;
    if (argc != 1) {
        usage(stderr);
        return 2;
    }
    if (load_config(argv[0], &cfg) != 0)
        return 1;
    printf("%s: OK (%zu adapters, %zu routes)\n", argv[0], cfg->adapter_count, cfg->route_count);
    sb_config_free(cfg);
    return 0;
}

static sb_broker *running;

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
#ifdef SIGHUP
    if (signum == SIGHUP) {
        sb_broker_request_reload(running);
        return;
    }
#endif
    sb_info(NULL, "signal %d received", signum);
    sb_broker_request_stop(running);
}

static int cmd_run(int argc, char **argv)
{
    const char *path = NULL, *level = NULL;
    sb_config *cfg;
    sb_broker *b;
    sb_error err;
    uv_signal_t sigint, sigterm, sighup;
    int lvl;

    for (int i = 0; i < argc; i++) {
        if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc)
            level = argv[++i];
        else {
            fprintf(stderr, "switchboard run: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (path == NULL) {
        fprintf(stderr, "switchboard run: --config FILE is required\n");
        return 2;
    }
    if (load_config(path, &cfg) != 0)
        return 1;
    lvl = level != NULL ? sb_log_level_parse(level) : cfg->broker.log_level;
    if (lvl < 0) {
        fprintf(stderr, "switchboard run: unknown log level '%s'\n", level);
        sb_config_free(cfg);
        return 2;
    }
    cfg->broker.log_level = lvl;
    if (sb_log_configure(lvl, cfg->broker.log_stderr, cfg->broker.log_file) != 0) {
        sb_config_free(cfg);
        return 1;
    }
    if (sb_broker_new(&b, cfg, &err) != 0) {
        sb_errlog(NULL, "%s", err.msg);
        sb_config_free(cfg);
        return 1;
    }
    if (sb_broker_start(b, &err) != 0) {
        sb_errlog(NULL, "cannot start: %s", err.msg);
        sb_broker_free(b);
        return 1;
    }
    running = b;
    uv_signal_init(sb_broker_loop(b), &sigint);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_init(sb_broker_loop(b), &sigterm);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
#ifdef SIGHUP
    uv_signal_init(sb_broker_loop(b), &sighup);
    uv_signal_start(&sighup, on_signal, SIGHUP);
#else
    (void)sighup;
#endif
    {
        const sb_config *c = sb_broker_get_config(b);
        char admin[1024];
        if (c->broker.admin_endpoint == NULL || strcmp(c->broker.admin_endpoint, "default") == 0)
            sb_platform_default_admin_endpoint(admin, sizeof(admin), c->broker.data_dir);
        else
            snprintf(admin, sizeof(admin), "%s", c->broker.admin_endpoint);
        if (strcmp(admin, "off") != 0)
            sb_info(NULL, "admin endpoint %s; try: sbctl -e %s stats", admin, admin);
    }
    sb_broker_run(b);
    sb_info(NULL, "stopped");
    sb_broker_free(b);
    sb_log_close();
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    sb_platform_init();
    if (strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 2, argv + 2);
    if (strcmp(argv[1], "check-config") == 0)
        return cmd_check_config(argc - 2, argv + 2);
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("switchboard %s\n", SB_VERSION_STRING);
        return 0;
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "switchboard: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
