/*
 * sb_client: a small blocking client for Switchboard's jsonl protocol
 * (docs/protocol.md), used by sbctl and usable by other C programs.
 *
 * A client is one connection to an endpoint (endpoint.h): a Unix socket,
 * TCP, TLS over TCP (OpenSSL), or a Windows named pipe. Writes are buffered (so a caller can pipeline
 * many requests into one system call) and flushed explicitly or before the
 * client waits for input. Reads return one line at a time. Every call that
 * waits has a timeout in milliseconds (-1: forever, 0: do not wait).
 * A client is used by one thread at a time; separate clients are independent.
 */
#ifndef SB_CLIENT_H
#define SB_CLIENT_H

#include "service/error.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sb_client sb_client;

/* Replies may carry a whole message (base64 grows it by 4/3, JSON escapes by
 * up to 6x for control bytes); the broker's max_message is at most 64 MiB. */
#define SB_CLIENT_DEFAULT_MAX_LINE ((size_t)512 * 1024 * 1024)

/* For tls:HOST:PORT endpoints: files in PEM (paths as the OS takes them).
 * ca NULL: OpenSSL's default CA paths; cert and key (a client certificate,
 * whose CN the broker takes as the user) go together or not at all. The
 * server's certificate must name HOST. */
typedef struct sb_client_tls {
    const char *ca;
    const char *cert;
    const char *key;
} sb_client_tls;

typedef struct sb_client_options {
    int connect_timeout_ms; /* default 5000 (the TLS handshake included) */
    int write_timeout_ms;   /* for flushes, default 30000 */
    size_t max_line;        /* longest accepted input line, default SB_CLIENT_DEFAULT_MAX_LINE */
    sb_client_tls tls;      /* default: all NULL */
} sb_client_options;

/* Fills o with the defaults. */
void sb_client_options_init(sb_client_options *o);

/* The default admin endpoint: $SB_ADMIN if set and non-empty, else
 * sb_client_platform_endpoint(). */
const char *sb_client_default_endpoint(void);

/* The broker's default admin endpoint on this platform: ./data/admin.sock on
 * POSIX (the broker's default admin socket when run from its working
 * directory), \\.\pipe\switchboard-admin on Windows. */
const char *sb_client_platform_endpoint(void);

/* Connects to `endpoint` (see endpoint.h). opts may be NULL for the defaults.
 * Returns 0 and a new client in *out (free with sb_client_free), or SB_EINVAL
 * for a malformed endpoint (or unusable TLS files), SB_EPROTO when the TLS
 * handshake fails (an untrusted certificate, a server that is not TLS), or
 * the connect error; err then reads
 * "cannot connect to unix:./data/admin.sock: No such file or directory". */
int sb_client_connect(sb_client **out, const char *endpoint, const sb_client_options *opts,
                      sb_error *err);

/* Closes the connection (unflushed writes are dropped) and frees c. NULL is ok. */
void sb_client_free(sb_client *c);

/* The endpoint in canonical form ("unix:./data/admin.sock", "tcp:host:1883"). */
const char *sb_client_endpoint(const sb_client *c);

/* Appends one line (a '\n' is added; line must not contain one) to the write
 * buffer; flushes when the buffer grows past 256 KiB. Returns 0 or an error. */
int sb_client_write_line(sb_client *c, const char *line, size_t len, sb_error *err);

/* Serialises obj compactly as one line and appends it (sb_client_write_line). */
int sb_client_write_json(sb_client *c, const json_t *obj, sb_error *err);

/* Writes out the buffered lines. Returns 0 or SB_ETIMEDOUT / SB_ECLOSED / SB_EIO. */
int sb_client_flush(sb_client *c, sb_error *err);

/* Reads the next line. *out_line is NUL-terminated without "\r\n", owned by
 * the client and valid until the next read. Flushes buffered writes before it
 * waits. Returns 0, SB_ETIMEDOUT, SB_ECLOSED, SB_ETOOBIG (line longer than
 * max_line: the connection is no longer usable), SB_ENOMEM or SB_EIO. */
int sb_client_read_line(sb_client *c, const char **out_line, size_t *out_len, int timeout_ms,
                        sb_error *err);

/* Reads the next line and parses it as a JSON object (new reference in *out).
 * Returns as sb_client_read_line, or SB_EPROTO if the line is not an object. */
int sb_client_read_json(sb_client *c, json_t **out, int timeout_ms, sb_error *err);

/* The raw text of the line most recently returned by sb_client_read_line,
 * sb_client_read_json or sb_client_request (the reply), valid until the next
 * read; NULL if none. For printing a reply exactly as the broker sent it. */
const char *sb_client_last_line(const sb_client *c, size_t *out_len);

/* True if a complete line is already buffered (a read will not wait). */
int sb_client_has_line(sb_client *c);

/* A new request id (1, 2, ...), unique on this connection. */
int64_t sb_client_next_id(sb_client *c);

/* Sends req (adding an "id" if it has none), then reads until the reply with
 * that id, or an "error" without an id (the broker could not read the
 * request), and returns it in *out (new reference). Other lines (deliveries
 * on a subscribed connection) are discarded: use it on connections that do
 * not consume. A broker error reply is returned as a reply (check it with
 * sb_client_reply_error); the return value is 0 or a transport error. */
int sb_client_request(sb_client *c, json_t **out, json_t *req, int timeout_ms, sb_error *err);

/* After a write failed with SB_ECLOSED: the broker may have explained why
 * before it closed (a line longer than its max_message gets SB_ETOOBIG).
 * Reads what is left (waiting at most a second) and returns 0 with the first
 * error reply in *out (new reference), or SB_ENOTFOUND if there is none.
 * sb_client_request does this itself. */
int sb_client_last_words(sb_client *c, json_t **out);

/* If reply is {"op":"error",...}: fills err with its code (SB_E* from the
 * "code" name, SB_EUNKNOWN if unknown) and "message", and returns the code.
 * Otherwise returns 0. */
int sb_client_reply_error(const json_t *reply, sb_error *err);

/* Maps an SB_E* name ("SB_EFULL") to its code; SB_EUNKNOWN if unknown. */
int sb_client_errcode(const char *name);

#endif
