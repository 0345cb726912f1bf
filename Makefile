# `make run` and `make test` do all the set-up on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= 2.14.1
TORCHVISION ?= 0.29.1

.PHONY: run test lint typecheck unit install ohif system-deps bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: this pair lies on the machine's disk (a CUDA build that runs on the CPU);
	# unpinned, pip would download several GB. torchvision is for MONAI's detection networks.
	$(BIN)/python -m pip install -q torch==$(TORCH) torchvision==$(TORCHVISION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP) ohif

# The prebuilt OHIF viewer (npm @ohif/app, version and SHA-512 pinned in the script) into the
# git-ignored build/ohif, which `pacs serve` serves at /viewer; fetched again only when the pin
# changes.
ohif:
	bash scripts/fetch-ohif.sh build/ohif

system-deps:
	bash scripts/install-system-deps.sh

# The archive on embedded defaults: SQLite index and blobs under ./var, DICOM on 127.0.0.1:11112.
run: install
	$(BIN)/pacs serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install system-deps
	$(BIN)/pytest

test: lint typecheck unit

bench: install system-deps
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var build/ohif tests/artifacts .pytest_cache .mypy_cache .ruff_cache
