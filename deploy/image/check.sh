#!/usr/bin/env bash
# Checks a built tokenwarden image's configuration without running it:
# numeric non-root user, entrypoint, OCI labels, size. Usage:
#   deploy/image/check.sh IMAGE VERSION REVISION
set -euo pipefail
image=$1 version=$2 revision=$3
max_bytes=$((40 * 1024 * 1024))
fail=0
check() { # name got want
  if [ "$2" != "$3" ]; then echo "image-check: $1 = '$2', want '$3'"; fail=1; fi
}
field() { podman image inspect --format "$1" "$image"; }
check user "$(field '{{.Config.User}}')" "65532:65532"
check entrypoint "$(field '{{json .Config.Entrypoint}}')" '["/tokenwarden"]'
check source "$(field '{{index .Labels "org.opencontainers.image.source"}}')" "https://github.com/tokenwarden/tokenwarden"
check version "$(field '{{index .Labels "org.opencontainers.image.version"}}')" "$version"
check revision "$(field '{{index .Labels "org.opencontainers.image.revision"}}')" "$revision"
size=$(field '{{.Size}}')
if [ "$size" -ge "$max_bytes" ]; then echo "image-check: size $size bytes, want under $max_bytes"; fail=1; fi
if [ "$fail" -ne 0 ]; then exit 1; fi
echo "image-check: $image ok (user 65532:65532, entrypoint /tokenwarden, labels, $((size / 1024 / 1024)) MiB)"
