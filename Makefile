# Two entry points on a fresh clone:
#   make demo   install, then materialize the whole offline demo graph and print a summary
#   make test   install what the tests need (system packages too when root), run pytest
#   make unit   the tests that need no server or system package (pytest -m "not integration")
#   make screenshots  retake the README's screenshots (docs/*.png) from the demo in chromium

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# System packages the test suite needs (Debian names). Installed by `make test` when
# run as root; otherwise listed so you can install them yourself.
# chromium drives the UI test; prometheus brings promtool, which checks the metrics file
# and the shipped alert rules.
APT_PACKAGES := pebble bind9 postgresql-15 chromium prometheus mariadb-server tinyproxy \
  rabbitmq-server

.PHONY: demo test unit lint dev screenshots system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

# The demo keeps its runs in .dagster_home so `make dev` shows them afterwards.
demo: $(VENV)/.installed
	mkdir -p .dagster_home && cp dagster.yaml .dagster_home/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/secure-etl demo

# The UI on http://127.0.0.1:$(PORT) (`make dev PORT=3001` when 3000 is taken).
PORT ?= 3000
dev: $(VENV)/.installed
	mkdir -p .dagster_home && cp dagster.yaml .dagster_home/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster dev -p $(PORT)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q '^install ok installed$$' \
	    || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "system packages: all present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "install these Debian packages first (as root):$$missing"; exit 1; fi

test: system-deps $(VENV)/.installed-test
	$(BIN)/ruff check secure_etl secure_etl_tests benchmarks
	$(BIN)/bandit -q -r secure_etl -lll   # no high-severity finding
	$(BIN)/pytest

# The README's screenshots (docs/*.png), retaken from the bundled demo by the browser test
# (chromium and dagster-webserver; a few minutes).
screenshots: $(VENV)/.installed-test
	SECURE_ETL_SCREENSHOTS=docs $(BIN)/pytest secure_etl_tests/defs/test_webserver.py -k demo

unit: $(VENV)/.installed-test
	$(BIN)/pytest -m "not integration"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check secure_etl secure_etl_tests benchmarks
	$(BIN)/ruff format --check secure_etl

clean:
	rm -rf $(VENV) .secure_etl .dagster_home .pytest_cache .ruff_cache
