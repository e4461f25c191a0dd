/* Helpers shared by the sbctl commands (see sbctl.h). */
#include "tools/sbctl/sbctl.h"

#include "tools/client/endpoint.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

void sbctl_errorf(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("sbctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int sbctl_usage_error(const sbctl_cmd *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "sbctl %s: ", cmd->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nUsage: sbctl %s%s%s\nTry 'sbctl %s --help'.\n", cmd->name,
            cmd->args[0] != '\0' ? " " : "", cmd->args, cmd->name);
    return SBCTL_EXIT_USAGE;
}

int sbctl_connect(sb_client **out, const char *endpoint)
{
    sb_endpoint ep;
    sb_error err;

    sb_error_clear(&err);
    *out = NULL;
    if (sb_endpoint_parse(&ep, endpoint, &err) != 0) {
        sbctl_errorf("%s (endpoints: unix:PATH, tcp:HOST:PORT, HOST:PORT, \\\\.\\pipe\\NAME "
                     "or a socket path)",
                     err.msg);
        return SBCTL_EXIT_USAGE;
    }
    if (sb_client_connect(out, endpoint, NULL, &err) == 0)
        return SBCTL_EXIT_OK;
    if (err.code == SB_EINVAL) /* e.g. a pipe endpoint on POSIX: no hint helps */
        sbctl_errorf("%s", err.msg);
    else
        sbctl_errorf("%s (is the broker running? see --endpoint)", err.msg);
    return SBCTL_EXIT_CONN;
}

int sbctl_conn_failed(const char *what, const sb_error *err)
{
    sbctl_errorf("%s: %s", what, err->msg);
    return SBCTL_EXIT_CONN;
}

int sbctl_broker_failed(const char *what, const sb_error *err)
{
    sbctl_errorf("%s: %s [%s]", what, err->msg, sb_errname(err->code));
    return SBCTL_EXIT_ERROR;
}

int sbctl_call(sb_client *c, json_t *req, json_t **reply, const char *what)
{
    sb_error err;
    int rc;

    sb_error_clear(&err);
    *reply = NULL;
    rc = sb_client_request(c, reply, req, SBCTL_REQUEST_TIMEOUT_MS, &err);
    if (rc != 0)
        return sbctl_conn_failed(what, &err);
    if (sb_client_reply_error(*reply, &err) != 0) {
        json_decref(*reply);
        *reply = NULL;
        return sbctl_broker_failed(what, &err);
    }
    return SBCTL_EXIT_OK;
}

int64_t sbctl_json_int(const json_t *obj, const char *key, int64_t dflt)
{
    const json_t *v = json_object_get(obj, key);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_real(v))
        return (int64_t)json_real_value(v);
    return dflt;
}

unsigned long long sbctl_now_ns(void)
{
    return (unsigned long long)uv_hrtime();
}
