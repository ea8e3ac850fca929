# `make run`  - set up a fresh Debian machine and start the daemon on the embedded defaults
# `make test` - set up and run every test (unit and integration with real peers)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= ./var
DEB_TEST_PKGS := sip-tester baresip-core
DEB_BASE_PKGS := python3-venv openssl

PROMPTS_DIR := appliance/media/voice

DEB_BENCH_PKGS := sip-tester kamailio
BENCH_ARGS ?=

.PHONY: run test bench venv deb-test deb-bench prompts lint clean

$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || (apt-get update && apt-get install -y python3)
	@python3 -c 'import venv, ensurepip' 2>/dev/null || (apt-get update && apt-get install -y python3-venv)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fast]'
	touch $@

venv: $(VENV)/.installed

# Debian packages for the real test peers; apt-get update only when something is missing.
deb-test:
	@missing=""; for p in $(DEB_TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

# Voice prompts (English, Chinese) spoken by Debian's espeak-ng into $(PROMPTS_DIR)/<lang>/<name>.wav
# (git-ignored); remade when the texts in appliance/media/prompts.py change.
$(PROMPTS_DIR)/.made: appliance/media/prompts.py | $(VENV)/.installed
	@command -v espeak-ng >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y espeak-ng)
	$(PY) -m appliance.media.prompts generate --force $(PROMPTS_DIR)
	touch $@

prompts: $(PROMPTS_DIR)/.made

run: venv prompts
	$(VENV)/bin/appliance run --data $(DATA)

test: venv deb-test prompts
	$(VENV)/bin/ruff check appliance tests bench
	$(PY) -m pytest -q -p no:cacheprovider tests

# Benchmarks against Kamailio on this machine (not part of `make test`): docs/performance.md
deb-bench:
	@missing=""; for p in $(DEB_BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	  systemctl disable --now kamailio >/dev/null 2>&1 || true; \
	fi

bench: venv deb-bench
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/media.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick,)

lint: venv
	$(VENV)/bin/ruff check appliance tests bench

clean:
	rm -rf $(VENV) build *.egg-info
