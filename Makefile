# The README's commands. `make demo` sets up and opens the dashboard; `make test` sets up, lints (ruff) and runs
# the tests. `make test-fast` is the inner loop: lint and the unit and AppTest tests (pytest.ini's
# markers: no browser, train, ddp, subprocess or integration test), without setup.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-dev lint test test-fast test-all demo train bench bench-quick results-table

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

lint: setup-dev
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q

test-fast:
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not browser and not train and not ddp and not subprocess and not integration"

test-all: lint
	$(PY) -m pytest -q --run-slow

demo: setup
	$(PY) -m streamlit run dashboard/Home.py

train: setup
	$(PY) -m trainer train --config configs/lineup.yaml --resume

results-table:
	$(PY) -m trainer report --run artifacts/kermany-lineup --update README.md
	$(PY) -m trainer report --run artifacts/kermany-robust --update README.md

bench: setup-dev
	$(PY) -m bench

bench-quick: setup-dev
	$(PY) -m bench --quick
