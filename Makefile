# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Python 3.10+ is the only hard prerequisite (Node.js comes from PyPI when missing or too old).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup test demo bench emulator status cleanup dashboard browser screenshot lint clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is required (found " + sys.version.split()[0] + ")")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

# npm ci runs only when package*.json change (it wipes node_modules); the venv is only needed
# to run the installer, so it is an order-only prerequisite.
node_modules/.installed: package.json package-lock.json | $(VENV)/.installed
	$(PY) -m patterns.emulator --install
	@touch $@

# Style first (ruff check, ruff format --check): a failure stops before the tests run. Three
# workers (pytest-xdist), each with an Azurite of its own: most tests wait on processes and
# timeouts, so three overlap well on two cores.
test: lint browser
	$(PY) -m pytest -n 3

# The dashboard's browser tests (tests/test_dashboard.py) drive Debian's Chromium. Installed
# here when it is missing and this is Debian as root (as CI runs); anywhere else this says how
# to get one and the browser tests fail, saying the same: they never skip.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$DASHBOARD_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Chromium for the dashboard's browser tests (apt-get install chromium) ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "no Chromium: the dashboard's browser tests will fail. Install it (Debian: sudo apt-get install chromium)" \
			"or set DASHBOARD_CHROMIUM to a Chromium or Chrome executable"; \
	fi

demo: setup
	$(PY) -m patterns.demo

# Every script against the raw SDK ceiling, idle costs and latencies: one table, written to
# BENCHMARKS.md (~5 minutes; fresh in-memory Azurites). ARGS="--account": the configured account.
bench: setup
	$(PY) -m bench $(ARGS)

# Options in ARGS too, e.g. `make emulator ARGS="--port 10011"`.
emulator: setup
	$(PY) -m patterns.emulator $(ARGS)

# Queue tools; pass options in ARGS, e.g. `make status ARGS=--watch`, `make cleanup ARGS=--dry-run`.
status: setup
	$(PY) -m patterns.tools.status $(ARGS)

cleanup: setup
	$(PY) -m patterns.tools.cleanup $(ARGS)

# Every lesson's queues, poison and journeys in the browser: open the URL it prints.
dashboard: setup
	$(PY) -m patterns.tools.dashboard $(ARGS)

# docs/dashboard.png, the hub's picture of the dashboard, from a real run (~40 s).
screenshot: setup browser
	$(PY) tests/dashboard_screenshot.py docs/dashboard.png

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) node_modules .azurite .pytest_cache .ruff_cache *.egg-info
