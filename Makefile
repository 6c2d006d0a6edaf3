# keepbook — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keepbook-installed

.PHONY: demo test lab bench bench-quick stress fuzz warm venv clean test-browser

venv: $(STAMP)

# (Re)install when the project's metadata changes.  Editable install: the source tree is live.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/keepbook install --sys-prefix
	$(BIN)/keepbook warm
	touch $@

warm: venv
	$(BIN)/keepbook warm

demo: venv
	$(BIN)/keepbook demo

test: venv
	$(BIN)/python -m pytest -q -rs

lab: venv
	$(BIN)/python -m pip install -q -e '.[test,lab]'
	$(BIN)/jupyter lab --ip 127.0.0.1 notebooks/

bench: venv
	$(BIN)/keepbook bench --json build/bench.json

bench-quick: venv
	$(BIN)/keepbook bench --quick --json build/bench-quick.json

clean:
	rm -rf build .pytest_cache .hypothesis
