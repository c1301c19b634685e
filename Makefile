# semdpo: the two commands a new user runs on a fresh clone.
#   make demo   install into .venv, run the whole pipeline on the offline default
#   make test   install into .venv (with test extras), lint (ruff), run the test suite
#   make env    write docker/.env, the Docker stack's random credentials (FORCE=1 replaces it)
PYTHON ?= python3.11
VENV   ?= .venv
PIP    := $(VENV)/bin/pip

.PHONY: install demo test env clean-store

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e '.[test]'
	touch $@

# The scorers' original packages, for the equivalence tests only (tests/originals.py): their pins
# cannot live beside today's stack, so they come without dependencies and never run in the pipeline.
$(VENV)/.originals: $(VENV)/.installed
	$(PIP) install --quiet --no-deps image-reward==1.5 hpsv2==1.2.0
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/semdpo run

test: install $(VENV)/.originals
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

# docker/compose.yaml refuses to start without it; never overwrites an existing one unless FORCE=1
env:
	python3 docker/make_env.py $(if $(FORCE),--force)

clean-store:
	rm -rf $${SEMDPO_STORE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/semdpo/store}
