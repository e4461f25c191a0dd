/* Endpoint string parsing (see endpoint.h for the accepted forms). */
#include "tools/client/endpoint.h"

#include <stdio.h>
#include <string.h>

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int copy_str(char *dst, size_t cap, const char *src, size_t len)
{
    if (len >= cap)
        return -1;
    memcpy(dst, src, len);
    dst[len] = '\0';
    return 0;
}

/* Parses a decimal port; returns it, or -1 if not all digits, -2 if out of range. */
static int parse_port(const char *s)
{
    long v = 0;
    if (*s == '\0')
        return -1;
    for (const char *p = s; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if (v <= 65535)
            v = v * 10 + (*p - '0');
    }
    return (v < 1 || v > 65535) ? -2 : (int)v;
}

/* Splits "HOST:PORT" or "[V6]:PORT". Returns 0, or -1 with a reason. */
static int parse_host_port(sb_endpoint *out, const char *s, const char **reason)
{
    const char *host, *colon;
    size_t host_len;
    int port;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL) {
            *reason = "missing ']' after IPv6 address";
            return -1;
        }
        host = s + 1;
        host_len = (size_t)(close - host);
        if (close[1] != ':') {
            *reason = "expected HOST:PORT";
            return -1;
        }
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL) {
            *reason = "expected HOST:PORT";
            return -1;
        }
        host = s;
        host_len = (size_t)(colon - s);
        if (memchr(host, ':', host_len) != NULL) {
            *reason = "an IPv6 address must be written in brackets: [ADDR]:PORT";
            return -1;
        }
    }
    if (host_len == 0) {
        *reason = "missing host";
        return -1;
    }
    port = parse_port(colon + 1);
    if (port == -1) {
        *reason = "port must be a number";
        return -1;
    }
    if (port == -2) {
        *reason = "port must be between 1 and 65535";
        return -1;
    }
    if (copy_str(out->host, sizeof(out->host), host, host_len) != 0) {
        *reason = "host name too long";
        return -1;
    }
    out->port = port;
    out->kind = SB_ENDPOINT_TCP;
    if (strchr(out->host, ':') != NULL)
        snprintf(out->display, sizeof(out->display), "tcp:[%s]:%d", out->host, port);
    else
        snprintf(out->display, sizeof(out->display), "tcp:%s:%d", out->host, port);
    return 0;
}

static int set_unix(sb_endpoint *out, const char *path, const char **reason)
{
    if (*path == '\0') {
        *reason = "missing socket path";
        return -1;
    }
    if (copy_str(out->path, sizeof(out->path), path, strlen(path)) != 0) {
        *reason = "path too long";
        return -1;
    }
    out->kind = SB_ENDPOINT_UNIX;
    snprintf(out->display, sizeof(out->display), "unix:%s", path);
    return 0;
}

static int set_pipe(sb_endpoint *out, const char *full, const char **reason)
{
    /* full is \\SERVER\pipe\NAME; NAME must be non-empty. */
    const char *p = full + 2;
    const char *sep = strchr(p, '\\');
    if (sep == NULL || sep == p || !starts_with(sep, "\\pipe\\") || sep[6] == '\0') {
        *reason = "expected \\\\.\\pipe\\NAME";
        return -1;
    }
    if (copy_str(out->path, sizeof(out->path), full, strlen(full)) != 0) {
        *reason = "pipe name too long";
        return -1;
    }
    out->kind = SB_ENDPOINT_PIPE;
    snprintf(out->display, sizeof(out->display), "%s", full);
    return 0;
}

/* rpc:NAME (ncalrpc) or rpc:HOST:PORT (ncacn_ip_tcp): the client library
 * checks the rest. */
static int set_rpc(sb_endpoint *out, const char *rest, const char **reason)
{
    if (*rest == '\0') {
        *reason = "expected rpc:NAME or rpc:HOST:PORT";
        return -1;
    }
    if (copy_str(out->path, sizeof(out->path), rest, strlen(rest)) != 0) {
        *reason = "endpoint too long";
        return -1;
    }
    out->kind = SB_ENDPOINT_RPC;
    snprintf(out->display, sizeof(out->display), "rpc:%s", rest);
    return 0;
}

int sb_endpoint_parse(sb_endpoint *out, const char *s, sb_error *err)
{
    const char *reason = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    if (s == NULL || *s == '\0')
        return sb_error_set(err, SB_EINVAL, 0, "empty endpoint");

    if (starts_with(s, "unix:")) {
        rc = set_unix(out, s + 5, &reason);
    } else if (starts_with(s, "tcp:")) {
        rc = parse_host_port(out, s + 4, &reason);
    } else if (starts_with(s, "tls:")) {
        rc = parse_host_port(out, s + 4, &reason);
        if (rc == 0) {
            out->tls = 1;
            memcpy(out->display, "tls", 3); /* "tcp:..." as parse_host_port wrote it */
        }
    } else if (starts_with(s, "pipe:")) {
        char full[SB_ENDPOINT_PATH_MAX];
        const char *name = s + 5;
        if (starts_with(name, "\\\\")) {
            rc = set_pipe(out, name, &reason);
        } else if (*name == '\0' || strchr(name, '\\') != NULL) {
            reason = "pipe name must be non-empty and without '\\'";
            rc = -1;
        } else {
            snprintf(full, sizeof(full), "\\\\.\\pipe\\%s", name);
            rc = set_pipe(out, full, &reason);
        }
    } else if (starts_with(s, "\\\\")) {
        rc = set_pipe(out, s, &reason);
    } else if (starts_with(s, "rpc:")) {
        rc = set_rpc(out, s + 4, &reason);
    } else if (strchr(s, '/') == NULL && strchr(s, ':') != NULL &&
               parse_port(strrchr(s, ':') + 1) != -1) {
        /* Bare HOST:PORT: no '/' and a number after the last ':'. */
        rc = parse_host_port(out, s, &reason);
    } else {
        rc = set_unix(out, s, &reason);
    }
    if (rc != 0) {
        memset(out, 0, sizeof(*out));
        /* Quote a long endpoint shortened, so the reason stays in the message. */
        return sb_error_set(err, SB_EINVAL, 0, "endpoint %.80s%s: %s", s,
                            strlen(s) > 80 ? "..." : "", reason);
    }
    return 0;
}
