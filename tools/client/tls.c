/*
 * TLS for the client's tls:HOST:PORT endpoints: OpenSSL over the platform's
 * TCP transport (transport_int.h), itself a transport, so the portable
 * client above sees no difference.
 *
 * OpenSSL reads and writes through a BIO of our own whose callbacks call the
 * inner transport with what is left of the current call's deadline; a
 * timeout there is a retryable BIO failure, which SSL_read_ex turns into
 * SSL_ERROR_WANT_READ (SB_ETIMEDOUT for the caller; the record read so far
 * stays in OpenSSL and the next read goes on with it). Any other failure
 * of the inner transport is kept and returned as it was.
 *
 * The server is verified against --ca (or OpenSSL's default CA paths) and
 * its certificate must name the endpoint's host (a DNS name or an IP
 * address, as the broker's TLS clients check); TLS 1.2 at least.
 */
#include "tools/client/transport_int.h"

#include "service/alloc.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <stdio.h>
#include <string.h>
#include <uv.h>

typedef struct tls_transport {
    sb_transport base;
    sb_transport *inner;
    SSL_CTX *ctx;
    SSL *ssl;
    unsigned long long deadline_ns; /* of the call in progress; 0: none */
    int inner_rc;                   /* the inner transport's last failure */
    sb_error inner_err;
    char name[SB_ENDPOINT_PATH_MAX + 16];
} tls_transport;

static int remaining_ms(const tls_transport *t)
{
    unsigned long long now;
    if (t->deadline_ns == 0)
        return -1;
    now = sb_client__now_ns();
    return now >= t->deadline_ns ? 0 : (int)((t->deadline_ns - now + 999999ull) / 1000000ull);
}

static void set_deadline(tls_transport *t, int timeout_ms)
{
    t->deadline_ns =
        timeout_ms < 0 ? 0 : sb_client__now_ns() + (unsigned long long)timeout_ms * 1000000ull;
}

/* ---- the BIO over the inner transport ---- */

static int bio_read(BIO *bio, char *buf, size_t len, size_t *out_n)
{
    tls_transport *t = BIO_get_data(bio);
    int rc;

    BIO_clear_retry_flags(bio);
    rc = t->inner->ops->read(t->inner, buf, len, out_n, remaining_ms(t), &t->inner_err);
    if (rc == 0)
        return 1;
    t->inner_rc = rc;
    if (rc == SB_ETIMEDOUT)
        BIO_set_retry_read(bio);
    return 0;
}

static int bio_write(BIO *bio, const char *buf, size_t len, size_t *out_n)
{
    tls_transport *t = BIO_get_data(bio);
    int rc;

    BIO_clear_retry_flags(bio);
    /* the inner write writes everything or fails: a partial TLS record
     * cannot be finished later, so a timeout here breaks the connection */
    rc = t->inner->ops->write(t->inner, buf, len, remaining_ms(t), &t->inner_err);
    if (rc != 0) {
        t->inner_rc = rc;
        return 0;
    }
    *out_n = len;
    return 1;
}

static long bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)bio;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

/* ---- errors ---- */

/* OpenSSL's reasons, "a; b", into out (the queue is emptied). */
static void take_reasons(char *out, size_t n)
{
    unsigned long e;
    size_t len = 0;
    out[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        const char *r = ERR_reason_error_string(e);
        if (len < n)
            len += (size_t)snprintf(out + len, n - len, "%s%s", len ? "; " : "",
                                    r != NULL ? r : "unknown OpenSSL error");
    }
}

/* The error of a failed SSL call (ret its return): the inner transport's
 * own failure, a timeout, the peer's close, or OpenSSL's reason. */
