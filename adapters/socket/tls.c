/*
 * TLS over libuv TCP handles with OpenSSL memory BIOs (see tls.h).
 *
 * Input: libuv reads into a buffer shared by the adapter's connections, the
 * bytes go into the read BIO, and SSL_do_handshake / SSL_read_ex turn them
 * into plaintext, gathered in a second shared buffer (up to 64 KiB) and
 * handed to sb_conn_input. When the protocol pauses reading, ciphertext may
 * stay in the BIO: resuming processes it from a zero timeout, not from
 * inside the protocol's call.
 *
 * Output: the connection's write (one at a time, see conn.h) is encrypted
 * in chunks of at most SB_TLS_WRITE_CHUNK bytes into the write BIO; after
 * every SSL call the write BIO is drained into the connection's one write
 * buffer and sent with a single uv_write, so handshake messages, TLS 1.3
 * tickets, alerts and records produced meanwhile travel together. The
 * connection's write completes (sb_conn_write_done) with the uv_write that
 * carries the end of its ciphertext. Nothing is allocated per record.
 */
#include "adapters/stream_keys.h"
#include "adapters/socket/tls.h"
#include "service/alloc.h"
#include "service/log.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <stdio.h>
#include <string.h>

/* Plaintext encrypted ahead of the socket at most (bounds the write buffer). */
#define SB_TLS_WRITE_CHUNK (256 * 1024)
/* Socket reads and the plaintext handed to the protocol at once. */
#define SB_TLS_READ_BUF (64 * 1024)
/* A write buffer larger than this is released once its write completes. */
#define SB_TLS_KEEP_WBUF (512 * 1024)
/* How long a TLS 1.3 client waits for the server's verdict on its
 * certificate when the server sends no session ticket (see await_accept). */
#define SB_TLS_ACCEPT_GRACE_MS 1000

struct sb_tls_ctx {
    SSL_CTX *ssl;
    int is_server;
    char *verify_name; /* client: the name checked in the server's certificate */
    int send_sni;      /* client: verify_name is a DNS name (SNI carries no IPs) */
    int verify;        /* verify the peer's certificate (a client's only if it sends one) */
    /* Buffers for the adapter's connections, which all run on one loop;
     * `busy` makes a nested use fall back to the heap. */
    char rbuf[SB_TLS_READ_BUF];
    char pbuf[SB_TLS_READ_BUF];
    int rbuf_busy, pbuf_busy;
};

typedef struct tls_conn {
    sb_conn *c;
    sb_tls_ctx *ctx;
    const sb_protocol *proto;
    sb_tls_ready_cb ready;
    uv_tcp_t *tcp;
    uv_timer_t timer; /* the handshake deadline, then deferred input */
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    uv_write_t wreq;
    char *wbuf; /* the bytes of wreq while writing */
    size_t wcap;
    /* the connection's write: plaintext, how much of it is encrypted */
    char *out;
    size_t out_len, out_off;
    size_t bytes_in; /* ciphertext received (to tell a probe from a failed handshake) */
    int open_handles;
    unsigned handshake_done : 1;
    unsigned cert_requested : 1;  /* client: the server asked for a certificate */
    unsigned accepted : 1;        /* client: the server showed it accepted us */
    unsigned awaiting_accept : 1; /* client: handshake done, verdict pending */
    unsigned opened : 1;          /* the protocol started (sb_conn_start) */
    unsigned want_read : 1;       /* the connection wants input */
    unsigned reading : 1;         /* libuv is reading */
    unsigned writing : 1;         /* wreq is in flight */
    unsigned carried : 1;         /* wreq carries the end of out */
    unsigned fatal : 1;           /* an SSL error: no more SSL calls, no close_notify */
    unsigned eof : 1;             /* the socket read ended */
    unsigned closing : 1;         /* tls_close ran */
    unsigned closed : 1;          /* the handles are closing */
} tls_conn;

/* ---- OpenSSL's reasons ---- */

/* Appends the thread's queued OpenSSL errors to out ("; "-separated,
 * without the "error:XXXXXXXX:" prefix), emptying the queue. */
