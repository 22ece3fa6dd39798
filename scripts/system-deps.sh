#!/usr/bin/env bash
# Installs the system tools the tests and `make run` use (Debian packages), if missing; checks Java and Maven.
set -euo pipefail

missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # TLS tests generate their certificates with it
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)   # rule and dashboard tests

if ((${#missing[@]})); then
  echo "system-deps: installing ${missing[*]} (Debian packages)"
  if [[ $(id -u) -eq 0 ]]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
    echo "system-deps: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "system-deps: '$tool' not found: the local Kafka broker needs Java 17+ and Maven" >&2
    exit 1
  fi
done
