#!/bin/sh
# Regenerates the TLS test certificates of tests/integration/test_tls.c
# (checked in, so the Windows tests under Wine need no openssl CLI). All are
# EC P-256 and valid for 100 years, except expired.pem.
#
#   ca.pem/.key          the test CA
#   server.pem/.key      CN=localhost, SAN localhost, 127.0.0.1, ::1 (by ca)
#   alice.pem/.key       client certificate, CN=alice (by ca)
#   other-ca.pem/.key    an unrelated CA
#   mallory.pem/.key     client certificate, CN=mallory (by other-ca)
#   expired.pem/.key     CN=localhost like server.pem, expired in 2001 (by ca)
#   garbage.key          not a key (a PEM whose base64 is damaged)
#
# Usage: tests/data/tls/make-certs.sh   (writes next to itself)
set -eu
cd "$(dirname "$0")"
days=36500
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# $1 name, $2 subject
ca() {
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -subj "$2" -days $days -out "$1.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

# $1 name, $2 subject, $3 issuer, $4 extensions
leaf() {
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$tmp/$1.csr"
    printf '%s\n' "$4" >"$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
        -CAserial "$tmp/$3.srl" -days $days -extfile "$tmp/$1.ext" -out "$1.pem" 2>/dev/null
}

server_ext='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1'
client_ext='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'

ca ca "/O=Switchboard tests/CN=Switchboard Test CA"
ca other-ca "/O=Somebody else/CN=Other Test CA"
leaf server "/O=Switchboard tests/CN=localhost" ca "$server_ext"
leaf alice "/O=Switchboard tests/CN=alice" ca "$client_ext"
leaf mallory "/O=Somebody else/CN=mallory" other-ca "$client_ext"

# expired: `openssl ca` is the one that takes explicit dates.
key expired.key
openssl req -new -key expired.key -subj "/O=Switchboard tests/CN=localhost" -out "$tmp/expired.csr"
mkdir -p "$tmp/db"
: >"$tmp/db/index.txt"
echo 01 >"$tmp/db/serial"
cat >"$tmp/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $tmp/db/index.txt
serial = $tmp/db/serial
new_certs_dir = $tmp/db
default_md = sha256
policy = any
copy_extensions = none
x509_extensions = ext
[any]
commonName = supplied
organizationName = optional
[ext]
$server_ext
CNF
openssl ca -batch -config "$tmp/ca.cnf" -cert ca.pem -keyfile ca.key -in "$tmp/expired.csr" \
    -startdate 20000101000000Z -enddate 20010101000000Z -notext -out expired.pem 2>/dev/null

# A key file whose base64 is cut short.
head -c 120 server.key >garbage.key
printf '\n-----END PRIVATE KEY-----\n' >>garbage.key

rm -f ./*.srl
echo "certificates written to $(pwd)"
