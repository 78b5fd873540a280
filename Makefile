# llsim: the two commands of the contract are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

.PHONY: demo test test-latest bench figures lock clean venv

# The venv installs the exact versions of $(LOCK) (what the registry served when it was refreshed),
# within the bounds of pyproject.toml.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The test suite also covers `llsim sweep --backend ray`: the extra llsim[ray], locked like the rest.
RAY_STAMP := $(VENV)/.installed-ray
$(RAY_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev,ray]'
	touch $(RAY_STAMP)

demo: $(STAMP)
	$(BIN)/python -m llsim.demo

# The suite on TEST_WORKERS processes (pytest-xdist; most tests use one core, many wait on worker
# processes), then the tests marked serial alone: they compare timings measured at different
# moments, which other tests running beside them would skew.
TEST_WORKERS ?= 2
test: $(RAY_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not serial"
	$(BIN)/python -m pytest -m serial

bench: $(STAMP)
	$(BIN)/python -m llsim.bench

# The paper-style figures (README, "Figures"): the benches write results/*.csv, the sweeps write
# runs/figures/*; `llsim plot figures` draws results/figures/*.png|pdf (+ the numbers drawn, .csv)
# from those files only. About 10 minutes on 2 cores; run it on a quiet machine (timing benches).
figures: $(STAMP)
	$(BIN)/llsim bench paper
	$(BIN)/llsim bench solve_time
	$(BIN)/llsim bench costmodel_accuracy
	$(BIN)/llsim bench fidelity
	$(BIN)/llsim sweep balance-throttle --grid balancer.enabled=true,false --jobs 2 --no-timeline --out runs/figures/balance-throttle
	$(BIN)/llsim sweep balance-background --grid balancer.enabled=true,false --jobs 2 --no-timeline --out runs/figures/balance-background
	$(BIN)/llsim sweep lingualinked-bloom-3b --grid allocation.strategy=milp,uniform,memory,lingualinked,halda,pipeedge,greedy --set workload.concurrency=4 --set workload.requests=8 --set allocation.objective=throughput --set network.rtt_sampling=expected --jobs 2 --no-timeline --out runs/figures/allocation
	$(BIN)/llsim sweep scenarios/sweeps/phones.yaml --zip devices.0.count=1,2,3,4 --zip devices.1.count=1,2,3,4 --grid allocation.strategy=milp,uniform,memory,lingualinked --seeds 1-4 --jobs 2 --no-timeline --out runs/figures/phones
	$(BIN)/llsim sweep scenarios/sweeps/rssi.yaml --grid network.default_rssi_dbm=-50,-55,-60,-65,-70,-73,-76 --grid allocation.strategy=milp,uniform,memory,lingualinked --seeds 1-3 --jobs 2 --no-timeline --out runs/figures/rssi
	$(BIN)/llsim plot figures

# Refresh the lock: the newest versions pyproject.toml's bounds allow, today (commit the result).
lock:
	rm -rf .venv-lock build
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet '.[dev,ray]'
	{ echo "# llsim's locked dependencies: written by 'make lock' on $$(date -u +%F) with $$(.venv-lock/bin/python -V)."; \
	  echo "# Installed with 'pip install -c $(LOCK) -e .[dev]' (and .[dev,ray] for make test) by make; bounds live in pyproject.toml."; \
	  .venv-lock/bin/pip freeze --exclude llsim; } > $(LOCK)
	rm -rf .venv-lock build

# The test suite on the newest versions the bounds allow (no lock): tells whether `make lock` is safe.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet --upgrade pip
	.venv-latest/bin/pip install --quiet -e '.[dev,ray]'
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .venv-lock build *.egg-info
