# llsim: the two commands of the contract are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

.PHONY: demo test test-latest bench lock clean venv

# The venv installs the exact versions of $(LOCK) (what the registry served when it was refreshed),
# within the bounds of pyproject.toml.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m llsim.demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m llsim.bench

# Refresh the lock: the newest versions pyproject.toml's bounds allow, today (commit the result).
lock:
	rm -rf .venv-lock build
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet '.[dev]'
	{ echo "# llsim's locked dependencies: written by 'make lock' on $$(date -u +%F) with $$(.venv-lock/bin/python -V)."; \
	  echo "# Installed with 'pip install -c $(LOCK) -e .[dev]' by make; bounds live in pyproject.toml."; \
	  .venv-lock/bin/pip freeze --exclude llsim; } > $(LOCK)
	rm -rf .venv-lock build

# The test suite on the newest versions the bounds allow (no lock): tells whether `make lock` is safe.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet --upgrade pip
	.venv-latest/bin/pip install --quiet -e '.[dev]'
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .venv-lock build *.egg-info
