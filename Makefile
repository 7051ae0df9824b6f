# Two commands a new user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint types unit mosquitto chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Strict editable install: a link tree mypy can follow (design.md). Re-run when pyproject changes
# or a module is added, so it runs before every test.
install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]" --config-settings editable_mode=strict

# The paper's E1 on the MgAgSn seed layer, 250 cycles (~500 h) in virtual time, compared with
# the paper, written up as an HTML report; then the whole protocol library is checked and planned.
demo: install
	rm -f demo.db demo.db-wal demo.db-shm
	$(BIN)/cyclerd run protocols/library/plating_stripping.yaml --sim mgagsn --seed 1 --db demo.db
	$(BIN)/cyclerd report 1 --db demo.db --output demo-report.html
	$(BIN)/cyclerd validate protocols/library/*.yaml > demo-plans.txt
	@echo "the run's report: demo-report.html; plans of every library protocol: demo-plans.txt"

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || command -v /usr/sbin/mosquitto >/dev/null 2>&1 || \
	  { echo "installing mosquitto"; (apt-get update -qq && apt-get install -y -qq mosquitto) || \
	    (sudo apt-get update -qq && sudo apt-get install -y -qq mosquitto); }

# The report test opens an HTML report in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { echo "installing chromium"; (apt-get update -qq && apt-get install -y -qq chromium) || \
	    (sudo apt-get update -qq && sudo apt-get install -y -qq chromium); }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy -p cyclerd

unit: install mosquitto chromium
	$(BIN)/pytest -q

test: lint types unit

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
