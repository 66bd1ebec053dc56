#!/usr/bin/env bash
# Runs every check and test of the project, as CI does: installs missing dependencies,
# builds the workload images (x86_64 and aarch64), checks formatting and lints, runs all
# tests (unit, integration, end-to-end against real Docker, mosquitto, ZeroMQ, TLS and
# Chromium, and the aarch64 binaries under qemu) and
# writes a coverage report to coverage/.
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    skip coverage
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[ "${1:-}" = "--quick" ] && quick=true

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/setup-deps.sh

# Coverage needs cargo-tarpaulin; building it overlaps with the steps below.
$quick || scripts/install-tarpaulin.sh --background

# The workload images and the main job run the debug binaries that the tests build anyway:
# one compilation of the workspace instead of a second, optimized one (which took about a
# quarter of the whole run). Benchmarks use the release profile of Cargo.toml, not this.
export MOTEY_BUILD_PROFILE=dev

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets -- -D warnings

step "workload images"
# Both platforms: the aarch64 binaries (the Raspberry Pi's) also feed the smoke suite that
# runs them under qemu (tests/tests/aarch64_emulation.rs) and the multi-arch image test.
scripts/build-images.sh --platform all all

step "tests"
export RUST_BACKTRACE=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --profile ci
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

if ! $quick; then
  step "coverage (unit tests)"
  scripts/coverage.sh
fi
