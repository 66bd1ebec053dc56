#!/usr/bin/env bash
# Installs cargo-tarpaulin once (coverage). `--background` starts the build and returns at
# once; a later call without it waits for that build to finish.
set -euo pipefail
log=${TMPDIR:-/tmp}/motey-tarpaulin-install.log
lock=${TMPDIR:-/tmp}/motey-tarpaulin-install.lock
if cargo tarpaulin --version >/dev/null 2>&1; then exit 0; fi
install() {
  flock "$lock" bash -c "cargo tarpaulin --version >/dev/null 2>&1 || cargo install cargo-tarpaulin --locked --quiet" >"$log" 2>&1
}
if [ "${1:-}" = --background ]; then
  echo "==> installing cargo-tarpaulin in the background (log: $log)"
  install &
  exit 0
fi
echo "==> installing cargo-tarpaulin (once)"
install || { cat "$log"; exit 1; }
