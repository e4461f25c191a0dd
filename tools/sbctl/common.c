/* Helpers shared by the sbctl commands (see sbctl.h). */
#include "tools/sbctl/sbctl.h"

#include "tools/client/endpoint.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static int json_errors;

void sbctl_json_errors(int on)
{
    json_errors = on;
}

/* Prints message (with the error code's name, or NULL) as sbctl_errorf. */
static void print_error(const char *code, const char *message)
{
    fflush(stdout);
    if (json_errors) {
        /* a message that is not UTF-8 (a file name) is sent as bytes */
        json_t *o = json_pack("{s:s%}", "error", message, strlen(message));
        char *text;
        if (o != NULL && code != NULL)
            json_object_set_new(o, "code", json_string(code));
        text = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        json_decref(o);
        if (text != NULL) {
            fprintf(stderr, "%s\n", text);
            free(text);
            return;
        }
    }
    fprintf(stderr, "sbctl: %s\n", message);
}

static void verror(const char *code, const char *fmt, va_list ap)
{
    char small[1024], *big = NULL;
    va_list again;
    int n;
    va_copy(again, ap);
    n = vsnprintf(small, sizeof small, fmt, ap);
    if (n >= (int)sizeof small && (big = malloc((size_t)n + 1)) != NULL)
        vsnprintf(big, (size_t)n + 1, fmt, again);
    va_end(again);
    print_error(code, big != NULL ? big : small);
    free(big);
}

void sbctl_errorf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(NULL, fmt, ap);
    va_end(ap);
}

static void errorf_code(const char *code, const char *fmt, ...) SB_PRINTF(2, 3);
static void errorf_code(const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(code, fmt, ap);
    va_end(ap);
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

int sbctl_connect(sb_client **out, const sbctl_ctx *ctx, const char *endpoint)
{
    sb_endpoint ep;
    sb_error err;

    sb_error_clear(&err);
    *out = NULL;
    if (sb_endpoint_parse(&ep, endpoint, &err) != 0) {
        sbctl_errorf("%s (endpoints: unix:PATH, tcp:HOST:PORT, tls:HOST:PORT, HOST:PORT, "
                     "\\\\.\\pipe\\NAME or a socket path)",
                     err.msg);
        return SBCTL_EXIT_USAGE;
    }
    if (sb_client_connect(out, endpoint, &ctx->client, &err) == 0)
        return SBCTL_EXIT_OK;
    if (err.code == SB_EINVAL || err.code == SB_EPROTO) /* a pipe endpoint on POSIX, TLS */
        errorf_code(sb_errname(err.code), "%s", err.msg);
    else
        errorf_code(sb_errname(err.code), "%s (is the broker running? see --endpoint)", err.msg);
    return SBCTL_EXIT_CONN;
}

int sbctl_conn_failed(const char *what, const sb_error *err)
{
    errorf_code(sb_errname(err->code), "%s: %s", what, err->msg);
    return SBCTL_EXIT_CONN;
}

int sbctl_broker_failed(const char *what, const sb_error *err)
{
    errorf_code(sb_errname(err->code), "%s: %s [%s]", what, err->msg, sb_errname(err->code));
    return err->code == SB_EAUTH || err->code == SB_EACCES ? SBCTL_EXIT_DENIED : SBCTL_EXIT_ERROR;
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

void sbctl_progress_start(sbctl_progress *p, const sbctl_ctx *ctx)
{
    memset(p, 0, sizeof(*p));
    p->tty = ctx->tty_err;
    p->on = ctx->tty_err || ctx->progress;
    p->start_ns = sbctl_now_ns();
}

void sbctl_progress_show(sbctl_progress *p, const char *fmt, ...)
{
    unsigned long long now = sbctl_now_ns();
    unsigned long long every = p->tty ? 200000000ull : 1000000000ull;
    va_list ap;

    /* on a terminal, quick operations show nothing; asked for, it starts
     * at once */
    if (!p->on || (p->tty && now - p->start_ns < 1000000000ull) ||
        (p->last_ns != 0 && now - p->last_ns < every))
        return;
    p->last_ns = now;
    p->shown = 1;
    fputs(p->tty ? "\r\033[K  " : "sbctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (!p->tty)
        fputc('\n', stderr);
    fflush(stderr);
}

void sbctl_progress_end(sbctl_progress *p)
{
    if (p->shown && p->tty) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    p->shown = 0;
}

int sbctl_print_json(json_t *obj)
{
    char *s = obj != NULL ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6))
                          : NULL;
    json_decref(obj);
    if (s == NULL) {
        sbctl_errorf("out of memory");
        return SBCTL_EXIT_ERROR;
    }
    puts(s);
    free(s);
    return SBCTL_EXIT_OK;
}

unsigned long long sbctl_now_ns(void)
{
    return (unsigned long long)uv_hrtime();
}
