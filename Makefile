# sam2-kubeflow: developer entry points. `make setup` then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup test test-all lint format

# Creates the venv and installs the project (editable) with its dev, local (S3 server) and serve extras;
# safe to rerun.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[dev,local,serve]'
	@touch $@

# The fast suite: slow tests are excluded by pyproject's addopts; gpu tests skip without CUDA.
test: setup
	$(PY) -m pytest

# Everything, slow tests included (gpu tests skip without CUDA).
test-all: setup
	$(PY) -m pytest -m ''

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Local S3 server (SeaweedFS) with a key pair kept in .local/s3.env; idempotent. (DATA-PREP)
# S3_PORT: the port to serve S3 on (default: the one in .local/s3.env, else 8333), e.g. when 8333 is taken.
S3_PORT ?=
.PHONY: services-up-s3 services-down-s3
services-up-s3:
	$(PY) -m sam2.tools.s3_server up $(if $(S3_PORT),--port $(S3_PORT))

services-down-s3:
	$(PY) -m sam2.tools.s3_server down

.PHONY: services-up services-down
services-up: services-up-s3
services-down: services-down-s3

# Kubeflow pipeline (PIPELINE). DATASET=demo|mose. Without KFP_HOST `pipeline-run` runs every step on this
# machine through kfp.local (starting the local S3 server; MLflow on SQLite in .local/mlflow); with
# KFP_HOST it submits to that cluster and waits. DATASET=mose reads MOSE_ROOT (see configs/dataset/mose.yaml).
# On a cluster: KFP_USERNAME + KFP_PASSWORD (a Dex login), KFP_TOKEN or KFP_COOKIES, KFP_NAMESPACE
# (docs/cluster-login.md); `make pipeline-follow RUN=<run-id>` follows a run already going. NUM_NODES and
# GPUS_PER_NODE set the training scale (default: the preset's on this machine, the pipeline's on a cluster);
# ARGS passes more, e.g. ARGS="--set epochs=2 --set allow_random_init=true".
DATASET ?= demo
CRON ?= 0 0 3 * * 0
NUM_NODES ?=
GPUS_PER_NODE ?=
ARGS ?=
PIPELINE_ARGS = --dataset $(DATASET) $(if $(NUM_NODES),--set num_nodes=$(NUM_NODES)) \
	$(if $(GPUS_PER_NODE),--set gpus_per_node=$(GPUS_PER_NODE)) $(ARGS)
.PHONY: pipeline-compile pipeline-run pipeline-submit pipeline-schedule pipeline-follow
# IMAGE=<registry>/<name>:<tag> (e.g. what `make image` pushed) compiles the components and the PyTorchJob
# with that image into build/sam2_finetune.yaml (upload it in the UI); without IMAGE the committed
# pipelines/sam2_finetune.yaml is rewritten with the default image. pipeline-submit/-run/-schedule compile
# afresh with IMAGE too.
IMAGE ?=
WITH_IMAGE = $(if $(IMAGE),SAM2_PIPELINE_IMAGE=$(IMAGE) ,)
pipeline-compile: setup
	$(WITH_IMAGE)$(PY) -m pipelines.compile $(if $(IMAGE),--output build/sam2_finetune.yaml,)

pipeline-run: setup
	$(WITH_IMAGE)$(PY) -m pipelines.run run $(PIPELINE_ARGS)

pipeline-submit: setup
	$(WITH_IMAGE)$(PY) -m pipelines.run submit $(PIPELINE_ARGS)

pipeline-schedule: setup
	$(WITH_IMAGE)$(PY) -m pipelines.run schedule $(PIPELINE_ARGS) --cron "$(CRON)"

pipeline-follow: setup
	$(if $(RUN),,$(error pipeline-follow needs RUN=<run-id>, e.g. make pipeline-follow RUN=0a1b2c3d-...))
	$(PY) -m pipelines.run follow $(RUN)

# The local champion (models:/sam2-$(DATASET)@champion in .local/mlflow, after `make pipeline-run`) as a KServe
# endpoint on 127.0.0.1:$(SERVE_PORT), the server the InferenceService runs; writes .local/serve-request.json
# (a request for a val video) and logs the curl command that sends it. docs/serving.md.
SERVE_PORT ?= 8080
.PHONY: serve
serve: setup
	$(PY) -m pipelines.serve_local --dataset $(DATASET) --http_port $(SERVE_PORT)

# The image (docker/Dockerfile), tagged with the code version (<package version>-<git commit>[-dirty], the
# string MLflow records as code_version and KFP versions start with) and pushed to $(REGISTRY):
#   make image REGISTRY=registry.example.com/team && make pipeline-compile IMAGE=<the printed name>
REGISTRY ?= ghcr.io/sam2-kubeflow
IMAGE_TAG ?= $(shell $(PYTHON) -m sam2.utils.code_version)
BUILD_IMAGE = $(if $(IMAGE),$(IMAGE),$(REGISTRY)/sam2-kubeflow:$(IMAGE_TAG))
.PHONY: image
image:
	docker build -f docker/Dockerfile -t $(BUILD_IMAGE) .
	docker push $(BUILD_IMAGE)
	@echo "pushed $(BUILD_IMAGE); compile with: make pipeline-compile IMAGE=$(BUILD_IMAGE)"
