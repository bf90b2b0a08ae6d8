#!/usr/bin/env bash
# Build prerequisites beyond Rust: a C toolchain, cmake-free librdkafka build needs make and perl,
# and its TLS support links the system OpenSSL (libssl-dev + pkg-config). Installs from apt only
# what is missing; a no-op on a machine that has them.
set -euo pipefail
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
command -v perl >/dev/null || missing+=(perl)
command -v pkg-config >/dev/null || missing+=(pkg-config)
if ! pkg-config --exists openssl 2>/dev/null; then missing+=(libssl-dev); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[build-deps] installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
