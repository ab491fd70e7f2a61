#!/usr/bin/env bash
# Installs what building joule needs on a fresh machine, so `make demo` and `make test` work
# from a clean clone. System packages come from apt-get when missing and we are root;
# otherwise we say exactly what to install.
set -euo pipefail

# System packages the build needs (Debian names) and a shell test that shows each is there.
# cmake, g++ and libclang-dev build HiGHS (the MILP solver) from source through highs-sys;
# bubblewrap builds the box every tool step runs in (joule refuses to run a tool without one).
declare -A NEED=(
  [bubblewrap]="command -v bwrap"
  [gcc]="command -v cc"
  [g++]="command -v c++"
  [make]="command -v make"
  [cmake]="command -v cmake"
  [libclang-dev]="compgen -G '/usr/lib/llvm-*/lib/libclang.so' || compgen -G '/usr/lib/*/libclang.so'"
)

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed. Install Rust 1.89 or newer with rustup (https://rustup.rs)." >&2
  exit 1
fi

missing=()
for pkg in "${!NEED[@]}"; do
  eval "${NEED[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      rustup component add "$component"
    else
      echo "error: the Rust component $component is missing; install it with rustup" >&2
      exit 1
    fi
  fi
done

# The serve tests talk to `joule serve` with OpenAI's own Python client, LangChain and
# LangGraph, from PyPI, in a virtual environment of the checkout (.venv, ignored by git).
if [[ "${1:-}" == "--test" ]]; then
  if ! command -v python3 >/dev/null 2>&1; then
    echo "error: python3 is needed for the OpenAI client tests; install python3 and python3-venv" >&2
    exit 1
  fi
  # LangChain's ChatOpenAI and LangGraph's ReAct agent are what most agent code runs on:
  # the function-calling tests drive joule serve with them as they are.
  if ! .venv/bin/python -c 'import openai, langchain_openai, langgraph.prebuilt' >/dev/null 2>&1; then
    echo "installing the openai Python client, langchain-openai and langgraph into .venv"
    [[ -x .venv/bin/pip ]] || python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'openai>=1.40,<3' 'langchain-openai>=0.3,<2' 'langgraph>=0.3,<2'
  fi
fi
