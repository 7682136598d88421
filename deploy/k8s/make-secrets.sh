#!/usr/bin/env bash
# Makes the env file kustomize turns into the Secret `engram-secrets`
# (deploy/k8s/secrets/engram.env, never committed): a fresh cluster secret
# and, with --api-keys, a full and a read-only public API key, printed once
# so that you can hand them to clients. Run it once per deployment, before
# `kubectl apply -k deploy/k8s`; running it again rotates every value
# (docs/security.md says how to do that without downtime).
#   deploy/k8s/make-secrets.sh [--api-keys] [OUT_DIR]
set -euo pipefail
api_keys=0
if [[ "${1:-}" == "--api-keys" ]]; then api_keys=1; shift; fi
out="${1:-$(dirname "$0")/secrets}"
mkdir -p "$out"
token() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }
file="$out/engram.env"
(
  umask 077
  {
    echo "ENGRAM_SECURITY__CLUSTER_SECRET=$(token)"
    if [[ $api_keys == 1 ]]; then
      full=$(token) read_only=$(token)
      echo "ENGRAM_SECURITY__API_KEY=$full"
      echo "ENGRAM_SECURITY__READ_ONLY_API_KEY=$read_only"
      echo "full API key:      $full" >&2
      echo "read-only API key: $read_only" >&2
    fi
  } >"$file"
)
echo "wrote $file" >&2
