# tokenwarden: `make run` starts an agent on the embedded store with the
# example policy; `make test` runs every test. See README.md.

GO        ?= go
BIN       := bin/tokenwarden
# Empty: the agent's default data directory, ~/.local/state/tokenwarden,
# where the CLI looks for the admin token from any directory.
DATA_DIR  ?=
POLICY    ?= deploy/policy.example.yaml
ENV       ?= dev
FUZZTIME  ?= 3s
# The module version (staticcheck 2026.2.2 is v0.8.2; the proxy serves the
# module version only).
STATICCHECK_VERSION := v0.8.2
STATICCHECK ?= $(or $(shell command -v staticcheck 2>/dev/null),$(HOME)/go/bin/staticcheck)
# Interfaces for the kernel side (e.g. BPF_IFACE=veth0). Empty by default:
# on lo it would also see the ext_authz HTTP checks, which carry the token,
# and drop a revoked token's check itself. Without the privilege to load
# BPF, --bpf=auto says so once and the agent runs without it.
BPF_IFACE ?=
# Stamped into the binary (tokenwarden version, tokenwarden_build_info) and
# the image's labels.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE     ?= localhost/tokenwarden:$(VERSION)
LDFLAGS   := -s -w -X github.com/tokenwarden/tokenwarden/buildinfo.version=$(VERSION) -X github.com/tokenwarden/tokenwarden/buildinfo.commit=$(COMMIT)

.PHONY: all build run test test-unit fuzz bench bench-report generate generate-check lint clean image image-check

all: build

# A static binary (no cgo): it runs in the FROM scratch image as it does here.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) .

# The container image: the static binary, a CA bundle, a numeric non-root
# user (Containerfile). Builds offline: nothing is pulled.
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
image: build
	cp $(CA_BUNDLE) bin/ca-certificates.crt
	podman build --file deploy/image/Containerfile --tag $(IMAGE) \
		--build-arg VERSION=$(VERSION) --build-arg REVISION=$(COMMIT) .

# Checks the built image's configuration (CI): user, entrypoint, labels, size.
image-check: image
	deploy/image/check.sh $(IMAGE) $(VERSION) $(COMMIT)

# Local: per-token metric series carry token id and subject (elsewhere the
# default is none: whoever scrapes /metrics would see them).
run: build
	$(BIN) serve $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --policy $(POLICY) --env $(ENV) $(addprefix --bpf-iface ,$(BPF_IFACE)) --metrics-token-labels id+subject

# The README's test command: gofmt, vet and staticcheck, every test under
# the race detector, then each fuzz target briefly on its committed corpus
# and fresh inputs.
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
	@test -x "$(STATICCHECK)" || { echo "installing staticcheck $(STATICCHECK_VERSION)"; $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); }
	$(STATICCHECK) ./...

clean:
	rm -rf bin $(DATA_DIR)

# docs/benchmarks.md and its charts (docs/benchmarks/*.svg): every benchmark
# the README quotes, run and drawn by bench/cmd/benchreport (~15 minutes;
# SKIP=authz,mesh leaves sections out).
SKIP ?=
bench-report:
	$(GO) run ./bench/cmd/benchreport -out docs/benchmarks.md $(if $(SKIP),-skip $(SKIP))