static void take_reasons(char *out, size_t n)
{
    size_t len = strlen(out);
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        const char *p = one;
        /* wrappers that add nothing to the error below them */
        if ((ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == ERR_R_PEM_LIB) ||
            (ERR_GET_LIB(e) == ERR_LIB_BIO && ERR_GET_REASON(e) == BIO_R_NO_SUCH_FILE))
            continue;
        if (ERR_GET_LIB(e) == ERR_LIB_SYS) {
            snprintf(one, sizeof(one), "%s", strerror(ERR_GET_REASON(e)));
        } else {
            ERR_error_string_n(e, one, sizeof(one));
            /* "error:0A000086:SSL routines::certificate verify failed" */
            if (strncmp(p, "error:", 6) == 0 && strchr(p + 6, ':') != NULL)
                p = strchr(p + 6, ':') + 1;
        }
        if (strstr(out, p) != NULL || len + 1 >= n)
            continue;
        snprintf(out + len, n - len, "%s%s", len > 0 ? "; " : "", p);
        len += strlen(out + len);
    }
}

/* "<what>: <reasons>" into err for a setting naming a file. */
static int ctx_error(sb_error *err, const sb_adapter_config *cfg, const char *key, const char *file,
                     const char *what)
{
    char why[200] = "";
    take_reasons(why, sizeof(why));
    return sb_error_set(err, SB_ECONFIG, 0, "adapter %s: %s %s: %s%s%s", cfg->name, key, file, what,
                        why[0] != '\0' ? ": " : "", why);
}

/* Checks that a file can be opened, for a clear "cannot open" before
 * OpenSSL's PEM errors (BIO_new_file takes UTF-8 names on Windows too). */
static int check_file(sb_error *err, const sb_adapter_config *cfg, const char *key,
                      const char *file)
{
    BIO *b = BIO_new_file(file, "r");
    if (b == NULL)
        return ctx_error(err, cfg, key, file, "cannot open");
    BIO_free(b);
    return 0;
}

static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return 0; /* never prompt on the terminal: encrypted keys fail to load */
}

/* The host of "host:port" / "[v6]:port". */
static char *connect_host(const char *addr)
{
    const char *end;
    if (addr[0] == '[' && (end = strchr(addr, ']')) != NULL)
        return sb_strndup(addr + 1, (size_t)(end - addr - 1));
    end = strrchr(addr, ':');
    return sb_strndup(addr, end != NULL ? (size_t)(end - addr) : strlen(addr));
}

static int is_ip_literal(const char *name)
{
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(name);
    ASN1_OCTET_STRING_free(ip);
    return ip != NULL;
}

static int load_identity(sb_tls_ctx *t, const sb_adapter_config *cfg, sb_error *err)
{
    int rc;
    if (SB_STREAM_CFG(cfg)->tls_cert == NULL)
        return 0;
    if ((rc = check_file(err, cfg, "tls.cert", SB_STREAM_CFG(cfg)->tls_cert)) != 0 ||
        (rc = check_file(err, cfg, "tls.key", SB_STREAM_CFG(cfg)->tls_key)) != 0)
        return rc;
    if (SSL_CTX_use_certificate_chain_file(t->ssl, SB_STREAM_CFG(cfg)->tls_cert) != 1)
        return ctx_error(err, cfg, "tls.cert", SB_STREAM_CFG(cfg)->tls_cert, "cannot load certificate chain");
    if (SSL_CTX_use_PrivateKey_file(t->ssl, SB_STREAM_CFG(cfg)->tls_key, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            return sb_error_set(err, SB_ECONFIG, 0,
                                "adapter %s: tls.key %s does not match tls.cert %s", cfg->name,
                                SB_STREAM_CFG(cfg)->tls_key, SB_STREAM_CFG(cfg)->tls_cert);
        }
        return ctx_error(err, cfg, "tls.key", SB_STREAM_CFG(cfg)->tls_key, "cannot load private key");
    }
    if (SSL_CTX_check_private_key(t->ssl) != 1) {
        ERR_clear_error();
        return sb_error_set(err, SB_ECONFIG, 0, "adapter %s: tls.key %s does not match tls.cert %s",
                            cfg->name, SB_STREAM_CFG(cfg)->tls_key, SB_STREAM_CFG(cfg)->tls_cert);
    }
    return 0;
}

