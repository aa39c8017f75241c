# invoiceflow: `make demo` runs the whole pipeline offline; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.8
# uv from PATH, or bootstrapped with pip into .tools/ when missing.
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

.PHONY: install demo test lint format clean tesseract

install: .venv/.installed

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

.venv/.installed: pyproject.toml uv.lock $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen --extra s3 --python $(PYTHON)
	touch $@

# The optional Tesseract OCR backend (INVOICEFLOW_OCR_BACKEND=tesseract): Debian packages, one per language.
TESSERACT_PACKAGES := tesseract-ocr $(addprefix tesseract-ocr-,eng deu fra spa nld ita)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tesseract:
	@command -v tesseract >/dev/null && [ "$$(tesseract --list-langs 2>/dev/null | grep -cxE 'eng|deu|fra|spa|nld|ita')" = 6 ] \
	  || $(SUDO) apt-get install -y -q $(TESSERACT_PACKAGES) \
	  || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $(TESSERACT_PACKAGES))

demo: install
	.venv/bin/invoiceflow demo

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: lint
	.venv/bin/pytest

format: install
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

clean:
	rm -rf .venv .tools .invoiceflow .pytest_cache .ruff_cache
