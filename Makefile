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

.PHONY: setup repro smoke kanji accuracy gate reference test lint ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the CPU build; any other torch spec pulls CUDA packages
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

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

test: setup           ## lint, type-check and the test suite (includes dvc repro of the smoke profile)
	$(BIN)/ruff check pipeline stages tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

ui: setup             ## the MLflow UI on the default store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath .)/mlflow.db

clean:
	rm -rf build
