# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := mpfl edge_node coordinator export hardware apps

EMULATORS := $(VENV)/emulators
EMULATORS_STAMP := $(EMULATORS)/.ready

.PHONY: demo test lint install mosquitto emulators clean

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned to the CPU build on local disk; any other spec pulls a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || \
	  { echo "installing mosquitto (integration tests start their own broker)"; \
	    apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; }

# qemu-user, an arm64 Python sysroot and aarch64 wheels: the export tests run every export
# on an emulated Raspberry Pi 4 core and on an AVX2-only x86 (tests/test_export_emulated.py).
$(EMULATORS_STAMP): tests/setup_export_emulators.sh | $(STAMP)
	sh tests/setup_export_emulators.sh $(abspath $(EMULATORS)) $(abspath $(PY))
	touch $(EMULATORS_STAMP)

emulators: $(EMULATORS_STAMP)

demo: $(STAMP)
	$(VENV)/bin/mpfl demo

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PACKAGES) tests benchmarks
	$(VENV)/bin/mypy $(PACKAGES)
	$(VENV)/bin/lint-imports

test: $(STAMP) mosquitto emulators lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