static int load_ca(sb_tls_ctx *t, const sb_adapter_config *cfg, sb_error *err)
{
    int rc;
    if (SB_STREAM_CFG(cfg)->tls_ca == NULL)
        return 0;
    if (strcmp(SB_STREAM_CFG(cfg)->tls_ca, "system") == 0) {
        if (SSL_CTX_set_default_verify_paths(t->ssl) != 1)
            return ctx_error(err, cfg, "tls.ca", "system", "cannot use OpenSSL's default CAs");
        return 0;
    }
    if ((rc = check_file(err, cfg, "tls.ca", SB_STREAM_CFG(cfg)->tls_ca)) != 0)
        return rc;
    if (SSL_CTX_load_verify_locations(t->ssl, SB_STREAM_CFG(cfg)->tls_ca, NULL) != 1)
        return ctx_error(err, cfg, "tls.ca", SB_STREAM_CFG(cfg)->tls_ca, "cannot load CA certificates");
    if (t->is_server && SB_STREAM_CFG(cfg)->tls_client_cert != SB_CLIENT_CERT_NONE) {
        /* the CA names a server sends with its certificate request */
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(SB_STREAM_CFG(cfg)->tls_ca);
        if (names == NULL)
            return ctx_error(err, cfg, "tls.ca", SB_STREAM_CFG(cfg)->tls_ca, "cannot load CA names");
        SSL_CTX_set_client_CA_list(t->ssl, names);
    }
    return 0;
}

