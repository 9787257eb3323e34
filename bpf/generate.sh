#!/usr/bin/env bash
# Regenerates the bpf2go output (tokenmeter_bpfel.go, tokenmeter_bpfel.o)
# from tokenmeter.c. `make generate` and `go generate ./bpf/` run this.
#
# Toolchain the committed output was built with (Debian 12 "bookworm"):
#   clang 14.0.6 (clang-14 1:14.0.6-12), llvm-strip 14 (llvm-14 1:14.0.6-12),
#   libbpf-dev 1:1.1.2-0+deb12u1 (bpf_helpers.h, bpf_endian.h),
#   linux-libc-dev 6.1.192-2 (uapi headers),
#   bpf2go from github.com/cilium/ebpf v0.22.0 (the version in go.mod).
# Another clang or header version may produce a different object; then
# generate-check.sh fails and the new output must be reviewed and committed.
#
# The output is reproducible: bpf2go passes -fno-ident and maps the source
# directory out of the debug info, llvm-strip removes DWARF, and nothing
# depends on the time or the checkout path.
set -euo pipefail

cd "$(dirname "$0")"

if ! command -v clang >/dev/null 2>&1; then
	echo "generate.sh: clang not found; installing the BPF toolchain with apt-get" >&2
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y clang llvm libbpf-dev linux-libc-dev
fi

# <linux/bpf.h> includes <asm/types.h>, which lives in the multiarch directory.
multiarch="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)"

export GOPACKAGE=bpf
go tool bpf2go \
	-cc clang \
	-strip llvm-strip \
	-target bpfel \
	-type drop_event \
	-type global_stats \
	-type token_stats \
	-cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/${multiarch}" \
	tokenmeter tokenmeter.c
