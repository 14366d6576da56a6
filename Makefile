# Tracktion DR: everything an operator or CI needs, from nothing.
#   make demo     create the venv, install, start the sandbox, run the monthly DR drill
#   make test     install, start what the tests need, run the whole suite
#   make airflow  airflow standalone wired to the sandbox (UI on http://localhost:8080)
#   make shell    a shell where plain "airflow ..." commands act on the sandbox
#   make deploy-up    the docker-compose deployment (CeleryExecutor): build, start, wait healthy
#   make deploy-test  the topology profile up, dr_database_pitr over REST, every step on its host
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
ENV := . sandbox/env.sh &&
PYTEST_ARGS ?=

.PHONY: help install postgres chromium demo-pitr sandbox-up sandbox-down sandbox-status sandbox-reset airflow-db \
        demo test lint airflow shell bench constraints \
        deploy-image deploy-env deploy-up deploy-down deploy-status deploy-test deploy-test-drill

help:
	@sed -n '2,8p' Makefile | sed 's/^# *//'

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -c constraints.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	@touch $@

install: $(VENV)/.installed

postgres:
	@bash scripts/ensure-postgres.sh

chromium:
	@bash scripts/ensure-chromium.sh

airflow-db: install
	@$(ENV) airflow db migrate >/dev/null

sandbox-up: install postgres
	@$(ENV) $(PY) -m tracktion_sandbox up

sandbox-down:
	@if [ -x $(PY) ]; then $(ENV) $(PY) -m tracktion_sandbox down; fi

sandbox-status: install
	@$(ENV) $(PY) -m tracktion_sandbox status

sandbox-reset: install
	@$(ENV) $(PY) -m tracktion_sandbox reset

demo: sandbox-up airflow-db
	@$(ENV) $(PY) -m tracktion_sandbox.demo_monthly

# The database incident demo: a dropped table recovered by point-in-time recovery.
demo-pitr: sandbox-up airflow-db
	@$(ENV) $(PY) -m tracktion_sandbox.demo_pitr

# Two shards side by side, each with its own sandbox in its own network namespace
# (scripts/run_tests.py); TEST_SHARDS=1, or test paths in PYTEST_ARGS, run one pytest here.
test: install postgres chromium airflow-db
	@$(ENV) $(PY) scripts/run_tests.py $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check dags include plugins sandbox tests bench

airflow: sandbox-up airflow-db
	@echo "Airflow UI: http://localhost:8080 (admin password: $$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated)"
	@$(ENV) exec airflow standalone

shell: install
	@bash --rcfile <(echo '[ -f ~/.bashrc ] && . ~/.bashrc; . sandbox/env.sh; PS1="(tracktion-dr) $$PS1"') -i

# Regenerate the lock file from the current venv (after changing requirements.txt).
constraints: install
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^tracktion-dr' > constraints.txt

# ----------------------------------------------------------------- the docker-compose deployment
# docker-compose (1.29, Debian's) when installed, else Compose v2 ("docker compose").
# DEPLOY_PROFILES="topology" adds the production-shaped stand-in hosts.
# One project name whatever the clone's folder is called (containers tracktion-dr_<service>_1).
export COMPOSE_PROJECT_NAME ?= tracktion-dr
COMPOSE ?= $(shell command -v docker-compose >/dev/null 2>&1 && echo docker-compose || echo docker compose)
DEPLOY_PROFILES ?=
DEPLOY_COMPOSE = $(COMPOSE) $(foreach p,$(DEPLOY_PROFILES),--profile $(p))
DEPLOY_WAIT_SECONDS ?= 900

# The base image (debootstrap when no registry answers), then the project image.
deploy-image:
	@bash scripts/ensure-docker.sh
	@bash scripts/build-image.sh

# The env files with random secrets (kept when they exist).
deploy-env:
	@DEPLOY_PROFILES="$(DEPLOY_PROFILES)" bash scripts/deploy-env.sh

deploy-up: deploy-image deploy-env
	$(DEPLOY_COMPOSE) up -d
	@COMPOSE="$(DEPLOY_COMPOSE)" bash scripts/deploy-wait.sh $(DEPLOY_WAIT_SECONDS)
	@echo "Airflow UI and REST API: http://localhost:$${AIRFLOW_PORT:-8080} (user admin;" \
	  "password: grep AIRFLOW_ADMIN_PASSWORD deploy/airflow-admin.env)"

# Stop and remove the containers; the volumes (metadata DB, logs, hosts' data) are kept.
deploy-down:
	$(DEPLOY_COMPOSE) --profile topology down

deploy-status:
	@$(DEPLOY_COMPOSE) ps

# The deployment test (tests/deploy/test_deploy_topology.py): starts Docker if needed, builds
# the images when missing, brings the `topology` profile up (project
# tracktion-deploy-test-<hash of the clone's path>, API on 127.0.0.1:18380 or a free port),
# recovers the primary with dr_database_pitr over REST and checks where each task ran, the
# services and the data; then removes the project (DEPLOY_KEEP=1 keeps it running).
deploy-test: install
	@$(ENV) DEPLOY_TEST=required $(VENV)/bin/pytest -p no:cacheprovider -m deploy tests/deploy $(PYTEST_ARGS)

# Only the quarterly drill in the deployment, through the scheduler (tests/deploy/test_deploy_quarterly.py,
# also part of deploy-test and of `make test`).
deploy-test-drill: install
	@$(ENV) DEPLOY_TEST=required $(VENV)/bin/pytest -p no:cacheprovider -m deploy tests/deploy/test_deploy_quarterly.py $(PYTEST_ARGS)
