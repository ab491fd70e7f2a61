# The two commands of the README. Both install what they need first.
CARGO ?= cargo
JOULE := target/debug/joule

.PHONY: demo test deps build lint fmt bench

deps:
	@scripts/ensure-deps.sh

build: deps
	$(CARGO) build --locked

## Validate every example workflow, draw one, and plan them on this machine.
demo: build
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
test: deps lint
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: deps
	$(CARGO) bench --locked
