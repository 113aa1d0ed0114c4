# The two commands of the README:
#   make demo   set up, then chat with the built-in demo model about an example image
#   make test   set up, then run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test

setup: $(VENV)/.installed

# Installs torch and torchvision first (on this project's machines they come from local disk),
# then the workbench with its dev extras. Re-runs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/workbench infer --images examples/shapes.png --stream --draw-boxes answer.png \
		--query "<image>Please provide the bounding box coordinate of the region this sentence describes: <ref>the red circle</ref>"
	$(BIN)/workbench infer

test: setup
	$(BIN)/python -m pytest