static int ssl_failed(tls_transport *t, int ret, const char *what, sb_error *err)
{
    int e = SSL_get_error(t->ssl, ret);
    char why[256];

    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        if (t->inner_rc != 0 && t->inner_rc != SB_ETIMEDOUT) {
            *err = t->inner_err;
            return t->inner_rc;
        }
        return sb_error_set(err, SB_ETIMEDOUT, 0, "%s: %s: timed out", t->name, what);
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return sb_error_set(err, SB_ECLOSED, 0, "%s: the broker closed the connection", t->name);
    }
    if (t->inner_rc != 0) {
        ERR_clear_error(); /* "unexpected eof": the transport says it better */
        *err = t->inner_err;
        return t->inner_rc;
    }
    take_reasons(why, sizeof(why));
    if (why[0] == '\0')
        return sb_error_set(err, SB_ECLOSED, 0, "%s: the broker closed the connection", t->name);
    return sb_error_set(err, SB_EIO, 0, "%s: %s: %s", t->name, what, why);
}

/* ---- the transport ---- */

static int tls_read(sb_transport *base, void *buf, size_t cap, size_t *out_n, int timeout_ms,
                    sb_error *err)
{
    tls_transport *t = (tls_transport *)base;
    int ret;

    set_deadline(t, timeout_ms);
    t->inner_rc = 0;
    ret = SSL_read_ex(t->ssl, buf, cap, out_n);
    return ret == 1 ? 0 : ssl_failed(t, ret, "TLS read", err);
}

static int tls_write(sb_transport *base, const void *buf, size_t len, int timeout_ms,
                     sb_error *err)
{
    tls_transport *t = (tls_transport *)base;
    size_t done = 0;

    set_deadline(t, timeout_ms);
    while (done < len) {
        size_t n = 0;
        int ret;
        t->inner_rc = 0;
        ret = SSL_write_ex(t->ssl, (const char *)buf + done, len - done, &n);
        if (ret != 1)
            return ssl_failed(t, ret, "TLS write", err);
        done += n;
    }
    return 0;
}

static void tls_close(sb_transport *base)
{
    tls_transport *t = (tls_transport *)base;
    if (t->ssl != NULL) {
        /* a close_notify if it can go at once; the broker needs none */
        t->deadline_ns = sb_client__now_ns();
        (void)SSL_shutdown(t->ssl);
        SSL_free(t->ssl); /* frees the BIO */
    }
    SSL_CTX_free(t->ctx);
    if (t->inner != NULL)
        t->inner->ops->close(t->inner);
    ERR_clear_error();
    sb_free(t);
}

static const sb_transport_ops tls_ops = {tls_read, tls_write, tls_close};

/* One BIO method for the process: OpenSSL has about a hundred BIO type
 * numbers to give out, not one per connection. */
static BIO_METHOD *bio_method;
static uv_once_t bio_method_once = UV_ONCE_INIT;

static void make_bio_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sb_client");
    if (m != NULL && BIO_meth_set_read_ex(m, bio_read) == 1 &&
        BIO_meth_set_write_ex(m, bio_write) == 1 && BIO_meth_set_ctrl(m, bio_ctrl) == 1)
        bio_method = m;
    else
        BIO_meth_free(m);
}

static int is_ip_literal(const char *host)
{
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(host);
    ASN1_OCTET_STRING_free(ip);
    return ip != NULL;
}

