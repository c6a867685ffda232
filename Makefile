# The two commands a newcomer runs (see README.md):
#   make demo   start the local stack, run the platform with a demo workload, print a summary
#   make test   start the local stack, run every test (unit and end-to-end) against it
#
# The local stack (stack/stack.sh) is PostgreSQL 15 and Apache Kafka 4.x without
# Docker. Set CHANGES_POSTGRES_URL and/or CHANGES_KAFKA_BROKERS to use existing
# services instead.

GO       ?= go
STACK    := stack/stack.sh
BIN      := bin/changes
# Exported to every recipe: the addresses of the stack the tests and the demo use.
STACK_ENV = eval "$$(bash $(STACK) env)"

.PHONY: demo test unit check build faults bench bench-e2e bench-platform stack-up stack-down stack-status stack-reset fuzz clean

demo: stack-up build
	@$(STACK_ENV) && ./$(BIN) demo --config configs/local.yaml

test: check stack-up
	$(STACK_ENV) && $(GO) test -race -count=1 -timeout 20m ./...

# Unit tests only: no stack needed (the end-to-end tests skip without one, unless CI=true).
unit:
	$(GO) test -race -count=1 -short $$($(GO) list ./... | grep -v /e2e)

check:
	@test -z "$$(gofmt -l $$($(GO) list -f '{{.Dir}}' ./...))" || { echo "gofmt needed on:"; gofmt -l $$($(GO) list -f '{{.Dir}}' ./...); exit 1; }
	$(GO) vet ./...
	@! $(GO) list -deps ./views/... | grep -E 'pglogrepl|changes/(capture|processors)$$' || { echo "views must not depend on capture, processors or pglogrepl"; exit 1; }

build:
	$(GO) build -buildvcs=false -ldflags "-X main.commit=$$(git rev-parse --short HEAD 2>/dev/null)$$(git diff --quiet HEAD 2>/dev/null || echo -modified)" -o $(BIN) ./cmd/changes

# The fault suite (e2e/faults_test.go, README "Faults"): on a stack of its own,
# `changes run` and `changes serve` under a mixed workload while they, the
# broker (SIGKILL, SIGSTOP) and PostgreSQL (-m immediate) fail again and again,
# on one broker and on three; then the history against what was committed and
# every served table against the database, as a table. About 20 minutes.
# `make test` runs its short plan (about 3 minutes).
faults: stack-up
	$(STACK_ENV) && CHANGES_FAULTS=full $(GO) test -count=1 -run '^TestFaults$$' -v -timeout 50m ./e2e/

stack-up:
	@bash $(STACK) up

stack-down:
	@bash $(STACK) down

stack-status:
	@bash $(STACK) status

stack-reset:
	@bash $(STACK) reset

# Micro-benchmarks (codecs); not part of `make test`.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./codecs/

# The capture and the processors on the local stack: catch-up throughput,
# latency at a fixed rate, initial snapshot rows/s, events/s through router
# and snapshot groups, table restore rate. Not part of `make test`.
bench-e2e: stack-up
	$(STACK_ENV) && $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 20m ./e2e/

# The whole platform side by side with Debezium on this machine (BENCHMARKS.md):
# PostgreSQL's ceiling, catch-up of a 1,000,000-change backlog, live latency at
# fixed rates, CPU and memory per component. BENCH_FLAGS="--live 10m" soaks.
# The figures are compared with the committed bench-result.json (read before
# the new run overwrites it): a FLAG line for each throughput that fell by
# more than 20 % (or CPU cost per change that rose by more than 25 %), and
# exit status 3. BENCH_COMPARE= skips the comparison.
BENCH_COMPARE ?= $(if $(wildcard bench-result.json),--compare bench-result.json)
bench-platform: stack-up build
	bash stack/debezium/debezium.sh fetch
	bash stack/kstreams/kstreams.sh fetch
	$(GO) build -buildvcs=false -o bin/changes-bench ./cmd/changes-bench
	$(STACK_ENV) && ./bin/changes-bench --out bench-result.json $(BENCH_COMPARE) $(BENCH_FLAGS)

# Each fuzz target for a short while; FUZZTIME=5m for longer.
FUZZTIME ?= 20s
fuzz:
	@for f in $$($(GO) test -list '^Fuzz' ./codecs/ | grep ^Fuzz); do \
		echo "== $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) ./codecs/ || exit 1; \
	done

clean:
	rm -rf bin
