# `make run`  - set up a fresh Debian machine and start the daemon on the embedded defaults
# `make test` - set up and run every test (unit and integration with real peers)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= ./var
DEB_TEST_PKGS := sip-tester baresip-core iproute2
DEB_BASE_PKGS := python3-venv openssl

PROMPTS_DIR := appliance/media/voice

DEB_BENCH_PKGS := sip-tester kamailio iproute2
BENCH_ARGS ?=

.PHONY: run test bench venv deb-test deb-bench prompts native lint clean

$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || (apt-get update && apt-get install -y python3)
	@python3 -c 'import venv, ensurepip' 2>/dev/null || (apt-get update && apt-get install -y python3-venv)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fast,build]'
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

# The message path compiled by mypyc from the same sources (tools/build_native.py);
# remade when any of them changes. appliance/__init__.py runs the sources instead when
# the compiled modules are stale, so a forgotten rebuild is slow, never wrong.
NATIVE_SRCS := $(wildcard appliance/sip/*.py appliance/pbx/*.py) appliance/loglines.py tools/build_native.py
appliance/_native.txt: $(NATIVE_SRCS) | $(VENV)/.installed
	@command -v gcc >/dev/null && $(PY) -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
	  || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y gcc libc6-dev python3-dev)
	$(PY) tools/build_native.py

native: appliance/_native.txt

run: venv prompts native
	$(VENV)/bin/appliance run --data $(DATA)

test: venv deb-test prompts native
	$(VENV)/bin/ruff check appliance tests bench tools
	$(PY) -m pytest -q -p no:cacheprovider tests

# Benchmarks against Kamailio on this machine (not part of `make test`): docs/performance.md
deb-bench:
	@missing=""; for p in $(DEB_BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	  systemctl disable --now kamailio >/dev/null 2>&1 || true; \
	fi

bench: venv deb-bench native
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/media.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick,)

lint: venv
	$(VENV)/bin/ruff check appliance tests bench tools

clean:
	-$(PY) tools/build_native.py --clean
	rm -rf $(VENV) build *.egg-info