int sb_tls_ctx_new(sb_tls_ctx **out, const sb_adapter_config *cfg, sb_error *err)
{
    static const unsigned char sid_ctx[] = "switchboard";
    sb_tls_ctx *t;
    int rc = SB_ENOMEM;

    *out = NULL;
    ERR_clear_error();
    t = sb_calloc(1, sizeof(*t));
    if (t == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    t->is_server = SB_STREAM_CFG(cfg)->listen != NULL;
    t->ssl = SSL_CTX_new(t->is_server ? TLS_server_method() : TLS_client_method());
    if (t->ssl == NULL) {
        rc = ctx_error(err, cfg, "tls", "", "cannot create an OpenSSL context");
        goto fail;
    }
    SSL_CTX_set_default_passwd_cb(t->ssl, no_password);
    /* Renegotiation only costs the server: nothing here needs it. */
    SSL_CTX_set_options(t->ssl, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_min_proto_version(t->ssl, SB_STREAM_CFG(cfg)->tls_min_version == SB_TLS_V1_3 ? TLS1_3_VERSION
                                                                              : TLS1_2_VERSION);
    if (SB_STREAM_CFG(cfg)->tls_ciphers != NULL && SSL_CTX_set_cipher_list(t->ssl, SB_STREAM_CFG(cfg)->tls_ciphers) != 1) {
        char why[200] = "";
        take_reasons(why, sizeof(why));
        rc = sb_error_set(err, SB_ECONFIG, 0,
                          "adapter %s: tls.ciphers '%s': OpenSSL accepts none of them (%s)",
                          cfg->name, SB_STREAM_CFG(cfg)->tls_ciphers, why);
        goto fail;
    }
    if ((rc = load_identity(t, cfg, err)) != 0 || (rc = load_ca(t, cfg, err)) != 0)
        goto fail;
    if (t->is_server) {
        int mode = SSL_VERIFY_NONE;
        if (SB_STREAM_CFG(cfg)->tls_client_cert == SB_CLIENT_CERT_OPTIONAL)
            mode = SSL_VERIFY_PEER;
        else if (SB_STREAM_CFG(cfg)->tls_client_cert == SB_CLIENT_CERT_REQUIRE)
            mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(t->ssl, mode, NULL);
        t->verify = mode != SSL_VERIFY_NONE;
        /* resumed sessions (which keep the verified certificate) need it */
        SSL_CTX_set_session_id_context(t->ssl, sid_ctx, sizeof(sid_ctx) - 1);
    } else {
        t->verify = SB_STREAM_CFG(cfg)->tls_verify;
        SSL_CTX_set_verify(t->ssl, t->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
        t->verify_name = SB_STREAM_CFG(cfg)->tls_server_name != NULL ? sb_strdup(SB_STREAM_CFG(cfg)->tls_server_name)
                                                      : connect_host(SB_STREAM_CFG(cfg)->connect);
        if (t->verify_name == NULL) {
            rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
            goto fail;
        }
        t->send_sni = !is_ip_literal(t->verify_name);
    }
    *out = t;
    return 0;
fail:
    ERR_clear_error();
    sb_tls_ctx_free(t);
    return rc;
}

void sb_tls_ctx_free(sb_tls_ctx *ctx)
{
    if (ctx == NULL)
        return;
    SSL_CTX_free(ctx->ssl);
    sb_free(ctx->verify_name);
    sb_free(ctx);
}

int sb_tls_ctx_reload(sb_tls_ctx *ctx, const sb_adapter_config *cfg, int *out_changed,
                      sb_error *err)
{
    sb_tls_ctx *fresh;
    X509 *was, *now;
    SSL_CTX *old;
    int rc;

    *out_changed = 0;
    if ((rc = sb_tls_ctx_new(&fresh, cfg, err)) != 0)
        return rc;
    was = SSL_CTX_get0_certificate(ctx->ssl);
    now = SSL_CTX_get0_certificate(fresh->ssl);
    *out_changed = (was == NULL) != (now == NULL) || (was != NULL && X509_cmp(was, now) != 0);
    /* Each SSL holds a reference to the context it was made from: the
     * old one lives on until its last connection is freed. */
    old = ctx->ssl;
    ctx->ssl = fresh->ssl;
    fresh->ssl = old;
    sb_tls_ctx_free(fresh);
    return 0;
}

void sb_tls_ctx_describe(const sb_tls_ctx *ctx, char *out, size_t n)
{
    X509 *cert = SSL_CTX_get0_certificate(ctx->ssl);
    char cn[128] = "?", until[64] = "?";
    BIO *b;
    if (cert == NULL) {
        snprintf(out, n, "no certificate");
        return;
    }
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    b = BIO_new(BIO_s_mem());
    if (b != NULL && ASN1_TIME_print(b, X509_get0_notAfter(cert)) == 1) {
        int len = BIO_read(b, until, sizeof(until) - 1);
        until[len > 0 ? len : 0] = '\0';
    }
    BIO_free(b);
    ERR_clear_error();
    snprintf(out, n, "CN=%s, valid until %s", cn, until);
}

/* ---- the transport ---- */

static void process(tls_conn *t);

static void on_handle_closed(uv_handle_t *h)
{
    tls_conn *t = h->data;
    sb_conn *c = t->c;
    if (--t->open_handles > 0)
        return;
    if (t->out != NULL) {
        sb_free(t->out);
        t->out = NULL;
        sb_conn_write_done(c, SB_ECLOSED, "connection closed");
    }
    SSL_free(t->ssl);
    sb_free(t->wbuf);
    sb_free(t->tcp);
    sb_free(t);
    c->tdata = NULL;
    sb_conn_transport_closed(c);
}

static void on_write(uv_write_t *req, int status);

/* Sends what OpenSSL wrote into the write BIO, unless a write is in flight
 * (then on_write sends it). Returns 0 or SB_ENOMEM / SB_ECLOSED. */
static int flush(tls_conn *t)
{
    size_t n;
    uv_buf_t b;
    int rc;
    if (t->writing || t->closed || (n = BIO_ctrl_pending(t->wbio)) == 0)
        return 0;
    if (n > t->wcap) {
        char *nb = sb_realloc(t->wbuf, n);
        if (nb == NULL)
            return SB_ENOMEM;
        t->wbuf = nb;
        t->wcap = n;
    }
    if (BIO_read(t->wbio, t->wbuf, (int)n) != (int)n)
        return SB_ENOMEM;
    t->carried = t->out != NULL && t->out_off == t->out_len;
    b = uv_buf_init(t->wbuf, (unsigned)n);
    rc = uv_write(&t->wreq, (uv_stream_t *)t->tcp, &b, 1, on_write);
    if (rc != 0) {
        t->carried = 0;
        return SB_ECLOSED;
    }
    t->writing = 1;
    return 0;
}

/* Closes after a failure of this transport (not of the protocol). */
static void fail(tls_conn *t, const char *why)
{
    t->fatal = 1;
    sb_conn_close(t->c, why);
}

/* Encrypts more of the connection's write (up to a chunk ahead of the
 * socket) and flushes. */
static void pump(tls_conn *t)
{
    int rc;
    while (t->out != NULL && t->out_off < t->out_len && !t->fatal &&
           BIO_ctrl_pending(t->wbio) < SB_TLS_WRITE_CHUNK) {
        size_t n = t->out_len - t->out_off, done = 0;
        if (n > SB_TLS_WRITE_CHUNK)
            n = SB_TLS_WRITE_CHUNK;
        ERR_clear_error();
        if (SSL_write_ex(t->ssl, t->out + t->out_off, n, &done) != 1) {
            char why[200] = "TLS write failed: ";
            take_reasons(why, sizeof(why));
            fail(t, why);
            return;
        }
        t->out_off += done;
    }
    if ((rc = flush(t)) != 0)
        fail(t, rc == SB_ENOMEM ? "out of memory" : "write failed");
}

static void on_write(uv_write_t *req, int status)
{
    tls_conn *t = req->data;
    sb_conn *c = t->c;
    int carried = t->carried;
    t->writing = 0;
    t->carried = 0;
    if (t->wcap > SB_TLS_KEEP_WBUF) {
        sb_free(t->wbuf);
        t->wbuf = NULL;
        t->wcap = 0;
    }
    if (t->closing)
        return; /* on_handle_closed settles an unfinished write */
    if (status != 0) {
        t->fatal = 1;
        if (t->out != NULL) {
            sb_free(t->out);
            t->out = NULL;
            sb_conn_write_done(c, SB_ECLOSED, uv_strerror(status));
        } else {
            sb_conn_close(c, uv_strerror(status));
        }
        return;
    }
    if (carried) {
        sb_free(t->out);
        t->out = NULL;
        sb_conn_write_done(c, 0, NULL); /* may write again */
    }
    if (!t->closing && !t->writing)
        pump(t);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    tls_conn *t = h->data;
    (void)suggested;
    if (!t->ctx->rbuf_busy) {
        t->ctx->rbuf_busy = 1;
        *buf = uv_buf_init(t->ctx->rbuf, SB_TLS_READ_BUF);
        return;
    }
    buf->base = sb_malloc(SB_TLS_READ_BUF);
    buf->len = buf->base != NULL ? SB_TLS_READ_BUF : 0;
}

static void release_rbuf(tls_conn *t, const uv_buf_t *buf)
{
    if (buf->base == t->ctx->rbuf)
        t->ctx->rbuf_busy = 0;
    else
        sb_free(buf->base);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void set_reading(tls_conn *t, int on)
{
    if (t->closed || t->eof || on == (int)t->reading)
        return;
    if (on) {
        t->reading = uv_read_start((uv_stream_t *)t->tcp, on_alloc, on_read) == 0;
    } else {
        uv_read_stop((uv_stream_t *)t->tcp);
        t->reading = 0;
    }
}

/* The socket's end (EOF or an error) arrived. */
static void read_ended(tls_conn *t, ssize_t n)
{
    sb_conn *c = t->c;
    const char *name = c->adapter->name;
    t->eof = 1;
    t->reading = 0;
    uv_read_stop((uv_stream_t *)t->tcp);
    if (!t->opened) {
        if (n == UV_EOF && t->bytes_in == 0)
            sb_log(SB_LOG_INFO, name, "peer %s closed the connection before the TLS handshake",
                   c->peer);
        else
            sb_log(SB_LOG_WARN, name, "peer %s: TLS handshake failed: %s", c->peer,
                   n == UV_EOF ? "connection closed by the peer" : uv_strerror((int)n));
        fail(t, NULL);
    } else if (n == UV_EOF) {
        sb_log(SB_LOG_INFO, name, "peer %s closed the connection without a TLS close_notify",
               c->peer);
        t->fatal = 1; /* no close_notify to a closed socket */
        sb_conn_input_end(c, 0, NULL);
    } else {
        t->fatal = 1;
        sb_conn_input_end(c, SB_ECLOSED, uv_strerror((int)n));
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    tls_conn *t = s->data;
    if (n > 0) {
        int ok = BIO_write(t->rbio, buf->base, (int)n) == (int)n;
        release_rbuf(t, buf);
        t->bytes_in += (size_t)n;
        if (!ok) {
            fail(t, "out of memory");
            return;
        }
        process(t);
        return;
    }
    if (buf->base != NULL)
        release_rbuf(t, buf);
    if (n < 0 && !t->closing)
        read_ended(t, n);
}

/* Why an SSL call failed, for the log; in_handshake adds why the peer's
 * certificate was refused, if it was. */
static void describe(tls_conn *t, int e, int in_handshake, char *out, size_t n)
{
    long v;
    out[0] = '\0';
    if (e == SSL_ERROR_SSL) {
        take_reasons(out, n);
        if (out[0] == '\0')
            snprintf(out, n, "TLS protocol error");
    } else if (e == SSL_ERROR_SYSCALL) {
        take_reasons(out, n);
        if (out[0] == '\0')
            snprintf(out, n, "unexpected end of data");
    } else {
        snprintf(out, n, "SSL error %d", e);
        ERR_clear_error();
    }
    v = SSL_get_verify_result(t->ssl);
    if (in_handshake && t->ctx->verify && v != X509_V_OK) {
        size_t len = strlen(out);
        snprintf(out + len, n - len, " (%s)", X509_verify_cert_error_string(v));
    }
}

/* The subject CN of a verified client certificate, as a new string; NULL if
 * there is none or it is not plain text. */
static char *cert_user(SSL *ssl)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);
    X509_NAME *subject;
    unsigned char *utf8 = NULL;
    char *user = NULL;
    int i, len;
    if (cert == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
        return NULL;
    subject = X509_get_subject_name(cert);
    i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (i < 0)
        return NULL;
    len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i)));
    if (len > 0 && memchr(utf8, '\0', (size_t)len) == NULL)
        user = sb_strndup((const char *)utf8, (size_t)len);
    OPENSSL_free(utf8);
    return user;
}

static const sb_conn_transport tls_transport_ops;

/* The handshake succeeded (and the server took our certificate): note the
 * user, open the protocol. Returns 0, or -1 if the connection closed. */
static int open_session(tls_conn *t)
{
    sb_conn *c = t->c;
    const char *name = c->adapter->name;
    char peer[sizeof(c->peer)];
    int rc;
    t->opened = 1;
    t->awaiting_accept = 0;
    uv_timer_stop(&t->timer);
    SSL_set_msg_callback(t->ssl, NULL);
    if (t->ctx->is_server)
        c->user = cert_user(t->ssl);
    if (c->user != NULL)
        sb_log(SB_LOG_INFO, name, "peer %s: TLS handshake done (%s, %s), authenticated as %s",
               c->peer, SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl), c->user);
    else if (t->ctx->is_server && SSL_get0_peer_certificate(t->ssl) != NULL)
        sb_log(SB_LOG_WARN, name,
               "peer %s: TLS handshake done (%s, %s); its certificate has no usable subject CN, "
               "so it is not authenticated",
               c->peer, SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl));
    else
        sb_log(SB_LOG_INFO, name, "peer %s: TLS handshake done (%s, %s)", c->peer,
               SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl));
    snprintf(peer, sizeof(peer), "%s", c->peer); /* sb_conn_start copies it into c->peer */
    rc = sb_conn_start(c, c->adapter, t->proto, &tls_transport_ops, t, peer);
    if (rc != 0) {
        sb_conn_close(c, "cannot start the protocol session");
        return -1;
    }
    if (t->ready != NULL && !t->closing)
        t->ready(c);
    return t->closing ? -1 : 0;
}

