#!/usr/bin/env bash
# Regenerates the bpf2go output and fails if it differs from what is
# committed: the object in the tree must be the one tokenmeter.c compiles to
# with the pinned toolchain (see generate.sh). Run in CI after checkout.
set -euo pipefail

cd "$(dirname "$0")"
outputs=(tokenmeter_bpfel.go tokenmeter_bpfel.o)

before="$(sha256sum "${outputs[@]}")"
./generate.sh
after="$(sha256sum "${outputs[@]}")"

status=0
if [[ "$before" != "$after" ]]; then
	echo "generate-check: regenerating changed the bpf2go output:" >&2
	diff <(echo "$before") <(echo "$after") >&2 || true
	status=1
fi
# Against the commit: catches output that was regenerated but not committed.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	if ! git diff --exit-code --stat -- "${outputs[@]}" >&2; then
		echo "generate-check: bpf2go output differs from the committed files" >&2
		status=1
	fi
	untracked="$(git ls-files --others --exclude-standard -- '*_bpfel.go' '*_bpfel.o')"
	if [[ -n "$untracked" ]]; then
		echo "generate-check: bpf2go output not committed: $untracked" >&2
		status=1
	fi
fi
if [[ $status -ne 0 ]]; then
	echo "generate-check: run bpf/generate.sh with the toolchain pinned there and commit the result" >&2
fi
exit $status
