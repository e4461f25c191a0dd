/*
 * mqttfloor: the raw mechanism under bench-mqtt.sh's MQTT load, the floor a
 * broker's CPU per message is measured against. One thread, one epoll loop,
 * no storage and no sessions: it answers CONNECT (CONNACK), SUBSCRIBE
 * (SUBACK) and PINGREQ, acknowledges each QoS 1/2 PUBLISH at once (PUBACK,
 * or PUBREC then PUBCOMP) and forwards it to every subscriber at QoS 1 with
 * a packet id of its own, whatever its topic; a subscriber's PUBACKs are
 * read and dropped. Per wake-up it reads each ready connection once (64 KiB)
 * and then writes each connection's output in one write: the fewest system
 * calls a broker over plain sockets can make for this load, with perfect
 * coalescing and nothing else to do.
 *
 *   mqttfloor PORT [NAP_US]
 *       listens on 127.0.0.1:PORT until SIGTERM or SIGINT; with NAP_US,
 *       sleeps that many microseconds after each wake-up that had events,
 *       so that more arrive per wake-up (bench-mqtt.sh passes none)
 *
 * Not a broker: no flow control, no QoS 2 state, no retained messages, no
 * persistence; it serves one benchmark, whose CPU per message it sets the
 * floor of.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 65536

typedef struct conn {
    int fd;
    int subscriber; /* on the subscriber list */
    int dirty;      /* on the dirty list */
    int out_armed;
    uint16_t next_pid;
    uint8_t *in, *out;
    size_t inlen, incap, outlen, outcap;
    struct conn *dirty_next;
    struct conn *sub_prev, *sub_next;
} conn;

