# The commands a newcomer needs: `make test`, `make run` and `make examples`. Each builds the
# virtual environment from setup.cfg on first use.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: test test-deps run examples bench bench-http bench-batch lint clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,redis]'
	touch $@

# What the tests need besides Python: redis-server and Chromium, installed from Debian when
# missing (as root), else named. The redis tests start redis servers of their own.
test-deps:
	@sh tests/setup-machine.sh

test: test-deps $(BIN)/.installed
	$(BIN)/python -m pytest

# The example server (examples/app.py) on riverapi's default address, with its access log; its
# models are kept in examples/instance/. Try it with `make examples` from another shell, or one
# example with `.venv/bin/python examples/regression/run.py`.
run: $(BIN)/.installed
	$(BIN)/gunicorn --bind 127.0.0.1:8000 --workers 1 --threads 8 --access-logfile - examples.app:app

# Every example against the server of `make run`, or against one started for the run.
examples: $(BIN)/.installed
	$(BIN)/python examples/run_all.py

bench: $(BIN)/.installed
	$(BIN)/python bench/inprocess.py

# The HTTP benchmark: every configuration and its ceiling, interleaved over rounds (about ten
# minutes with the defaults; options in BENCH_ARGS, e.g. BENCH_ARGS="--rounds 5").
bench-http: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/served.py $(BENCH_ARGS)

# The batch routes over HTTP against river's own loop, interleaved over rounds (about four
# minutes with the defaults; options in BENCH_ARGS, e.g. BENCH_ARGS="--servers gunicorn granian").
bench-batch: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/batch.py $(BENCH_ARGS)

lint: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check flask_river_ml tests bench
	$(BIN)/mypy flask_river_ml

clean:
	rm -rf $(VENV) build *.egg-info
