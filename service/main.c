/*
 * switchboard: the broker executable.
 *   switchboard run --config FILE     run in the foreground
 *   switchboard check-config FILE     validate a config and exit
 *   switchboard schema                the config's JSON Schema, on stdout
 *   switchboard service ...           the Windows service (install, start, ...)
 *   switchboard com ...               COM registration and the COM relay (Windows)
 *   switchboard version
 */
#include "adapters/builtin.h"
#include "adapters/com/com_cmd.h"
#include "config/config.h"
#include "service/agent.h"
#include "service/broker.h"
#include "service/log.h"
#include "service/platform.h"
#include "service/service_cmd.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage:\n"
               "  switchboard run --config FILE [--log-level debug|info|warn|error]\n"
               "  switchboard check-config FILE\n"
               "  switchboard schema\n"
               "  switchboard service install|uninstall|start|stop|status [...]  (Windows)\n"
               "  switchboard agent [--endpoint NAME] [--log-level LEVEL]\n"
               "  switchboard com register|unregister|status [...]  (Windows)\n"
               "  switchboard version\n"
               "\n"
               "run           run the broker in the foreground (Ctrl-C stops it; SIGHUP reloads\n"
               "              the config)\n"
               "check-config  report every error in FILE as FILE:LINE:COL: key: message\n"
               "schema        print the JSON Schema of config files (for editors; the same as\n"
               "              config/switchboard.schema.json)\n"
               "service       install and manage the Windows service (see `service help`)\n"
               "agent         the session agent: hosts desktop adapters (DDE, WM_COPYDATA, the\n"
               "              clipboard) in a user's session for the service (`agent --help`)\n"
               "com           register Switchboard.Broker for COM clients (`com help`)\n");
}

static int cmd_check_config(int argc, char **argv)
{
    sb_config *cfg;
    sb_config_errors errs = {0};
    sb_error err;
    if (argc != 1) {
        usage(stderr);
        return 2;
    }
    if (sb_config_load(&cfg, argv[0], &errs) != 0) {
        sb_config_errors_print(&errs, stderr);
        fprintf(stderr, "%s: %zu error%s\n", argv[0], errs.count, errs.count == 1 ? "" : "s");
        sb_config_errors_clear(&errs);
        return 1;
    }
    if (sb_broker_check_config(cfg, 0, &err) != 0) {
        fprintf(stderr, "%s\n%s: 1 error\n", err.msg, argv[0]);
        sb_config_free(cfg);
        return 1;
    }
    printf("%s: OK (%zu adapters, %zu routes)\n", argv[0], cfg->adapter_count, cfg->route_count);
    sb_config_free(cfg);
    return 0;
}

static int cmd_schema(int argc)
{
    int rc;
    if (argc != 0) {
        usage(stderr);
        return 2;
    }
    rc = sb_config_json_schema(stdout);
    if (rc != 0) {
        fprintf(stderr, "switchboard schema: %s\n", sb_strerror(rc));
        return 1;
    }
    return 0;
}

/* `service install` and `service configure` (the MSI's step) register
 * Switchboard.Broker as well, `uninstall` and `unconfigure` remove it: the
 * COM registration is the adapters' layer, above the service's. */
static int cmd_service(int argc, char **argv)
{
    const char *sub = argc > 0 ? argv[0] : "";
    int rc = sb_service_command(argc, argv);
    if (rc == 0 && (strcmp(sub, "install") == 0 || strcmp(sub, "configure") == 0))
        rc = sb_com_register_defaults();
    else if (strcmp(sub, "uninstall") == 0 || strcmp(sub, "unconfigure") == 0)
        (void)sb_com_unregister_all(); /* says why if it cannot */
    return rc;
}

static int cmd_run(int argc, char **argv)
{
    const char *path = NULL, *level = NULL;
    int rc;
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
    rc = sb_run_broker(path, level, NULL);
    sb_log_close();
    return rc;
}

int main(int argc, char **argv)
{
    sb_error err;
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    sb_platform_init();
    /* Once, before any command looks up a type: a failure is a defect of
     * this build (two types of one name, a type built for another
     * interface version), not of the config. */
    if (sb_adapters_register_builtin(&err) != 0) {
        fprintf(stderr, "switchboard: cannot register the built-in adapter types: %s\n", err.msg);
        return 1;
    }
    if (strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 2, argv + 2);
    if (strcmp(argv[1], "check-config") == 0)
        return cmd_check_config(argc - 2, argv + 2);
    if (strcmp(argv[1], "schema") == 0)
        return cmd_schema(argc - 2);
    if (strcmp(argv[1], "service") == 0)
        return cmd_service(argc - 2, argv + 2);
    if (strcmp(argv[1], "com") == 0)
        return sb_com_command(argc - 2, argv + 2);
    if (strcmp(argv[1], "agent") == 0) {
        int rc = sb_agent_command(argc - 2, argv + 2);
        sb_log_close();
        return rc;
    }
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
