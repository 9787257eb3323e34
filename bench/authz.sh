#!/usr/bin/env bash
# Benchmarks the authz servers (gRPC and HTTP mode) against no-op floors and
# prints a markdown table. Server processes run on CPU 0, the load generator
# on CPU 1. Extra arguments go to authzload (e.g. -duration 2s -rounds 3).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v taskset >/dev/null; then
	echo "bench/authz.sh: taskset is missing (apt-get install -y util-linux)" >&2
	exit 1
fi
if [ "$(nproc)" -lt 2 ]; then
	echo "bench/authz.sh: needs 2 CPUs (server and load generator on separate cores); have $(nproc)" >&2
	exit 1
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/authzserver" ./bench/cmd/authzserver
go build -o "$bin/authzload" ./bench/cmd/authzload
echo "command: taskset -c 1 authzload -server authzserver -server-cpu 0 $*" >&2
taskset -c 1 "$bin/authzload" -server "$bin/authzserver" -server-cpu 0 -policy deploy/policy.example.yaml "$@"
