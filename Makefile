# keepbook — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keepbook-installed

.PHONY: demo test lab bench bench-quick stress fuzz warm venv clean test-browser image

venv: $(STAMP)

# (Re)install when the project's metadata changes.  Editable install: the source tree is live.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,hub]'
	$(BIN)/keepbook install --sys-prefix
	$(BIN)/keepbook warm
	touch $@

warm: venv
	$(BIN)/keepbook warm

demo: venv
	$(BIN)/keepbook demo

# The Keep image (kernel + initramfs) that kvm/snp/tdx Keeps boot: built from pinned Debian
# packages and wheels (downloads cached in ~/.cache/keepbook/image-inputs), in set-up and never
# inside a test.  Up to date in a second; where it cannot be built (no apt), the VM tests skip.
image: venv
	$(BIN)/keepbook image build --optional

test: venv image
	$(BIN)/python -m pytest -q -rs

lab: venv
	$(BIN)/python -m pip install -q -e '.[test,lab]'
	$(BIN)/jupyter lab --ip 127.0.0.1 notebooks/

# `make bench`: every cost beside its baseline (< 15 min), table on stdout, JSON in build/.
# `make bench QUICK=1` (or `make bench-quick`): fewer repetitions, < 2 min.  (GNU make rejects
# options it does not know, so `make bench --quick` cannot reach the recipe; use QUICK=1.)
QUICK_ON := $(filter-out 0 no false,$(QUICK))
bench: venv
	$(BIN)/keepbook bench $(if $(QUICK_ON),--quick) --json build/bench$(if $(QUICK_ON),-quick).json

bench-quick: venv
	$(BIN)/keepbook bench --quick --json build/bench-quick.json

# A real browser: Debian's chromium (apt, optional for everything else), JupyterLab and
# Playwright from PyPI; Playwright drives the system Chromium, it downloads no browser.
test-browser: venv
	@command -v chromium >/dev/null || { echo "installing Debian's chromium (needs root and apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(BIN)/python -m pip install -q -e '.[test,browser]'
	$(BIN)/python -m pytest -q -rs tests/browser

# Hostile world (issue 8).  fuzz: atheris harnesses, >= 10^5 inputs (tools/fuzz/run.py).
# stress: fuzz + malicious manager + faults + resource abuse + 20 concurrent kernels, one table.
fuzz: venv
	$(BIN)/python -m pip install -q -e '.[test,fuzz]' || echo "atheris unavailable: random-bytes fallback"
	$(BIN)/python tools/fuzz/run.py --json build/fuzz/summary.json

stress: venv
	$(BIN)/python -m pip install -q -e '.[test,fuzz]' || echo "atheris unavailable: random-bytes fallback"
	$(BIN)/python tools/stress.py

clean:
	rm -rf build .pytest_cache .hypothesis
