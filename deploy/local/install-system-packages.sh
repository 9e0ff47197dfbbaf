#!/usr/bin/env bash
# Installs, from Debian's packages, what the local stack needs and the machine lacks:
# PostgreSQL server + client tools (initdb, pg_ctl, pgbench), MariaDB server (the second
# target: mariadb-install-db, mariadbd), a JDK 17+ (and a JDK 21+ for Apicurio Registry when
# Debian offers one), Maven, and promtool.
# Does nothing when everything is present; needs root (or sudo) otherwise.
set -euo pipefail

need=()
have_pg() { command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; }
have_pg || need+=(postgresql postgresql-contrib)
command -v pgbench >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
java_major() { java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then need+=(openjdk-17-jdk-headless); fi
# Apicurio Registry (Avro sources) needs Java 21+: java on PATH or any JDK under /usr/lib/jvm.
have_java21() {
  local j v
  for j in "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/*/bin/java; do
    [ -x "$j" ] || continue
    v=$("$j" -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1)
    [ -n "$v" ] && [ "$v" -ge 21 ] && return 0
  done
  return 1
}
if ! have_java21; then
  if apt-cache show openjdk-21-jdk-headless >/dev/null 2>&1; then
    need+=(openjdk-21-jdk-headless)
  else
    echo "system packages: WARNING no Java 21+ found and Debian offers none here; the local stack's" >&2
    echo "  Schema Registry (Avro) will not start: install a JDK 21+ under /usr/lib/jvm" >&2
  fi
fi
command -v mvn >/dev/null 2>&1 || need+=(maven)
# Go builds helm for the deploy checks (`make tools`); the image usually has a recent one in /usr/local/go.
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || need+=(golang-go)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)

if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
echo "system packages: installing ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
# Debian's postgresql package creates and starts a default cluster on 5432; the local
# stack runs its own clusters, so leave the default one alone but out of the way.
if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | grep -q online; then
  $SUDO pg_ctlcluster "$(pg_lsclusters -h | awk 'NR==1{print $1}')" main stop || true
fi
# Debian's mariadb-server may start a system server on 3306; the local stack runs its own
# mariadbd on 3307 (tests: 15435 + 100 x slot), so the two never collide: it is left alone.
