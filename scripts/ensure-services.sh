#!/usr/bin/env bash
# Installs what the tests need from Debian, once; the tests start their own instances.
set -euo pipefail

need=()
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
# Redis backs the shared login rate limits (their tests start a private server).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# wrk drives the HTTP benchmarks (make bench).
command -v wrk >/dev/null 2>&1 || need+=(wrk)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${need[*]}; install them with apt-get (root needed)" >&2
    exit 1
  fi
  echo "installing ${need[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The package starts a system-wide node; the tests run their own on loopback ports.
  for unit in rabbitmq-server redis-server; do
    (service "$unit" stop || true) >/dev/null 2>&1
  done
fi
echo "services ready: rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null)," \
  "redis-server $(dpkg-query -W -f='${Version}' redis-server 2>/dev/null)"
