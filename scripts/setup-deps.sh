#!/usr/bin/env bash
# Installs what building and testing needs on a fresh Debian machine with Docker and Rust:
# the MQTT broker, a container registry (for pull tests), Chromium and its WebDriver (for
# browser tests), PostgreSQL (the Data API's store tests start private servers from its
# binaries), python3-venv (schemathesis for the OpenAPI test is installed into
# target/openapi-venv), and the C libraries some crates link. Idempotent: installs only what is
# missing. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(mosquitto mosquitto-clients docker-registry chromium chromium-driver socat pkg-config libudev-dev python3 python3-venv postgresql)
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
docker info >/dev/null 2>&1 || { echo "Docker Engine is not reachable; start it first" >&2; exit 1; }
echo "==> dependencies ready"
