#!/usr/bin/env bash
# A private CA and one node certificate it signed, for TLS on every port of
# a cluster (docs/security.md, "TLS"):
#   deploy/local/make-certs.sh DIR [SAN ...]
# writes DIR/ca.pem, DIR/ca.key, DIR/node.pem, DIR/node.key (keys mode 600).
# SANs default to IP:127.0.0.1 and DNS:localhost; a real deployment names
# each node's internal and public host names (one certificate per node, or
# one shared one listing them all). The node certificate carries both
# serverAuth and clientAuth: every node serves it and presents it to its
# peers (mutual TLS). Existing files are kept.
set -euo pipefail
dir=${1:?usage: $0 DIR [SAN ...]}
shift
sans=("$@")
[[ ${#sans[@]} -gt 0 ]] || sans=(IP:127.0.0.1 DNS:localhost)
mkdir -p "$dir"
if [[ -s "$dir/node.pem" && -s "$dir/node.key" && -s "$dir/ca.pem" ]]; then
  exit 0
fi
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 825 -subj "/CN=engram cluster CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$dir/node.key" -out "$dir/node.csr" -subj "/CN=engram node" 2>/dev/null
san=$(IFS=,; echo "${sans[*]}")
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n' "$san" >"$dir/node.ext"
openssl x509 -req -in "$dir/node.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
  -CAcreateserial -out "$dir/node.pem" -days 825 -extfile "$dir/node.ext" 2>/dev/null
rm -f "$dir/node.csr" "$dir/node.ext" "$dir/ca.srl"
chmod 644 "$dir/ca.pem" "$dir/node.pem"
echo "made a CA and a node certificate ($san) in $dir"