/* Decrypts what the read BIO holds and hands it to the protocol, while it
 * wants input. */
static void read_records(tls_conn *t)
{
    sb_conn *c = t->c;
    sb_tls_ctx *ctx = t->ctx;
    char *buf = ctx->pbuf;
    size_t used = 0;
    int e = SSL_ERROR_NONE;

    if (ctx->pbuf_busy) {
        buf = sb_malloc(SB_TLS_READ_BUF);
        if (buf == NULL) {
            fail(t, "out of memory");
            return;
        }
    } else {
        ctx->pbuf_busy = 1;
    }
    while (t->want_read && !t->closing) {
        size_t got = 0;
        int r;
        ERR_clear_error();
        r = SSL_read_ex(t->ssl, buf + used, SB_TLS_READ_BUF - used, &got);
        if (r != 1) {
            e = SSL_get_error(t->ssl, r);
            break;
        }
        used += got;
        if (used == SB_TLS_READ_BUF) {
            sb_conn_input(c, buf, used);
            used = 0;
        }
    }
    if (used > 0 && !t->closing)
        sb_conn_input(c, buf, used);
    if (buf == ctx->pbuf)
        ctx->pbuf_busy = 0;
    else
        sb_free(buf);
    if (t->closing)
        return;
    if (e == SSL_ERROR_ZERO_RETURN) {
        /* close_notify: an orderly end; ours answers it in tls_close */
        sb_log(SB_LOG_DEBUG, c->adapter->name, "peer %s sent a TLS close_notify", c->peer);
        set_reading(t, 0);
        sb_conn_input_end(c, 0, NULL);
        return;
    }
    if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ) {
        char why[240] = "TLS error: ";
        describe(t, e, 0, why + strlen(why), sizeof(why) - strlen(why));
        t->fatal = 1;
        sb_conn_input_end(c, SB_EPROTO, why);
        return;
    }
    /* SSL_read may have written (a KeyUpdate answer, an alert) */
    pump(t);
}

