# zoo-locked: developer and CI entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help setup compile venv test test-unit test-sanity test-molecule bench soak demo demo-down clean

help:
	@echo "make venv       create .venv with the pinned requirements and .venv/bin/zoo-locked"
	@echo "make test       all tests: pytest against a real ZooKeeper, then the Molecule cluster"
	@echo "make bench      benchmarks; figures are printed and recorded in docs/benchmarks.md"
	@echo "make soak       randomized faults against 5 runner nodes and a 3-server ensemble, then a history check"
	@echo "                (SOAK_MINUTES=10, SEED=random; the short form is part of make test)"
	@echo "make demo       a local three-node demo cluster, left up (see README.md)"
	@echo "make demo-down  remove the demo cluster"

$(VENV)/.done: requirements/runner.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements/dev.txt
	touch $@

# The runner in a checkout is the same code the runner role installs on nodes: the launcher, with
# plugins/module_utils linked in as the zoo_locked package.
$(VENV)/bin/zoo-locked: $(VENV)/.done roles/runner/files/zoo-locked.py
	mkdir -p $(VENV)/lib/zoo-locked
	ln -sfn $(CURDIR)/plugins/module_utils $(VENV)/lib/zoo-locked/zoo_locked
	{ echo '#!$(VENV)/bin/python'; cat roles/runner/files/zoo-locked.py; } > $@.tmp
	chmod 0755 $@.tmp && mv $@.tmp $@

# Byte-compile the runner's code: it starts once per cron job, and PYTHONDONTWRITEBYTECODE (set on some
# machines) would otherwise make every run compile it again (about 20 ms).
compile: $(VENV)/bin/zoo-locked
	$(PY) -m compileall -q plugins/module_utils

venv: $(VENV)/bin/zoo-locked compile

# Debian packages and the Docker engine (idempotent; quick when everything is there).
setup:
	bash tests/setup-host

# Empty: every sanity test. A list (make test-sanity SANITY_TESTS="pep8 pylint") runs just those.
SANITY_TESTS ?=

test: setup venv
	$(MAKE) test-unit
	$(MAKE) test-sanity
	$(MAKE) test-molecule

# The collection as Ansible finds it: this checkout, through a link (no built copy to go stale).
COLLECTIONS := $(CURDIR)/.cache/collections
$(COLLECTIONS)/ansible_collections/zoolocked/cron:
	mkdir -p $(dir $@)
	ln -sfn $(CURDIR) $@

# The three-node cluster with a three-server ZooKeeper ensemble (docs/deployment.md), then the same cluster
# under faults (molecule/faults, docs/reliability.md).
test-molecule: venv $(COLLECTIONS)/ansible_collections/zoolocked/cron
	bash .ci/docker-up
	tests/images/build
	ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS) $(VENV)/bin/molecule test -s default
	ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS) $(VENV)/bin/molecule test -s faults

# ansible-test sanity from its own virtualenv under .cache (tests/sanity/run explains why).
test-sanity:
	tests/sanity/run $(addprefix --test ,$(SANITY_TESTS))

test-unit: venv
	ZOO_LOCKED_WRITE_DOCS=1 $(PY) -m pytest -p no:cacheprovider -ra tests

# The demo cluster (README.md; tests/demo/demo.py): the Molecule scenario molecule/demo, left up, then a job
# fired on every node at once and a node killed mid-job. demo-down removes it (and does nothing when nothing is up).
demo: setup venv $(COLLECTIONS)/ansible_collections/zoolocked/cron
	tests/images/build
	$(PY) tests/demo/demo.py up

demo-down:
	$(PYTHON) tests/demo/demo.py down

# Prints the figures and records them in docs/benchmarks.md (replaced only when the whole run succeeds): run.py
# (one standalone server), then scale.py (a three-server ensemble: 10/50/100 nodes firing one slot, held locks).
bench: venv
	{ $(PY) tests/bench/run.py && echo && $(PY) tests/bench/scale.py; } | tee docs/benchmarks.md.tmp
	mv docs/benchmarks.md.tmp docs/benchmarks.md

# A randomized fault run with a history checker (tests/soak/soak.py, issue 13). The seed is printed first; a run with
# violations exits 1 and keeps its history under .cache/soak/. tests/soak/test_soak.py is the short form.
SOAK_MINUTES ?= 10
SEED ?=
soak: venv
	$(PY) tests/soak/soak.py --minutes $(SOAK_MINUTES) $(if $(SEED),--seed $(SEED))

clean:
	rm -rf $(VENV) .pytest_cache
