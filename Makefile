# One command vocabulary for people, hooks and CI: make demo | up | down | test | bench | lint.
# Every target installs what it needs first (the .venv stamp follows requirements.txt).
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(CURDIR)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := $(ROOT)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# --- the project's environment (README documents each variable) -------------------------------
STATE_DIR ?= $(ROOT)/.state
override STATE_DIR := $(abspath $(STATE_DIR))
AIRFLOW_PORT ?= 8080
MLFLOW_PORT ?= 5000
SERVING_PORT ?= 8000
export STATE_DIR AIRFLOW_PORT MLFLOW_PORT SERVING_PORT
export PYTHONPATH := $(ROOT)
# airflow standalone starts its components as `airflow ...` from PATH.
export PATH := $(BIN):$(PATH)
export PIPELINE_CONFIG ?= $(ROOT)/config/flights.yaml
export AIRFLOW_CONN_FLIGHTS_DB ?= sqlite:///$(STATE_DIR)/flights.db
export MLFLOW_TRACKING_URI ?= sqlite:///$(STATE_DIR)/mlflow/mlflow.db
export MLFLOW_SERVER_URL ?= http://127.0.0.1:$(MLFLOW_PORT)
export AIRFLOW_HOME := $(STATE_DIR)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(ROOT)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(ROOT)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__API__PORT := $(AIRFLOW_PORT)
# Tasks reach the API server here; it must follow the port or every task fails to connect.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL := http://127.0.0.1:$(AIRFLOW_PORT)/execution/
# Keep the default queue for the train task where no GPU worker runs (LocalExecutor).
export TRAIN_QUEUE ?= default
export TRAIN_POOL ?= gpu
# `make up` shows every DAG unpaused (the nightly run of today's window fails closed on the 2013 demo data).
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION ?= False

RUN := $(STATE_DIR)/run
# Without MLflow's job execution (8 more processes, ~2 GB; unused here): see examples/procs.py.
MLFLOW_SERVER := env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
  $(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
  --backend-store-uri $(MLFLOW_TRACKING_URI) --artifacts-destination $(STATE_DIR)/mlflow/artifacts
# $(call start,name,command): a detached process group, so `make down` stops it and all its children.
define start
	@mkdir -p $(RUN) $(STATE_DIR)/logs
	@setsid nohup $(2) > $(STATE_DIR)/logs/$(1).log 2>&1 < /dev/null & echo $$! > $(RUN)/$(1).pid
	@echo "started $(1) (log: $(STATE_DIR)/logs/$(1).log)"
endef
DAG ?= train_and_deploy
DATE ?= 2013-06-30
CONF ?= {}
DEMO_DATES ?= 2013-06-30 2013-07-30

.PHONY: help venv demo up down test test-fast bench bench-extract bench-train bench-serve bench-icount lint seed dags-test airflow serve clean replay

help:
	@echo "make demo    run the pipeline twice on the demo data, serve the champion, ask it for a prediction"
	@echo "make up      Airflow UI :$(AIRFLOW_PORT), MLflow UI :$(MLFLOW_PORT), serving :$(SERVING_PORT); make down stops them"
	@echo "make test    the whole test suite          make bench   benchmarks (ratios against baselines)"
	@echo "make bench-extract   PostgreSQL extraction benchmark: ours vs pandas vs the COPY ceiling"
	@echo "make bench-train     training epoch: real input pipeline vs tensors preloaded (CUDA too when present)"
	@echo "make bench-serve     model server vs mlflow models serve vs a raw-ASGI hello world (wrk if installed)"
	@echo "make bench-icount    model server's instructions per request, this tree vs BASE=<git rev> (valgrind; BATCH=1: 1000-row requests)"
	@echo "make replay  after make demo: later months of 2013 through serving, monitor_production, retrain on drift"
	@echo "make seed | dags-test DAG=.. DATE=.. | airflow CMD='..' | serve | lint"

venv: $(STAMP)
$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	@touch $@

$(AIRFLOW_HOME)/.migrated: $(STAMP)
	@mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (tail -20 $(AIRFLOW_HOME)/migrate.log; exit 1)
	@touch $@

# The scheduler never schedules a task whose pool does not exist: the train task's pool, one slot per GPU.
$(AIRFLOW_HOME)/.pool-$(TRAIN_POOL): $(AIRFLOW_HOME)/.migrated
	$(BIN)/airflow pools set $(TRAIN_POOL) 1 "Training jobs: one per GPU" > $(AIRFLOW_HOME)/pool.log 2>&1 \
	  || (cat $(AIRFLOW_HOME)/pool.log; exit 1)
	@touch $@

seed: venv
	$(BIN)/python -m tasks.seed

dags-test: venv $(AIRFLOW_HOME)/.migrated
	$(BIN)/airflow dags test $(DAG) $(DATE) --conf '$(CONF)'

airflow: venv $(AIRFLOW_HOME)/.migrated
	$(BIN)/airflow $(CMD)

serve: venv
	$(BIN)/python -m serving

demo: venv seed $(AIRFLOW_HOME)/.migrated
	@for d in $(DEMO_DATES); do \
	  echo "=== train_and_deploy for the window ending $$d"; \
	  $(BIN)/python examples/demo_run.py $$d || exit 1; \
	done
	$(BIN)/python examples/serve_and_predict.py

# The self-learning loop: replay Aug-Dec 2013 through serving, monitor each month, retrain when asked to.
REPLAY_ARGS ?= --retrain
replay: venv seed $(AIRFLOW_HOME)/.migrated
	$(BIN)/python examples/replay.py $(REPLAY_ARGS)

up: venv seed $(AIRFLOW_HOME)/.pool-$(TRAIN_POOL)
	$(call start,airflow,$(BIN)/airflow standalone)
	$(call start,mlflow,$(MLFLOW_SERVER))
	$(call start,serving,$(BIN)/python -m serving)
	@$(BIN)/python examples/wait_up.py

down:
	@for p in $(RUN)/*.pid; do \
	  [ -f "$$p" ] || continue; pg=$$(cat $$p); name=$$(basename $$p .pid); \
	  if kill -- -$$pg 2>/dev/null; then \
	    for _ in $$(seq 30); do kill -0 -- -$$pg 2>/dev/null || break; sleep 1; done; \
	    kill -9 -- -$$pg 2>/dev/null; echo "stopped $$name"; \
	  fi; rm -f $$p; \
	done; true

test: venv
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

# bench: SQLite then PostgreSQL; bench-extract: only the PostgreSQL one (needs a server: BENCH_PG_URL,
# default the local postgresql://root@127.0.0.1:5432/test; builds ~8 M rows in schema `bench` once).
bench: venv
	$(BIN)/python -m bench

bench-extract: venv
	$(BIN)/python -m bench.extract

bench-train: venv
	$(BIN)/python -m bench.train

bench-serve: venv
	$(BIN)/python -m bench.serve

# The server's work per request in instructions (valgrind), this tree against BASE (default HEAD):
# resolves 1 % where the timed runs of bench-serve drift by 20 %.
bench-icount: venv
	$(BIN)/python -m bench.icount --base $(or $(BASE),HEAD) $(if $(BATCH),--batch)

lint: venv
	$(BIN)/ruff check dags plugins tasks serving tests bench examples
	$(BIN)/mypy tasks serving

clean: down
	rm -rf $(STATE_DIR)
