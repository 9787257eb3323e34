# tokenwarden: `make run` starts an agent on the embedded store with the
# example policy; `make test` runs every test. See README.md.

GO        ?= go
BIN       := bin/tokenwarden
DATA_DIR  ?= .data
POLICY    ?= deploy/policy.example.yaml
ENV       ?= dev
FUZZTIME  ?= 3s
# Interfaces for the kernel side (e.g. BPF_IFACE=veth0). Empty by default:
# on lo it would also see the ext_authz HTTP checks, which carry the token,
# and drop a revoked token's check itself. Without the privilege to load
# BPF, --bpf=auto says so once and the agent runs without it.
BPF_IFACE ?=

.PHONY: all build run test test-unit fuzz bench generate generate-check lint clean

all: build

build:
	$(GO) build -o $(BIN) .

run: build
	$(BIN) serve --data-dir $(DATA_DIR) --policy $(POLICY) --env $(ENV) $(addprefix --bpf-iface ,$(BPF_IFACE))

# The README's test command: vet, every test under the race detector, then
# each fuzz target briefly on its committed corpus and fresh inputs.
test: lint test-unit fuzz

test-unit:
	$(GO) test -race -count=1 ./...

fuzz:
	FUZZTIME=$(FUZZTIME) .ci/fuzz

bench:
	.ci/bench

generate:
	bpf/generate.sh

generate-check:
	bpf/generate-check.sh

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin $(DATA_DIR)