/* Loads the CA and the client's certificate into t->ctx. */
static int load_files(tls_transport *t, const sb_client_tls *o, sb_error *err)
{
    char why[256];
    if (o->ca != NULL) {
        if (SSL_CTX_load_verify_locations(t->ctx, o->ca, NULL) != 1) {
            take_reasons(why, sizeof(why));
            return sb_error_set(err, SB_EINVAL, 0, "cannot load the CA file %s: %s", o->ca, why);
        }
    } else if (SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        take_reasons(why, sizeof(why));
        return sb_error_set(err, SB_EINVAL, 0, "cannot use OpenSSL's default CAs: %s", why);
    }
    if ((o->cert == NULL) != (o->key == NULL))
        return sb_error_set(err, SB_EINVAL, 0, "a client certificate needs its key: give both");
    if (o->cert == NULL)
        return 0;
    if (SSL_CTX_use_certificate_chain_file(t->ctx, o->cert) != 1) {
        take_reasons(why, sizeof(why));
        return sb_error_set(err, SB_EINVAL, 0, "cannot load the certificate %s: %s", o->cert,
                            why);
    }
    if (SSL_CTX_use_PrivateKey_file(t->ctx, o->key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(t->ctx) != 1) {
        take_reasons(why, sizeof(why));
        return sb_error_set(err, SB_EINVAL, 0, "cannot use the key %s with %s: %s", o->key,
                            o->cert, why);
    }
    return 0;
}

static int no_password(char *buf, int size, int rw, void *u)
{
    (void)buf;
    (void)size;
    (void)rw;
    (void)u;
    return 0; /* encrypted keys are not supported: fail rather than prompt */
}

int sb_client__tls_open(sb_transport **out, sb_transport *inner, const sb_endpoint *ep,
                        const sb_client_tls *o, int timeout_ms, sb_error *err)
{
    tls_transport *t;
    BIO *bio;
    int ret, rc;

    *out = NULL;
    ERR_clear_error();
    t = sb_calloc(1, sizeof(*t));
    if (t == NULL) {
        inner->ops->close(inner);
        return sb_error_set(err, SB_ENOMEM, 0, "cannot connect to %s: out of memory",
                            ep->display);
    }
    t->base.ops = &tls_ops;
    t->inner = inner; /* now owned by t */
    snprintf(t->name, sizeof(t->name), "%s", ep->display);
    uv_once(&bio_method_once, make_bio_method);
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (t->ctx == NULL || bio_method == NULL) {
        rc = sb_error_set(err, SB_ENOMEM, 0, "cannot connect to %s: out of memory", ep->display);
        goto fail;
    }
    SSL_CTX_set_default_passwd_cb(t->ctx, no_password);
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    if ((rc = load_files(t, o, err)) != 0)
        goto fail;

    t->ssl = SSL_new(t->ctx);
    bio = BIO_new(bio_method);
    if (t->ssl == NULL || bio == NULL) {
        BIO_free(bio);
        rc = sb_error_set(err, SB_ENOMEM, 0, "cannot connect to %s: out of memory", ep->display);
        goto fail;
    }
    BIO_set_data(bio, t);
    BIO_set_init(bio, 1);
    SSL_set_bio(t->ssl, bio, bio); /* now owned by t->ssl */
    if (is_ip_literal(ep->host)) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), ep->host);
    } else {
        SSL_set_tlsext_host_name(t->ssl, ep->host);
        SSL_set1_host(t->ssl, ep->host);
    }

    set_deadline(t, timeout_ms);
    t->inner_rc = 0;
    ret = SSL_connect(t->ssl);
    if (ret != 1) {
        long v = SSL_get_verify_result(t->ssl);
        sb_error e;
        if (v != X509_V_OK) {
            ERR_clear_error();
            rc = sb_error_set(err, SB_EPROTO, 0,
                              "cannot connect to %s: the broker's certificate is not trusted: %s%s",
                              ep->display, X509_verify_cert_error_string(v),
                              o->ca == NULL ? " (see --ca)" : "");
            goto fail;
        }
        rc = ssl_failed(t, ret, "TLS handshake", &e);
        if (rc == SB_EIO)
            rc = SB_EPROTO; /* OpenSSL's reason: the broker is there */
        sb_error_set(err, rc, e.sys, "cannot connect to %s: %s", ep->display,
                     strncmp(e.msg, t->name, strlen(t->name)) == 0 ? e.msg + strlen(t->name) + 2
                                                                     : e.msg);
        goto fail;
    }
    *out = &t->base;
    return 0;
fail:
    tls_close(&t->base);
    return rc;
}