/* Logs why the handshake failed and closes. */
static void handshake_failed(tls_conn *t, int e)
{
    char why[240];
    describe(t, e, 1, why, sizeof(why));
    sb_log(SB_LOG_WARN, t->c->adapter->name, "peer %s: TLS handshake failed: %s", t->c->peer, why);
    fail(t, NULL);
}

/* A TLS 1.3 client's handshake ends before the server has checked the
 * client's certificate: a refusal arrives as an alert after it. Until the
 * server shows it accepted us (a session ticket, data) or a grace period
 * passes, the protocol does not start, so nothing is written (and acked)
 * into a connection about to fail, and a refusal counts as a failed
 * handshake (reconnect backoff grows). This message callback (clients
 * only, removed once the session opens) notes the certificate request and
 * the tickets. */
static void on_message(int write_p, int version, int content_type, const void *buf, size_t len,
                       SSL *ssl, void *arg)
{
    tls_conn *t = arg;
    const unsigned char *m = buf;
    (void)version;
    (void)ssl;
    if (write_p || content_type != SSL3_RT_HANDSHAKE || len == 0)
        return;
    if (m[0] == SSL3_MT_CERTIFICATE_REQUEST)
        t->cert_requested = 1;
    else if (m[0] == SSL3_MT_NEWSESSION_TICKET)
        t->accepted = 1;
}

