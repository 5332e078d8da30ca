# manallm: `make run` serves the gateway (WEB_CONCURRENCY daphne processes on one socket,
# manallm/serve.py), `make test` runs the suite. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3025
# Metrics of every gateway process on this machine are aggregated from here.
export PROMETHEUS_MULTIPROC_DIR ?= $(CURDIR)/.prometheus

.PHONY: run test bench fake venv clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	rm -rf $(PROMETHEUS_MULTIPROC_DIR) && mkdir -p $(PROMETHEUS_MULTIPROC_DIR)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py import_aliases_if_empty
	@echo "manallm serving on http://0.0.0.0:$(PORT) with $${WEB_CONCURRENCY:-1} process(es)  (OpenAI API under /v1, admin at /admin/, metrics at /metrics)"
	exec $(BIN)/python -m manallm.serve --host 0.0.0.0 --port $(PORT)

test: $(STAMP)
	env -u PROMETHEUS_MULTIPROC_DIR $(BIN)/python -m pytest

bench: $(STAMP)
	env -u PROMETHEUS_MULTIPROC_DIR $(BIN)/python bench/run.py
	env -u PROMETHEUS_MULTIPROC_DIR $(BIN)/python bench/consumer_checks.py --redis-server

# A fake upstream (Ollama, OpenAI-compatible clouds, Gemini) to try the gateway with no GPU.
fake: $(STAMP)
	$(BIN)/python fixtures/fake_upstream.py --port $${FAKE_PORT:-8099}

clean:
	rm -rf $(VENV)
