#!/bin/sh
# Installs what luasmtpd needs to build, run and test on Debian 12.
# Idempotent; needs root (or sudo). Only Debian packages are used.
set -eu
# postfix: lmtp_spec delivers through a private instance (its own config,
# queue and data directories, loopback ports only); the package also
# enables Debian's system MTA, which the specs never use.
# fail2ban: bruteforce_spec runs fail2ban-regex on the server's log (the
# package's service is never used).
PACKAGES="build-essential cmake pkg-config libluajit-5.1-dev luajit libev-dev libmbedtls-dev
  lua-busted lua-socket lua-sec lua-check lua-cjson swaks python3-aiosmtpd curl openssl haproxy
  libssl-dev valgrind clang libclang-rt-14-dev libc-ares-dev dnsmasq-base
  libcrypt-dev libargon2-dev libsqlite3-dev sqlite3 whois argon2 redis-server python3 ca-certificates postfix gsasl fail2ban"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "tools/deps.sh: installing$missing" >&2
  $SUDO apt-get update -q
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