/* Returns 1 while still waiting for the server's verdict. */
static int await_accept(tls_conn *t)
{
    unsigned char b;
    size_t got = 0;
    int r, e;
    ERR_clear_error();
    /* processes tickets and alerts; leaves application data in place */
    r = SSL_peek_ex(t->ssl, &b, 1, &got);
    e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_NONE) {
        t->accepted = 1;
    } else if (e != SSL_ERROR_WANT_READ) {
        handshake_failed(t, e);
        return 1;
    }
    if (flush(t) != 0) {
        fail(t, "write failed");
        return 1;
    }
    return !t->accepted;
}

static void on_accept_grace(uv_timer_t *tm)
{
    tls_conn *t = tm->data;
    if (open_session(t) == 0)
        process(t);
}

static void process(tls_conn *t)
{
    if (t->closing || t->fatal)
        return;
    if (!t->handshake_done) {
        int r, e, rc;
        ERR_clear_error();
        r = SSL_do_handshake(t->ssl);
        e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
        /* our flight, or the alert that tells the peer why it failed */
        if ((rc = flush(t)) != 0) {
            fail(t, "write failed");
            return;
        }
        if (e == SSL_ERROR_WANT_READ)
            return;
        if (e != SSL_ERROR_NONE) {
            handshake_failed(t, e);
            return;
        }
        t->handshake_done = 1;
        if (!t->ctx->is_server && t->cert_requested && !t->accepted &&
            SSL_version(t->ssl) >= TLS1_3_VERSION) {
            t->awaiting_accept = 1;
            uv_timer_start(&t->timer, on_accept_grace, SB_TLS_ACCEPT_GRACE_MS, 0);
        } else if (open_session(t) != 0) {
            return;
        }
    }
    if (t->awaiting_accept && (await_accept(t) || open_session(t) != 0))
        return;
    read_records(t);
}

static void on_handshake_timeout(uv_timer_t *tm)
{
    tls_conn *t = tm->data;
    sb_log(SB_LOG_WARN, t->c->adapter->name, "peer %s: TLS handshake failed: not done within %d s",
           t->c->peer, SB_TLS_HANDSHAKE_TIMEOUT_MS / 1000);
    fail(t, NULL);
}

