# The two commands a newcomer needs:  make run   and   make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTO_OUT := hashsvc/v1/hashsvc_pb2.py

.PHONY: install proto run samples test lint format bench bench-short clean

install: $(STAMP) $(PROTO_OUT)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Generated gRPC code is built from protos/, never edited by hand.
proto $(PROTO_OUT): protos/hashsvc/v1/hashsvc.proto $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. \
		--pyi_out=. protos/hashsvc/v1/hashsvc.proto

# Runs the service on the embedded default store (./hashsvc.db), with the
# HTTP/JSON API beside gRPC; another address with `make run
# LISTEN=127.0.0.1:50052`, no HTTP API with `make run HTTP_LISTEN=`.
LISTEN ?= 127.0.0.1:50051
HTTP_LISTEN ?= 127.0.0.1:8080
run: install
	$(BIN)/hashsvc serve --listen $(LISTEN) $(if $(HTTP_LISTEN),--http-listen $(HTTP_LISTEN)) \
		--db sqlite:///hashsvc.db

# A few pictures for the README's first steps, made locally into ./samples.
samples: install
	$(BIN)/python scripts/make_samples.py samples

# The layers first (contracts in pyproject.toml), then the suite. A module's
# tests run on one worker (--dist loadfile): handed out one by one, both workers
# made each module's fixtures (test_video's media, test_access's servers) again.
test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check hashsvc hashsvc_testing hashdb loaders tests bench scripts
	$(BIN)/ruff format --check hashsvc hashsvc_testing hashdb loaders tests bench scripts

format: install
	$(BIN)/ruff format hashsvc hashsvc_testing hashdb loaders tests bench scripts

# Figures for issue notes: robustness per media kind (recall per transform, false
# matches), speed, hostile inputs, an idle server's memory.
bench: install
	$(BIN)/python bench/robustness.py
	$(BIN)/python bench/video.py
	$(BIN)/python bench/audio.py
	$(BIN)/python bench/pdf.py
	$(BIN)/python bench/speed.py
	$(BIN)/python bench/fuzz.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/loadtest.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/console.py
	$(BIN)/python bench/events.py
	$(BIN)/python bench/retro.py
	$(BIN)/python bench/retro_dask.py
	$(BIN)/python bench/exchange.py

# The same in a few minutes, as CI runs them.
bench-short: install
	$(BIN)/python bench/robustness.py --short
	$(BIN)/python bench/video.py --short
	$(BIN)/python bench/audio.py --short
	$(BIN)/python bench/pdf.py --short
	$(BIN)/python bench/speed.py --short
	$(BIN)/python bench/fuzz.py --requests 120 --store both
	$(BIN)/python bench/scale.py --short
	$(BIN)/python bench/load.py --short
	$(BIN)/python bench/exchange.py --short
	$(BIN)/python bench/loadtest.py --short
	$(BIN)/python bench/memory.py --short
	$(BIN)/python bench/console.py --short
	$(BIN)/python bench/events.py --short
	$(BIN)/python bench/retro.py --short
	$(BIN)/python bench/retro_dask.py --short

clean:
	rm -rf $(VENV) hashsvc/v1/*_pb2*.py* .pytest_cache
