# The two commands of the README. Both install what they need first.
CARGO ?= cargo
JOULE := target/debug/joule

.PHONY: demo test deps build lint fmt bench

deps:
	@scripts/ensure-deps.sh

build: deps
	$(CARGO) build --locked

## Validate every example workflow, print its compiled DAG, and draw one.
demo: build
	@echo "== joule validate workflows/*.yaml"
	@$(JOULE) validate workflows/*.yaml
	@echo
	@echo "== joule graph --format mermaid workflows/ticket-triage.yaml"
	@$(JOULE) graph --format mermaid workflows/ticket-triage.yaml
	@echo
	@echo "== joule validate --json workflows/research-report.yaml"
	@$(JOULE) validate --json workflows/research-report.yaml

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
