# The two set-up commands of the README's quick start: `make demo` and `make test`.
# Both install autoresearch (editable) into the current Python environment first.
PYTHON ?= python3
# torch 2.13.0 is pinned for the install: an unpinned torch can pull GBs of CUDA packages where a
# CPU build would do; any torch >= 2.11 already present is kept as it is.
TORCH ?= torch==2.13.0

.PHONY: install demo test bench

install:
	@$(PYTHON) -c "import sys, torch; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 11))" 2>/dev/null \
		|| $(PYTHON) -m pip install -q "$(TORCH)"
	@$(PYTHON) -m pip install -q -e ".[dev]"

demo: install
	$(PYTHON) -m autoresearch demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/harness_overhead.py
