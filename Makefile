# tokenwarden: `make run` starts an agent on the embedded store with the
# example policy; `make test` runs every test. See README.md.

GO        ?= go
BIN       := bin/tokenwarden
DATA_DIR  ?= .data
POLICY    ?= deploy/policy.example.yaml
ENV       ?= dev
FUZZTIME  ?= 3s
# The kernel side attaches here when the agent may load BPF (root); without
# the privilege, --bpf=auto says so once and the agent runs without it.
BPF_IFACE ?= lo

.PHONY: all build run test test-unit fuzz bench generate generate-check lint clean

all: build

build:
	$(GO) build -o $(BIN) .

run: build
	$(BIN) serve --data-dir $(DATA_DIR) --policy $(POLICY) --env $(ENV) --bpf-iface $(BPF_IFACE)

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
