#!/usr/bin/env bash
# Runs every check and every test of the repository. On a fresh machine it
# first installs what it needs (libclang for the RocksDB bindings, buf).
set -euo pipefail
cd "$(dirname "$0")/.."

# One build cache outside the clone, so repeated runs are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fila-target}"
TOOLS_DIR="${FILA_TOOLS_DIR:-$HOME/.cache/fila-tools}"
BUF_VERSION=1.75.0

step() { printf '\n==> %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null && ! ldconfig -p 2>/dev/null | grep -q 'libclang\.so'; then
  step "installing libclang (needed to build the RocksDB bindings)"
  as_root apt-get update -qq
  as_root apt-get install -y -qq libclang-dev
fi

# The benchmark suite's quick mode (below) runs Fila side by side with
# NATS JetStream and RabbitMQ, from Debian's packages.
if ! command -v nats-server >/dev/null || [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  step "installing nats-server and rabbitmq-server (peers of the benchmark suite)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server rabbitmq-server
fi

BUF="$TOOLS_DIR/node_modules/.bin/buf"
if [ ! -x "$BUF" ] || [ "$("$BUF" --version)" != "$BUF_VERSION" ]; then
  step "installing buf $BUF_VERSION"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS_DIR" "@bufbuild/buf@$BUF_VERSION"
fi

step "buf lint and format (proto/)"
"$BUF" lint
"$BUF" format --diff --exit-code

step "rustfmt"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "benchmark suite, quick mode (smoke test; the full run is in docs/benchmarks.md)"
cargo run -p fila-bench --locked -- --quick --out "$CARGO_TARGET_DIR/fila-bench-quick"
