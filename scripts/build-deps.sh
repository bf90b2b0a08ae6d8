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
# The fault suite's zombie scenario: its own network namespace (ip netns + veth) and a small
# TCP forwarder in Python inside it. Creating a namespace needs root (or CAP_NET_ADMIN).
command -v ip >/dev/null || missing+=(iproute2)
command -v python3 >/dev/null || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[build-deps] installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
