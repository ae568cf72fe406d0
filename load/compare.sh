#!/usr/bin/env bash
# Builds the relay and the load tool in release mode, then runs the same load
# straight at a fast fake backend and through the relay over WebSocket and
# over QUIC, and prints the comparison table. Extra arguments go to
# `modelrelay-load compare` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin modelrelay-server --bin modelrelay-worker --bin modelrelay-load
exec target/release/modelrelay-load compare "$@"
