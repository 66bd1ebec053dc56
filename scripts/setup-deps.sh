#!/usr/bin/env bash
# Installs what building and testing needs on a fresh Debian machine with Docker and Rust:
# the MQTT broker, a container registry (for pull tests), Chromium and its WebDriver (for
# browser tests), tcpdump (the peer protocol's wire test), PostgreSQL (the Data API's store
# tests start private servers from its binaries), python3-venv (schemathesis for the OpenAPI
# tests is installed into target/openapi-venv), the C libraries some crates link, and for
# the Raspberry Pi builds the aarch64 cross linker with its C library, qemu-user (the
# aarch64 smoke tests) and Rust's aarch64 standard library. Idempotent: installs only what
# is missing. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(mosquitto mosquitto-clients docker-registry chromium chromium-driver socat pkg-config libudev-dev python3 python3-venv tcpdump postgresql
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static binfmt-support)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages start system services we do not want in the way of the tests,
# which start their own broker, registry and PostgreSQL on free loopback ports.
for svc in mosquitto docker-registry postgresql; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  echo "==> rustup target add aarch64-unknown-linux-gnu"
  rustup target add aarch64-unknown-linux-gnu
fi
docker info >/dev/null 2>&1 || { echo "Docker Engine is not reachable; start it first" >&2; exit 1; }
echo "==> dependencies ready"