static void on_deferred_input(uv_timer_t *tm)
{
    tls_conn *t = tm->data;
    process(t);
    if (!t->closing && !t->fatal && t->want_read)
        set_reading(t, 1);
}

static void tls_read(sb_conn *c, int on)
{
    tls_conn *t = c->tdata;
    t->want_read = on != 0;
    /* Input decrypted or received while paused gets no new read callback:
     * it is handled first, and the socket read after, so that an EOF
     * cannot overtake (and discard) it. */
    if (on && !t->closing && (SSL_has_pending(t->ssl) || BIO_ctrl_pending(t->rbio) > 0)) {
        uv_timer_start(&t->timer, on_deferred_input, 0, 0);
        return;
    }
    set_reading(t, on);
}

static int tls_write(sb_conn *c, char *buf, size_t off, size_t len)
{
    tls_conn *t = c->tdata;
    if (t->closing || t->fatal || t->out != NULL || len == 0) {
        /* len == 0 never comes from conn.c: it has no bytes to carry the
         * completion */
        sb_free(buf);
        return SB_ECLOSED;
    }
    t->out = buf;
    t->out_len = off + len;
    t->out_off = off;
    if (!t->writing)
        pump(t);
    return 0;
}

static void tls_close(sb_conn *c)
{
    tls_conn *t = c->tdata;
    if (t->closing)
        return;
    t->closing = 1;
    uv_timer_stop(&t->timer);
    /* Best effort close_notify: only when it does not cut a record short. */
    if (t->handshake_done && !t->fatal && !t->writing) {
        ERR_clear_error();
        SSL_shutdown(t->ssl);
        ERR_clear_error();
        flush(t); /* on_write ignores it: on_handle_closed settles t->out */
    }
    t->closed = 1;
    uv_close((uv_handle_t *)t->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&t->timer, on_handle_closed);
}

static const sb_conn_transport tls_transport_ops = {tls_read, tls_write, tls_close};

int sb_conn_start_tls(sb_conn *c, sb_adapter *a, const sb_protocol *proto, sb_tls_ctx *ctx,
                      uv_tcp_t *tcp, const char *peer, sb_tls_ready_cb ready)
{
    tls_conn *t = sb_calloc(1, sizeof(*t));
    if (t == NULL)
        return SB_ENOMEM;
    ERR_clear_error();
    t->ssl = SSL_new(ctx->ssl);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL)
        goto fail;
    if (!ctx->is_server) {
        SSL_set_msg_callback(t->ssl, on_message);
        SSL_set_msg_callback_arg(t->ssl, t);
        if (ctx->send_sni && SSL_set_tlsext_host_name(t->ssl, ctx->verify_name) != 1)
            goto fail;
    }
    if (!ctx->is_server && ctx->verify) {
        X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if ((is_ip_literal(ctx->verify_name)
                 ? X509_VERIFY_PARAM_set1_ip_asc(param, ctx->verify_name)
                 : X509_VERIFY_PARAM_set1_host(param, ctx->verify_name, 0)) != 1)
            goto fail;
    }
    /* an empty read BIO means "more to come", not the end */
    BIO_set_mem_eof_return(t->rbio, -1);
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio); /* now owned by t->ssl */
    if (ctx->is_server)
        SSL_set_accept_state(t->ssl);
    else
        SSL_set_connect_state(t->ssl);

    /* From here on c and tcp belong to the transport. The protocol opens
     * after the handshake (open_session calls sb_conn_start). */
    t->c = c;
    t->ctx = ctx;
    t->proto = proto;
    t->ready = ready;
    t->tcp = tcp;
    t->want_read = 1;
    t->wreq.data = t;
    tcp->data = t;
    uv_timer_init(tcp->loop, &t->timer);
    t->timer.data = t;
    t->open_handles = 2;
    c->adapter = a;
    c->transport_ops = &tls_transport_ops;
    c->tdata = t;
    c->refs = 1;
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    uv_timer_start(&t->timer, on_handshake_timeout, SB_TLS_HANDSHAKE_TIMEOUT_MS, 0);
    set_reading(t, 1);
    if (!ctx->is_server)
        process(t); /* the ClientHello */
    return 0;
fail:
    /* nothing was taken: the caller still owns c and tcp */
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    SSL_free(t->ssl);
    sb_free(t);
    ERR_clear_error();
    return SB_ENOMEM;
}
