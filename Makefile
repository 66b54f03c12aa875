# Entry points of backmatch. `make report` runs the whole study on the default
# config; `make test` runs the test suite. Both create the virtual environment
# and prepare the data first.

PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= resources
CORES ?= all
CONFIG ?= config/config.yaml
# Offline copy of CIFAR in a compact form, with the script that unpacks it; used
# only when the data folder is incomplete and the file exists.
CIFAR_UNPACKER ?= ../shared/data/unpack_cifar.py

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: report test data venv lint constraints clean-results

report: venv data
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)

test: venv data
	$(BIN)/python -m pytest

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "backmatch needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[workflow,test]"
	touch $@

data: venv
	@if [ ! -f $(DATA_DIR)/cifar-10-batches-py/test_batch ] || [ ! -f $(DATA_DIR)/cifar-100-python/test ]; then \
		if [ -f "$(CIFAR_UNPACKER)" ]; then $(BIN)/python "$(CIFAR_UNPACKER)" $(DATA_DIR); fi; \
	fi
	$(BIN)/backmatch data --data-dir $(DATA_DIR)

lint: venv
	$(BIN)/snakemake --lint
	for config in config/*.yaml; do $(BIN)/snakemake --dry-run --quiet --configfile $$config || exit 1; done

constraints: venv
	{ sed -n '1,3p' requirements/constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt

clean-results:
	rm -rf results logs .snakemake