static conn *subs;  /* the connections that subscribed */
static conn *dirty; /* with output to write, or closed: freed from here */
static int ep;
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void die(const char *what)
{
    fprintf(stderr, "mqttfloor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *grow(uint8_t **p, size_t *cap, size_t need)
{
    if (need > *cap) {
        size_t n = *cap ? *cap : 4096;
        while (n < need)
            n *= 2;
        if ((*p = realloc(*p, n)) == NULL) {
            fprintf(stderr, "mqttfloor: out of memory\n");
            exit(1);
        }
        *cap = n;
    }
    return *p;
}

static void out_put(conn *c, const void *p, size_t n)
{
    grow(&c->out, &c->outcap, c->outlen + n);
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
    if (!c->dirty) {
        c->dirty = 1;
        c->dirty_next = dirty;
        dirty = c;
    }
}

static void ack(conn *c, uint8_t type, uint16_t pid)
{
    uint8_t p[4] = {type, 2, (uint8_t)(pid >> 8), (uint8_t)pid};
    out_put(c, p, 4);
}

/* Closes c; the dirty list frees it, after this wake-up's events (which
 * may still refer to it). */
static void close_conn(conn *c)
{
    if (c->subscriber) {
        if (c->sub_prev != NULL)
            c->sub_prev->sub_next = c->sub_next;
        else
            subs = c->sub_next;
        if (c->sub_next != NULL)
            c->sub_next->sub_prev = c->sub_prev;
        c->subscriber = 0;
    }
    close(c->fd);
    c->fd = -1;
    if (!c->dirty) {
        c->dirty = 1;
        c->dirty_next = dirty;
        dirty = c;
    }
}

/* PUBLISH of topic and payload to subscriber s at QoS 1. */
static void forward(conn *s, const uint8_t *topic, size_t tlen, const uint8_t *payload, size_t plen)
{
    uint8_t h[16];
    size_t n = 0, rem = 2 + tlen + 2 + plen;
    uint16_t pid;
    if (++s->next_pid == 0)
        s->next_pid = 1;
    pid = s->next_pid;
    h[n++] = 0x32;
    do {
        uint8_t b = rem & 0x7f;
        rem >>= 7;
        h[n++] = (uint8_t)(b | (rem ? 0x80 : 0));
    } while (rem);
    h[n++] = (uint8_t)(tlen >> 8);
    h[n++] = (uint8_t)tlen;
    out_put(s, h, n);
    out_put(s, topic, tlen);
    h[0] = (uint8_t)(pid >> 8);
    h[1] = (uint8_t)pid;
    out_put(s, h, 2);
    out_put(s, payload, plen);
}

/* One packet: type byte t, body b[0..n). Returns -1 to close. */
static int packet(conn *c, uint8_t t, const uint8_t *b, size_t n)
{
    switch (t >> 4) {
    case 1: { /* CONNECT */
        uint8_t p[4] = {0x20, 2, 0, 0};
        out_put(c, p, 4);
        return 0;
    }
    case 3: { /* PUBLISH */
        int qos = (t >> 1) & 3;
        size_t tlen, off;
        uint16_t pid = 0;
        if (n < 2)
            return -1;
        tlen = (size_t)b[0] << 8 | b[1];
        off = 2 + tlen;
        if (qos > 0) {
            if (off + 2 > n)
                return -1;
            pid = (uint16_t)(b[off] << 8 | b[off + 1]);
            off += 2;
        }
        if (off > n)
            return -1;
        if (qos == 1)
            ack(c, 0x40, pid);
        else if (qos == 2)
            ack(c, 0x50, pid);
        for (conn *s = subs; s != NULL; s = s->sub_next)
            forward(s, b + 2, tlen, b + off, n - off);
        return 0;
    }
    case 6: /* PUBREL */
        if (n < 2)
            return -1;
        ack(c, 0x70, (uint16_t)(b[0] << 8 | b[1]));
        return 0;
    case 8: { /* SUBSCRIBE: grant QoS 1 to every filter */
        uint8_t h[8], one = 1;
        size_t pos = 2, k = 0, rem, hn = 0;
        if (n < 2)
            return -1;
        while (pos + 2 <= n) {
            pos += 2 + ((size_t)b[pos] << 8 | b[pos + 1]) + 1;
            k++;
        }
        h[hn++] = 0x90;
        rem = 2 + k;
        do {
            uint8_t d = rem & 0x7f;
            rem >>= 7;
            h[hn++] = (uint8_t)(d | (rem ? 0x80 : 0));
        } while (rem);
        h[hn++] = b[0];
        h[hn++] = b[1];
        out_put(c, h, hn);
        while (k-- > 0)
            out_put(c, &one, 1);
        if (!c->subscriber) {
            c->subscriber = 1;
            c->sub_prev = NULL;
            c->sub_next = subs;
            if (subs != NULL)
                subs->sub_prev = c;
            subs = c;
        }
        return 0;
    }
    case 12: { /* PINGREQ */
        uint8_t p[2] = {0xd0, 0};
        out_put(c, p, 2);
        return 0;
    }
    case 14: /* DISCONNECT */
        return -1;
    default: /* PUBACK, PUBREC, PUBCOMP, UNSUBSCRIBE...: dropped */
        return 0;
    }
}

/* Handles the complete packets of c->in; keeps the rest. */
static int parse(conn *c)
{
    size_t pos = 0;
    for (;;) {
        size_t rem = 0, i = 1;
        int shift = 0;
        if (c->inlen - pos < 2)
            break;
        for (;;) {
            if (pos + i >= c->inlen)
                goto partial;
            rem |= (size_t)(c->in[pos + i] & 0x7f) << shift;
            shift += 7;
            if (!(c->in[pos + i++] & 0x80))
                break;
            if (i > 4)
                return -1;
        }
        if (c->inlen - pos - i < rem)
            break;
        if (packet(c, c->in[pos], c->in + pos + i, rem) != 0)
            return -1;
        pos += i + rem;
    }
partial:
    memmove(c->in, c->in + pos, c->inlen - pos);
    c->inlen -= pos;
    return 0;
}

static void arm(conn *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (out != c->out_armed && epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->out_armed = out;
}

static void flush(conn *c)
{
    ssize_t n;
    if (c->fd < 0 || c->outlen == 0)
        return;
    n = write(c->fd, c->out, c->outlen);
    if (n < 0 && errno != EAGAIN) {
        close_conn(c);
        return;
    }
    if (n > 0) {
        memmove(c->out, c->out + n, c->outlen - (size_t)n);
        c->outlen -= (size_t)n;
    }
    arm(c, c->outlen > 0);
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    struct epoll_event ev = {.events = EPOLLIN}, evs[64];
    int lfd, one = 1, nap_us = 0;
    if (argc == 3)
        nap_us = atoi(argv[2]);
    else if (argc != 2) {
        fprintf(stderr, "usage: mqttfloor PORT [NAP_US]\n");
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    sa.sin_port = htons((uint16_t)atoi(argv[1]));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)) < 0)
        die("socket");
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 128) != 0)
        die("bind/listen");
    if ((ep = epoll_create1(0)) < 0)
        die("epoll_create1");
    ev.data.ptr = NULL; /* the listener */
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    while (!stop) {
        int n = epoll_wait(ep, evs, 64, 1000);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c == NULL) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (fd < 0)
                    continue;
                if ((c = calloc(1, sizeof *c)) == NULL) {
                    fprintf(stderr, "mqttfloor: out of memory for a connection\n");
                    close(fd);
                    continue;
                }
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c->fd = fd;
                struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                continue;
            }
            if (c->fd < 0)
                continue;
            if (evs[i].events & EPOLLOUT)
                flush(c);
            if (c->fd >= 0 && evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r;
                grow(&c->in, &c->incap, c->inlen + READ_SIZE);
                r = read(c->fd, c->in + c->inlen, READ_SIZE);
                if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    close_conn(c);
                    continue;
                }
                if (r > 0) {
                    c->inlen += (size_t)r;
                    if (parse(c) != 0)
                        close_conn(c);
                }
            }
        }
        /* everything this wake-up produced: one write per connection */
        while (dirty != NULL) {
            conn *c = dirty;
            dirty = c->dirty_next;
            c->dirty = 0;
            if (c->fd < 0) {
                free(c->in);
                free(c->out);
                free(c);
                continue;
            }
            flush(c);
        }
        if (nap_us > 0 && n > 0)
            usleep((useconds_t)nap_us);
    }
    return 0;
}
