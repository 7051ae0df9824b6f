# Two commands a new user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo dashboard test install lint types unit mosquitto chromium clean

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

# A simulated lab to watch (docs/demo-lab.toml): four E1 runs paced at an hour of test time a
# second, the dashboard at http://127.0.0.1:8080/; log in as demo / demo-password to control.
# Ctrl-C stops the lab (every cell made safe, as for a real one).
dashboard: install
	rm -rf demo-lab && mkdir demo-lab && cp docs/demo-lab.toml demo-lab/lab.toml
	CYCLERD_WEB_PASSWORD=demo-password $(BIN)/cyclerd web user add demo --role operator --users demo-lab/users.toml
	$(BIN)/cyclerd serve --config demo-lab/lab.toml & \
	  until [ -f demo-lab/lab.db ]; do sleep 0.2; done; \
	  for i in 1 2 3 4; do \
	    $(BIN)/cyclerd submit protocols/library/plating_stripping.yaml --channel ch$$i --config demo-lab/lab.toml; \
	  done; \
	  echo "the lab's dashboard: http://127.0.0.1:8080/ (Ctrl-C stops the lab)"; wait

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

# In one process by default: many tests run emulators paced against the wall clock, and on two
# cores a second worker starves them (a poll late by 50 ms is 90 s of cell time at 1800x).
# With cores to spare, `make test TEST_WORKERS=auto` runs a test file per core (pytest-xdist).
TEST_WORKERS ?= 0
unit: install mosquitto chromium
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test: lint types unit

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
