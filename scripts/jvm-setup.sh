#!/usr/bin/env bash
# Resolve the JVM half of the local stack (jvm/pom.xml: Apache Kafka's broker and
# Kafka Connect, Debezium's PostgreSQL connector plugin) from Maven Central into
# .jvm/ (ignored by git):
#   .jvm/kafka/                                the broker's and Connect's classpath
#   .jvm/plugins/debezium-connector-postgres/  Debezium, for Connect's plugin.path
# It resolves again only when the pom changed (a stamp holds the pom's hash), into a
# staging folder swapped in whole, so a changed version never leaves old jars behind.
# First run: a minute or so (Maven's own plugins and ~60 MB of jars); later: instant.
set -euo pipefail
cd "$(dirname "$0")/.."

pom=jvm/pom.xml
out=.jvm
stamp=$out/.resolved
want=$(sha256sum "$pom" | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$out/kafka" ] && [ -d "$out/plugins/debezium-connector-postgres" ]; then
    echo "jvm-setup: $out is up to date with $pom"
    exit 0
fi

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "jvm-setup: installing system packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "jvm-setup: missing system packages: ${missing[*]}" >&2
        echo "jvm-setup: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

mkdir -p "$out"
staging=$out/.staging
# Maven's markers would let it skip unpacking into a fresh staging folder: start clean.
rm -rf "$staging" "$out/.maven-target"
log=$out/mvn.log
echo "jvm-setup: resolving $pom from Maven Central into $out (first time: a minute or so)"
start=$(date +%s)
if ! mvn -B -q -f "$pom" -Djvm.out="$PWD/$staging" package > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "jvm-setup: maven failed to resolve $pom (log: $log)" >&2
    rm -rf "$staging"
    exit 1
fi
if [ ! -d "$staging/kafka" ] || ! ls "$staging/plugins/debezium-connector-postgres"/debezium-connector-postgres-*.jar >/dev/null 2>&1; then
    echo "jvm-setup: maven succeeded but $staging lacks Kafka's jars or Debezium's plugin (log: $log)" >&2
    exit 1
fi
rm -rf "$out/kafka" "$out/plugins"
mv "$staging/kafka" "$out/kafka"
mv "$staging/plugins" "$out/plugins"
rmdir "$staging"
echo "$want" > "$stamp"
echo "jvm-setup: resolved in $(( $(date +%s) - start ))s: $(ls "$out/kafka" | wc -l) jars in $out/kafka ($(du -sh "$out/kafka" | cut -f1)), $(ls "$out/plugins/debezium-connector-postgres"/*.jar | wc -l) in $out/plugins/debezium-connector-postgres ($(du -sh "$out/plugins" | cut -f1))"
