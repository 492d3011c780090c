#!/bin/sh
# The plugin's TLS without cert-manager: a CA, the plugin's server certificate and the
# client certificate CloudNativePG presents, all ECDSA P-256, made with openssl (1.1.1 or
# later). Then either prints the kubectl commands that store them as the Secrets named by
# the Service's annotations, or runs them (--apply).
#
#   deploy/cnpg/certificates/openssl.sh DIR               # write DIR/*.crt, *.key; print commands
#   deploy/cnpg/certificates/openssl.sh --apply DIR       # and create the Secrets
#
# Options: --namespace NS (cnpg-system: where the CloudNativePG operator runs),
# --service NAME (pgagent), --days N (validity of the server and client certificates, 365).
# A ca.crt and ca.key already in DIR are reused, so running it again renews the server and
# client certificates under the same CA. Keep ca.key out of the cluster.
set -eu

namespace=cnpg-system
service=pgagent
days=365
apply=0
dir=

usage() {
    echo "usage: $0 [--namespace NS] [--service NAME] [--days N] [--apply] DIR" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
        --namespace) [ $# -ge 2 ] || usage; namespace=$2; shift 2 ;;
        --service) [ $# -ge 2 ] || usage; service=$2; shift 2 ;;
        --days) [ $# -ge 2 ] || usage; days=$2; shift 2 ;;
        --apply) apply=1; shift ;;
        -h|--help) usage ;;
        -*) echo "$0: unknown option $1" >&2; usage ;;
        *) [ -z "$dir" ] || usage; dir=$1; shift ;;
    esac
done
[ -n "$dir" ] || usage
case $days in ''|*[!0-9]*) echo "$0: --days takes a number of days" >&2; exit 2 ;; esac
command -v openssl >/dev/null 2>&1 || { echo "$0: openssl not found" >&2; exit 1; }

umask 077
mkdir -p "$dir"
cd "$dir"

newkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# sign NAME SUBJECT EXTENSIONS: a key, a request, and a certificate signed by the CA.
sign() {
    newkey "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days "$days" -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

if [ -s ca.crt ] && [ -s ca.key ]; then
    echo "reusing the CA in $dir" >&2
else
    newkey ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=pgagent-cnpg-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out ca.crt
fi

# CloudNativePG checks the server certificate against the Service's name; the namespace
# forms serve other clients.
sign server "/CN=$service" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$service,DNS:$service.$namespace,DNS:$service.$namespace.svc,DNS:$service.$namespace.svc.cluster.local
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash"

sign client "/CN=cnpg-operator" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash"
rm -f ca.srl

openssl verify -CAfile ca.crt server.crt client.crt >/dev/null

# Secrets of type kubernetes.io/tls with ca.crt beside tls.crt and tls.key, as cert-manager
# makes them (`kubectl create secret tls` cannot add ca.crt): the plugin reads the client
# Secret's ca.crt, CloudNativePG the rest.
secret() {
    echo "kubectl -n $namespace create secret generic $service-$1-tls --type=kubernetes.io/tls" \
        "--from-file=tls.crt='$PWD/$1.crt' --from-file=tls.key='$PWD/$1.key' --from-file=ca.crt='$PWD/ca.crt'" \
        "--dry-run=client -o yaml | kubectl apply -f -"
}

if [ "$apply" = 1 ]; then
    command -v kubectl >/dev/null 2>&1 || { echo "$0: kubectl not found" >&2; exit 1; }
    for name in server client; do
        sh -c "$(secret "$name")"
    done
else
    echo "# certificates in $PWD; store them with:"
    secret server
    secret client
fi
