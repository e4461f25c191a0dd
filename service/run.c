/* Running the broker in the foreground or as a service (see service_cmd.h). */
#include "config/config.h"
#include "service/broker.h"
#include "service/log.h"
#include "service/platform.h"
#include "service/run_int.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

static sb_broker *running;
static const sb_run_hooks *run_hooks;

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
    if (run_hooks != NULL && run_hooks->stopping != NULL)
        run_hooks->stopping(run_hooks->ctx);
    sb_broker_request_stop(running);
}

static int load_config(const char *path, sb_config **out)
{
    sb_config_errors errs = {0};
    int rc = sb_config_load(out, path, &errs);
    if (rc != 0) {
        char line[1024];
        for (size_t i = 0; i < errs.count; i++)
            sb_errlog("config", "%s", sb_config_error_format(&errs.items[i], line, sizeof line));
        sb_errlog("config", "%s: %zu error%s", path, errs.count, errs.count == 1 ? "" : "s");
        sb_config_errors_clear(&errs);
    }
    return rc;
}

int sb_run_broker(const char *path, const char *level, const sb_run_hooks *hooks)
{
    sb_config *cfg;
    sb_broker *b;
    sb_error err;
    sb_stop_watch *watch;
    uv_signal_t sigint, sigterm, sighup;
    char admin[1024];
    uint64_t fd_before = 0, fd_after = 0;
    int lvl, rc;

    if (load_config(path, &cfg) != 0)
        return 1;
    lvl = level != NULL ? sb_log_level_parse(level) : cfg->broker.log_level;
    if (lvl < 0) {
        sb_errlog(NULL, "unknown log level '%s'", level);
        sb_config_free(cfg);
        return 2;
    }
    cfg->broker.log_level = lvl;
    if (sb_log_configure(lvl, cfg->broker.log_stderr, cfg->broker.log_file) != 0) {
        sb_config_free(cfg);
        return 1;
    }
    /* Every connection is a descriptor: the soft limit (often 1024) is
     * not what the administrator allowed, the hard one is. */
    rc = sb_platform_raise_fd_limit(&fd_before, &fd_after);
    if (rc > 0)
        sb_info(NULL, "open descriptor limit raised from %llu to %llu",
                (unsigned long long)fd_before, (unsigned long long)fd_after);
    else if (rc < 0)
        sb_warn(NULL, "cannot raise the open descriptor limit (%llu): %s",
                (unsigned long long)fd_before, sb_strerror(rc));
    if (sb_broker_new(&b, cfg, &err) != 0) {
        sb_errlog(NULL, "%s", err.msg);
        sb_config_free(cfg);
        return 1;
    }
    sb_broker_set_service(b, hooks != NULL);
    /* Foreground only: the service is stopped through the SCM. Opened
     * before the start so it exists once the broker reports ready. */
    watch = hooks == NULL ? sb_run__stop_watch_open(b) : NULL;
    if (sb_broker_start(b, &err) != 0) {
        sb_errlog(NULL, "cannot start: %s", err.msg);
        sb_run__stop_watch_close(watch);
        sb_broker_free(b);
        return 1;
    }
    running = b;
    run_hooks = hooks;
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
    cfg = (sb_config *)sb_broker_get_config(b);
    if (cfg->broker.admin_endpoint == NULL || strcmp(cfg->broker.admin_endpoint, "default") == 0)
        sb_platform_default_admin_endpoint(admin, sizeof(admin), cfg->broker.data_dir);
    else
        snprintf(admin, sizeof(admin), "%s", cfg->broker.admin_endpoint);
    if (strcmp(admin, "off") != 0)
        sb_info(NULL, "admin endpoint %s; try: sbctl -e %s stats", admin, admin);
    if (hooks != NULL && hooks->ready != NULL)
        hooks->ready(b, hooks->ctx);
    sb_broker_run(b);
    sb_run__stop_watch_close(watch);
    sb_info(NULL, "stopped");
    running = NULL;
    sb_broker_free(b);
    return 0;
}
