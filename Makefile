# RobustKD-FM. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= fashion-mnist
CONFIG ?= configs/$(DATASET).yaml
# Optional: DATA_ROOT=folder, SHARDS=folder, METHOD=name, OVERRIDES="train.epochs=1 ..."
EXPERIMENT ?= fashion-mnist-baselines
SHARD_SET ?=
DATA_ROOT ?=
SHARDS ?=
METHOD ?=
OVERRIDES ?=
# make bench BENCH_ARGS=--smoke runs every section on tiny sizes (a check, not a measurement).
BENCH_ARGS ?=
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

export HF_HUB_OFFLINE := 1
export RAY_AUTH_MODE := disabled

ARGS := $(if $(SHARD_SET),shard_set=$(SHARD_SET)) $(if $(DATA_ROOT),dataset.root=$(DATA_ROOT)) $(if $(SHARDS),precompute.output=$(SHARDS)) $(OVERRIDES)
METHOD_ARGS := $(foreach m,$(METHOD),--method $(m))

.PHONY: help setup data test lint format demo precompute train evaluate experiment ood-preview bench bench-ood clean

help:
	@echo "make setup       create $(VENV) and install the package; install Fashion-MNIST if root"
	@echo "make demo        precompute, train lora/full/robustkd and evaluate on Fashion-MNIST"
	@echo "make test        run the test suite"
	@echo "make lint        check style (ruff); make format fixes it"
	@echo "make precompute  DATASET=name [DATA_ROOT=folder] [SHARDS=folder] [OVERRIDES=...]"
	@echo "                 DATASET = a configs/*.yaml name; layouts and licences: docs/datasets.md"
	@echo "make train       DATASET=name [METHOD=name] [SHARD_SET=id] [OVERRIDES=...]"
	@echo "                 SHARD_SET=<id> pulls the set from \$$ROBUSTKD_REMOTE when it is not cached"
	@echo "make evaluate    DATASET=name [OVERRIDES=...]"
	@echo "make experiment  EXPERIMENT=name   (configs/experiments/<name>.yaml: methods x seeds, report)"
	@echo "make ood-preview write docs/img/ood_preview.png; make bench-ood times every generator"
	@echo "make bench       precompute, training, storage, memory, OOD and scaling benchmarks"
	@echo "                 -> docs/BENCHMARKS.md + docs/benchmarks.json [BENCH_ARGS=--smoke]"

setup: $(VENV)/.installed data

# torchattacks 3.5.1 pins requests~=2.25.1, which it never imports, so it is installed
# without its dependencies.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools<82' wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps torchattacks==3.5.1
	touch $@

data:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing the Debian package dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'," \
		     "or pass DATA_ROOT=<folder with the IDX files> to precompute"; \
	fi

test: setup
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

precompute: setup
	$(BIN)/robustkd precompute --config $(CONFIG) $(ARGS)

train: setup
	$(BIN)/robustkd train --config $(CONFIG) $(METHOD_ARGS) $(ARGS)

evaluate: setup
	$(BIN)/robustkd evaluate --config $(CONFIG) $(ARGS)

experiment: setup
	$(BIN)/robustkd experiment --config configs/experiments/$(EXPERIMENT).yaml $(ARGS)

ood-preview: setup
	$(BIN)/robustkd ood preview --out docs/img/ood_preview.png --count 2 --size 64 \
		--generator 'augmentation:{"policy": "randaugment"}' \
		--generator 'augmentation:{"policy": "trivialaugment"}' \
		--generator 'augmentation:{"policy": "augmix"}'

bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

bench-ood: setup
	$(BIN)/python benchmarks/ood_generators.py

demo: setup
	@start=$$(date +%s); \
	$(BIN)/robustkd precompute --config configs/fashion-mnist.yaml $(OVERRIDES) && \
	$(BIN)/robustkd train --config configs/fashion-mnist.yaml $(OVERRIDES) && \
	$(BIN)/robustkd evaluate --config configs/fashion-mnist.yaml $(OVERRIDES) && \
	echo "demo finished in $$(( $$(date +%s) - start )) s"

clean:
	rm -rf runs shards
