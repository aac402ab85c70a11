# The two set-up commands of the quick start: `make demo` and `make test`.
#
# They install into the active virtual environment ($VIRTUAL_ENV) or, when none is active, into this
# project's own .venv, made here on first use: with uv where it is installed, else with python3's venv.
# (Debian's and Ubuntu's system Python refuse installs outside a virtual environment, PEP 668.)
# `make demo` installs what the demo needs; `make test` adds the test extras and a browser for the
# browser tests (tests/chromium.py). PYTHON=/path/to/python uses that interpreter's environment instead.
VENV_PYTHON := $(CURDIR)/.venv/bin/python
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
else
PYTHON ?= $(VENV_PYTHON)
endif
# torch 2.13.0 is pinned for the install: an unpinned torch can pull GBs of CUDA packages where a
# CPU build would do; any torch >= 2.11 already present is kept as it is.
TORCH ?= torch==2.13.0
UV := $(shell command -v uv 2>/dev/null)
# uv installs into the environment of $(PYTHON); pip needs that environment to have pip
PIP = $(if $(UV),$(UV) pip install --python "$(PYTHON)",$(PYTHON) -m pip install)

.PHONY: install install-test demo test bench

$(VENV_PYTHON):
	@if [ -n "$(UV)" ]; then \
		uv venv --seed --quiet .venv; \
	elif ! python3 -m venv .venv 2>/dev/null; then \
		rm -rf .venv; \
		echo "python3 cannot make a virtual environment here. On Debian or Ubuntu: sudo apt-get install python3-venv" >&2; \
		echo "(or install uv, or activate a virtual environment of your own), then run make again." >&2; \
		exit 1; \
	fi
	@echo "made the virtual environment $(CURDIR)/.venv (activate it with: source .venv/bin/activate)"

install: $(filter $(VENV_PYTHON),$(PYTHON))
	@echo "installing autoresearch into $$($(PYTHON) -c 'import sys; print(sys.prefix)')"
	@$(PYTHON) -c "import sys, torch; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 11))" 2>/dev/null \
		|| $(PIP) -q "$(TORCH)"
	@$(PIP) -q -e .

install-test: install
	@$(PIP) -q -e ".[test]"
	@$(PYTHON) tests/chromium.py --install

demo: install
	$(PYTHON) -m autoresearch demo

test: install-test
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/harness_overhead.py
