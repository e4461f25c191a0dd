/* Socket address parsing and formatting. */
#include "adapters/socket/socket.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sb_socket_parse_addr(const char *addr, struct sockaddr_storage *out, sb_error *err)
{
    char host[256];
    const char *colon;
    char *end;
    long port;
    size_t hl;

    memset(out, 0, sizeof(*out));
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || close[1] != ':')
            goto bad;
        hl = (size_t)(close - addr - 1);
        if (hl >= sizeof(host))
            goto bad;
        memcpy(host, addr + 1, hl);
        host[hl] = '\0';
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL)
            goto bad;
        hl = (size_t)(colon - addr);
        if (hl >= sizeof(host))
            goto bad;
        memcpy(host, addr, hl);
        host[hl] = '\0';
        if (hl == 0)
            strcpy(host, "0.0.0.0");
        else if (strcmp(host, "localhost") == 0)
            strcpy(host, "127.0.0.1");
    }
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || colon[1] == '\0' || port < 0 || port > 65535)
        goto bad;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) == 0)
        return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) == 0)
        return 0;
bad:
    return sb_error_set(err, SB_ECONFIG, 0,
                        "invalid address '%s' (expected host:port with a numeric host, "
                        "e.g. 127.0.0.1:7878 or [::1]:7878)",
                        addr);
}

void sb_socket_format_addr(const struct sockaddr *sa, char *out, size_t n)
{
    char ip[64] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        uv_ip4_name(in, ip, sizeof(ip));
        port = ntohs(in->sin_port);
        snprintf(out, n, "%s:%d", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        uv_ip6_name(in6, ip, sizeof(ip));
        port = ntohs(in6->sin6_port);
        snprintf(out, n, "[%s]:%d", ip, port);
    } else {
        snprintf(out, n, "local");
    }
}
