#!/usr/bin/env bash
# Supply chain: `cargo deny check bans licenses sources` (deny.toml) over the locked dependency
# graph, offline after `cargo fetch`. cargo-deny itself is built once into .tools/cargo
# (git-ignored) at a pinned version: the first run builds it, 3 min 10 s on this 2-core machine
# with the crates already downloaded (`cargo install --locked`, measured 2026-11-24).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_DENY_VERSION=0.20.2
ROOT_DIR=.tools/cargo
DENY="$ROOT_DIR/bin/cargo-deny"

log() { printf '[supply-chain] %s\n' "$*" >&2; }

if ! { [ -x "$DENY" ] && "$DENY" --version 2>/dev/null | grep -q " $CARGO_DENY_VERSION\$"; }; then
  log "installing cargo-deny $CARGO_DENY_VERSION into $ROOT_DIR"
  # A debug build: 1m50s instead of 5m10s from scratch on a 2-core machine (CI builds it every
  # run), and the check it runs still takes seconds.
  cargo install --quiet --locked --debug cargo-deny --version "$CARGO_DENY_VERSION" --root "$ROOT_DIR"
fi
cargo fetch --locked --quiet
log "cargo deny check bans licenses sources (offline)"
"$DENY" --log-level warn --frozen check --hide-inclusion-graph bans licenses sources
