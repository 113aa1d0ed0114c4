# The two commands of the README:
#   make demo   set up, then open JupyterLab on the quickstart notebook (offline demo model)
#   make test   set up, then run every test (the browser tests use Debian's chromium)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup chromium demo test

setup: $(VENV)/.installed

# Installs torch and torchvision first (on this project's machines they come from local disk),
# then the workbench with its dev extras. Re-runs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e '.[notebook,dev]'
	touch $@

# The browser tests drive Debian's chromium through Playwright (browser downloads are impossible
# here). Installed with apt when missing; needs root (or set SUDO=sudo).
SUDO ?=
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) notebooks/quickstart.ipynb

test: setup chromium
	$(BIN)/python -m pytest
