/*
 * broker.http: the address of the HTTP listener (service/http.h). Parsed
 * here once, for the config check and for the listener itself, so that
 * what check-config accepts is what the broker binds. Another address than
 * loopback is refused unless the section says anonymous: true: the page and
 * the metrics are readable by anyone who can connect (there is no TLS and
 * no login; a reverse proxy in front provides those).
 */
#include "config/config_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

int sb_config_http_listen(const char *addr, char *host, size_t host_len, int *port, int *loopback,
                          char *why, size_t why_len)
{
    const char *colon = strrchr(addr, ':'), *h = addr;
    char q[96], *end;
    size_t hl;
    long p;
    struct sockaddr_in sa4;
    struct sockaddr_in6 sa6;

    sb_config__quote(q, sizeof q, addr);
    if (colon == NULL || colon == addr) {
        snprintf(why, why_len, "expected host:port (e.g. 127.0.0.1:9180), got %s", q);
        return SB_EINVAL;
    }
    if (addr[0] == '[' ? colon[-1] != ']' : memchr(addr, ':', (size_t)(colon - addr)) != NULL) {
        snprintf(why, why_len, "expected host:port, got %s (write IPv6 addresses as [::1]:port)",
                 q);
        return SB_EINVAL;
    }
    p = strtol(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || p < 0 || p > 65535) {
        sb_config__quote(q, sizeof q, colon + 1);
        snprintf(why, why_len, "invalid port %s (must be 0..65535; 0: any free port)", q);
        return SB_EINVAL;
    }
    hl = (size_t)(colon - addr);
    if (addr[0] == '[') {
        h = addr + 1;
        hl -= 2;
    }
    if (hl == 0 || hl >= host_len) {
        snprintf(why, why_len, "host of %s is not a numeric address (names are not resolved)", q);
        return SB_EINVAL;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (strcmp(host, "localhost") == 0) {
        snprintf(host, host_len, "127.0.0.1");
        *loopback = 1;
    } else if (addr[0] != '[' && uv_ip4_addr(host, 0, &sa4) == 0) {
        *loopback = (ntohl(sa4.sin_addr.s_addr) >> 24) == 127;
    } else if (addr[0] == '[' && uv_ip6_addr(host, 0, &sa6) == 0) {
        static const unsigned char one[16] = {[15] = 1};
        *loopback = memcmp(&sa6.sin6_addr, one, sizeof one) == 0;
    } else {
        sb_config__quote(q, sizeof q, host);
        snprintf(why, why_len,
                 "host %s is not a numeric address (write e.g. 127.0.0.1:9180 or [::1]:9180; "
                 "names are not resolved)",
                 q);
        return SB_EINVAL;
    }
    *port = (int)p;
    return 0;
}

void sb_config__check_http(sb_config__ctx *ctx, const yaml_node_t *root)
{
    const sb_broker_config *bc = &ctx->cfg->broker;
    const yaml_node_t *http, *listen;
    char host[64], why[300];
    int port, loopback = 0;

    if (bc->http_listen == NULL)
        return;
    http = sb_config__lookup(ctx, sb_config__lookup(ctx, root, "broker"), "http");
    listen = sb_config__lookup(ctx, http, "listen");
    if (sb_config_http_listen(bc->http_listen, host, sizeof host, &port, &loopback, why,
                              sizeof why) != 0) {
        sb_config__error(ctx, listen, "broker.http.listen", "%s", why);
        return;
    }
    if (!loopback && !bc->http_anonymous)
        sb_config__error(ctx, listen, "broker.http.listen",
                         "%s is not a loopback address: the status page and the metrics would "
                         "be open to anyone who can reach it, without TLS or a login; set "
                         "anonymous: true to allow that (and put a TLS reverse proxy in front, "
                         "see README)",
                         bc->http_listen);
}
