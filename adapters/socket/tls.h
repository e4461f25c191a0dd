/*
 * TLS (OpenSSL) for TCP connections: a context per adapter, built from the
 * adapter's `tls` config when it starts, and a connection transport that
 * runs the handshake and then carries the adapter's protocol over TLS.
 *
 * The transport keeps the socket (a uv_tcp_t) and the SSL object with a pair
 * of memory BIOs: ciphertext read from the socket is written into one, and
 * what OpenSSL produces (handshake messages, records, alerts) is drained from
 * the other into one reusable buffer and written with a single uv_write, one
 * at a time. The protocol is opened only when the handshake has succeeded,
 * so a connection whose handshake is in progress has c->proto == NULL and
 * takes no deliveries. A handshake that does not finish within
 * SB_TLS_HANDSHAKE_TIMEOUT_MS closes the connection. On a listener that
 * verified a client certificate, c->user is the certificate's subject CN.
 */
#ifndef SB_TLS_H
#define SB_TLS_H

#include "adapters/conn.h"
#include "service/error.h"

#include <uv.h>

#define SB_TLS_HANDSHAKE_TIMEOUT_MS 10000

typedef struct sb_tls_ctx sb_tls_ctx;

/* Builds the TLS context of an adapter from its config (a server when cfg
 * has `listen`, else a client): loads the certificate chain, the private key
 * (checked against the certificate), the CA bundle ("system": OpenSSL's
 * default paths), and sets the minimum version, the TLS 1.2 ciphers and
 * the peer verification mode. On failure returns SB_ECONFIG (SB_ENOMEM) and
 * err names the adapter, the setting, the file and OpenSSL's reason. Free
 * with sb_tls_ctx_free once no connection uses it. */
int sb_tls_ctx_new(sb_tls_ctx **out, const sb_adapter_config *cfg, sb_error *err);
void sb_tls_ctx_free(sb_tls_ctx *ctx);

/* Re-reads ctx's files (certificate chain, key, CA bundle) for a config
 * reload that kept the adapter: builds a new OpenSSL context from cfg as
 * sb_tls_ctx_new does and, if that succeeds, new connections use it from
 * now on (connections already open keep theirs). *out_changed is 1 if the
 * certificate it presents differs from before. On failure ctx is left as
 * it was and err says why, as for sb_tls_ctx_new. */
int sb_tls_ctx_reload(sb_tls_ctx *ctx, const sb_adapter_config *cfg, int *out_changed,
                      sb_error *err);

/* One line on ctx's own certificate ("CN=..., valid until ..."), or "no
 * certificate". */
void sb_tls_ctx_describe(const sb_tls_ctx *ctx, char *out, size_t n);

/* Called once the handshake of c succeeded and its protocol is open (the
 * adapter may hand it deliveries now). */
typedef void (*sb_tls_ready_cb)(sb_conn *c);

/* Starts TLS on a connected TCP handle (accepted, or connected by a client
 * adapter), which c now owns: c (zeroed by the caller, with its adapter
 * hooks set) gets the TLS transport, the handshake starts, and after it the
 * protocol opens and ready (may be NULL) is called. Every later failure
 * (handshake, timeout, I/O) closes c through sb_conn_close, so the adapter
 * learns of it from c->on_closed as with any connection. Returns 0, or
 * SB_ENOMEM having closed c (c->on_closed is called later). */
int sb_conn_start_tls(sb_conn *c, sb_adapter *a, const sb_protocol *proto, sb_tls_ctx *ctx,
                      uv_tcp_t *tcp, const char *peer, sb_tls_ready_cb ready);

#endif
