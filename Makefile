# reconet: `make run` runs the pipeline on the demo library, `make test` runs the tests.
# Both set up what they need first (Debian packages, .venv, the project), idempotently.
export DAGSTER_HOME ?= $(CURDIR)/.dagster

.PHONY: setup run test ui repro
setup:
	@scripts/setup.sh

run: setup
	.venv/bin/reconet run

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest

ui: setup
	.venv/bin/reconet ui

# DVC: rebuild what changed (dvc.yaml); the stages call `reconet`, found on the venv's PATH
repro: setup
	PATH=$(CURDIR)/.venv/bin:$$PATH .venv/bin/dvc repro
