# The resource broker's build. Every target bootstraps what it needs: a virtual
# environment in .venv with the package installed in editable mode (the
# client, the server extra and the development tools), and the
# generated gRPC code (committed; `make proto` rebuilds it).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
CONFIG ?= rotest.yml
BUF_VERSION := 1.75.0
BUF := $(CURDIR)/.tools/node_modules/.bin/buf

export PATH := $(BIN):$(PATH)

.PHONY: help venv proto proto-check serve test lint bench screenshots clean

help:
	@echo "make serve   start the broker ($(CONFIG), SQLite by default)"
	@echo "make test    run the whole test suite"
	@echo "make lint    ruff, mypy, buf lint, and the generated-code freshness check"
	@echo "make bench   benchmarks against same-run references (PLOT=dir for plots)"
	@echo "make proto   regenerate broker/v1 from protos/"
	@echo "make clean   remove the virtual environment and caches"

# ---------------------------------------------------------------- environment

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

# -------------------------------------------------------------- generated code

PROTOS := $(wildcard protos/broker/v1/*.proto)
# google/api/field_behavior.proto comes from googleapis-common-protos, whose
# .proto files sit beside its modules in site-packages.
PROTO_INCLUDE = $(shell $(BIN)/python -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))')
# protoc (pinned by grpcio-tools) and protoc-gen-mypy (pinned mypy-protobuf,
# found on PATH) write broker/v1/*_pb2.py, *_pb2_grpc.py and their .pyi stubs.
protoc = mkdir -p $(1)/broker/v1 && touch $(1)/broker/v1/__init__.py && \
	$(BIN)/python -m grpc_tools.protoc -I $(PROTO_INCLUDE) -I protos \
	--python_out=$(1) --grpc_python_out=$(1) --mypy_out=quiet:$(1) --mypy_grpc_out=quiet:$(1) $(PROTOS)

proto: venv
	rm -rf broker/v1
	@$(call protoc,.) >/dev/null

# Regenerates into a scratch directory and fails on any difference from the
# committed code.
proto-check: venv
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(call protoc,$$tmp) >/dev/null && \
	diff -r -x __pycache__ $$tmp/broker/v1 broker/v1 && echo "generated code is fresh"

# ---------------------------------------------------------------------- run

serve: venv
	$(BIN)/broker serve --config $(CONFIG)

# ------------------------------------------------------------------- checks

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && $(BUF) lint
	$(MAKE) --no-print-directory proto-check

# PLOT=dir also writes PNG plots there (matplotlib, in the dev extra).
bench: venv
	$(BIN)/python -m bench $(if $(PLOT),--plot $(PLOT))

# Retakes the README's screenshots into docs/screenshots, with the browser
# tests (needs Debian's chromium and chromium-driver).
screenshots: venv
	BROKER_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/browser

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache .mypy_cache *.egg-info
