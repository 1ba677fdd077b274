#!/usr/bin/env bash
# System packages the build and the tests need beyond Rust, installed from
# Debian when missing: protoc (the Spark engine's gRPC types are generated
# at build time), Java 17 (the Spark Connect server the tests start) and
# socat (the TLS listener in front of the Kafka broker in the TLS test).
set -euo pipefail
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v socat >/dev/null || need+=(socat)
if [ "${#need[@]}" -eq 0 ]; then exit 0; fi
echo "installing ${need[*]}" >&2
sudo_=""
[ "$(id -u)" -eq 0 ] || sudo_="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo_ apt-get install -y -q "${need[@]}" >/dev/null ||
  { $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q "${need[@]}" >/dev/null; }
