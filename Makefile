# One-shot classification with generative augmentation. `make repro` runs the pipeline, `make test` the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# A relative OMNIGLOT_DIR would break in DVC's temporary experiment copies: make it absolute.
ifneq ($(OMNIGLOT_DIR),)
export OMNIGLOT_DIR := $(abspath $(OMNIGLOT_DIR))
endif
# The quick profiles that `make smoke` runs, each in build/<profile>.
QUICK ?= smoke kanji-smoke
# Each run that has results, as `metrics-file:profile`: the default profile's here, each other profile's in its folder.
GATED = $(if $(wildcard reports/metrics.json),reports/metrics.json:) \
        $(foreach p,$(QUICK) kanji accuracy,$(if $(wildcard build/$(p)/reports/metrics.json),build/$(p)/reports/metrics.json:$(p)))
TRACKING = MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(abspath .)/mlflow.db}

.PHONY: setup system lock repro smoke kanji accuracy gate reference test lint exps ui server clean

setup: $(VENV)/.installed

# requirements.lock pins every package pyproject.toml pulls in, transitively, each with the sha256 of its files
# (pip-compile --generate-hashes): pip installs those bytes or refuses, the same on every machine until `make lock`
# moves them on purpose. torch is the local CPU build (2.13.0+cpu); the project itself goes in last, as it is.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

LOCK ?=               # pip-compile's own options: --upgrade moves every pin, -P NAME one
lock: setup           ## re-resolve pyproject.toml, keeping every pin it still allows, into requirements.lock with hashes
	$(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --extra dev --no-emit-index-url \
	    --no-emit-find-links $(LOCK) -o requirements.lock pyproject.toml

repro: setup          ## the full pipeline, default profile
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

smoke: setup          ## the whole pipeline on each quick profile ($(QUICK)), each in build/<profile>
	@set -e; for p in $(QUICK); do dir=build/$$p; \
	    $(BIN)/python -m pipeline.profile $$p $$dir; \
	    (cd $$dir && $(TRACKING) $(BIN)/dvc repro && $(BIN)/dvc metrics show); \
	done

kanji: setup          ## the whole pipeline on the kanji profile (printed kanji, the class-folder loader), in build/kanji
	$(BIN)/python -m pipeline.profile kanji build/kanji
	cd build/kanji && $(TRACKING) $(BIN)/dvc repro
	cd build/kanji && $(BIN)/dvc metrics show

accuracy: setup       ## the accuracy profile (the model to ship: the levers that paid), in build/accuracy
	$(BIN)/python -m pipeline.profile accuracy build/accuracy
	cd build/accuracy && $(TRACKING) $(BIN)/dvc repro
	cd build/accuracy && $(BIN)/dvc metrics show

gate: setup           ## each run's metrics against its profile's floors and committed reference; writes reports/report.md
	@status=0; for run in $(GATED); do \
	    metrics=$${run%:*}; profile=$${run##*:}; \
	    $(BIN)/python -m stages.gate --metrics $$metrics $${profile:+--profile $$profile} \
	        --report $$(dirname $$metrics)/report.md || status=1; echo; \
	done; exit $$status

reference: setup      ## on purpose: rewrite each profile's references/*.json from its current run; commit the diff
	@for run in $(GATED); do \
	    metrics=$${run%:*}; profile=$${run##*:}; \
	    $(BIN)/python -m stages.gate --metrics $$metrics $${profile:+--profile $$profile} --write-reference || exit 1; \
	done

system:               ## the Debian packages the tests drive (Chromium, PostgreSQL): root or sudo, once
	.ci/system-packages.sh

test: setup system    ## lint, type-check and the test suite (includes dvc repro of the smoke profile)
	$(BIN)/ruff check pipeline stages tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

# `dvc exp show --only-changed` without the columns no one reads side by side: dependency hashes (a path, no
# `file:` key), params.yaml's hash, Created, and every headline metric but acc_20way (`dvc exp diff <exp>` has them
# all, a row each). Left: the experiments, the params they changed and each changed variant's acc_20way.
EXPS_DROP = [^:]*/[^:]*$$|params\.yaml$$|Created$$|.*:(?!acc_20way$$)|(delta_vs|acc)_(?!20way$$)\w+$$
exps:                 ## the experiments side by side: changed params and each changed variant's acc_20way
	dvc exp show --only-changed --drop '$(EXPS_DROP)' $(ARGS)

ui: setup             ## the MLflow UI on the default store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath .)/mlflow.db

# A team's tracking server on loopback: PostgreSQL (its own cluster in build/server) + `mlflow server` with
# proxied artifacts; log to it with MLFLOW_TRACKING_URI=http://127.0.0.1:$(SERVER_PORT). Ctrl-C stops both.
SERVER_PORT ?= 5000
server: setup system  ## MLflow tracking server on PostgreSQL, artifacts proxied, on 127.0.0.1:$(SERVER_PORT)
	$(BIN)/python -m pipeline.server --folder build/server --port $(SERVER_PORT)

clean:
	rm -rf build
