# The project's commands. `make help` lists them; each target creates the virtual environment it needs.
# Only Python >= 3.10 is assumed (PYTHON=python3.11 make ... to choose one).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch is installed first and pinned: an unpinned `pip install torch` pulls a multi-GB CUDA build on a
# Linux machine. Override for a GPU machine, e.g. make venv TORCH_SPEC="torch==2.11.0".
TORCH_SPEC ?= torch==2.13.0
PRESET ?= smoke
STAMP := $(VENV)/.mstlib-installed
MATHJAX := book/_static/vendor/mathjax/es5/tex-svg.js
JB_FLAGS ?= -W --keep-going

.DEFAULT_GOAL := help
.PHONY: help venv book screenshots test sync check-pairs reproduce clean distclean

help: ## list the targets with a one-line description
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## create .venv: pinned CPU PyTorch first, then mstlib editable with the book and dev tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "mstlib needs Python >= 3.10, this is " + sys.version.split()[0] + "; run e.g. make PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

$(MATHJAX): tools/fetch_mathjax.py
	$(PYTHON) tools/fetch_mathjax.py

book: $(STAMP) $(MATHJAX) ## build the book into _build/html (offline, notebooks not executed, warnings are errors)
	$(BIN)/jupyter-book build . --config _config.yml --toc book/_toc.yml $(JB_FLAGS)
	@echo "open _build/html/index.html"

screenshots: book ## picture every page of the built book at 1400 px (headless Chromium) into book/screenshots/; fails when a table or output is wider than the page
	$(BIN)/python tools/screenshots.py

test: $(STAMP) $(MATHJAX) ## run the test suite (library, notebooks under papermill, offline book build)
	$(BIN)/python -m pytest

sync: $(STAMP) ## bring every notebooks/*.py and its .ipynb pair in sync (newer file wins), then check them
	$(BIN)/python tools/check_pairs.py --sync

check-pairs: $(STAMP) ## check that every notebook pair is in sync and has a kernelspec
	$(BIN)/python tools/check_pairs.py

reproduce: $(STAMP) ## execute every notebook with papermill: make reproduce PRESET=smoke|mini|paper
	$(BIN)/python tools/reproduce.py --preset $(PRESET) $(REPRODUCE_FLAGS)

clean: ## remove the built book and smoke-run outputs (keeps .venv and the vendored MathJax)
	rm -rf _build results-smoke .pytest_cache

distclean: clean ## also remove .venv and the vendored MathJax
	rm -rf $(VENV) book/_static/vendor
