# autopush-flask: every target does its own set-up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install lint lock test fuzz soak run clean docs version.json

install: $(VENV)/.installed node_modules/.installed version.json

version.json: $(VENV)/.installed
	$(VPY) scripts/write-version-json

# The locked files carry a hash for every package, so pip refuses anything
# else; then the package itself, editable and without dependencies (those came
# locked), for its metadata and the autopush-* console scripts. Its build
# backend is the locked setuptools from requirements-dev.txt.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.txt -r requirements-dev.txt
	$(VPY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# ruff and mypy read their settings from pyproject.toml.
lint: install
	$(VENV)/bin/ruff check autopush_flask
	$(VENV)/bin/ruff format --check autopush_flask
	$(VENV)/bin/mypy

# Re-lock after editing requirements.in or requirements-dev.in: pins every
# package with its hashes, keeping the pins already in the .txt files unless the
# .in files need others (`make lock LOCK_ARGS=--upgrade` moves everything to the
# newest release). The dev lock is constrained by the runtime one, so a
# package both need gets one version.
LOCK_ARGS ?=
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(VPY) -m piptools compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host $(LOCK_ARGS)
lock: install
	$(PIP_COMPILE) --output-file requirements.txt requirements.in
	$(PIP_COMPILE) --output-file requirements-dev.txt requirements-dev.in

# pytest exits 5 when it collected nothing: that must fail the build too.
test: install
	@$(VPY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; \
	exit $$rc

# Malformed traffic at full scale (acceptance item 4): >= 10,000 fuzzed WebSocket frames
# and >= 10,000 schemathesis requests, then the endpoint header fuzz; `make test` runs the
# same tests at a smaller scale. Every fuzz test prints its seed and a command that
# replays it; `FUZZ_SEED=<n> make fuzz` (or `make fuzz FUZZ_SEED=<n>`) replays a whole run,
# `FUZZ_SEED=random` draws a new one. Not AUTOPUSH_*: the nodes refuse unknown ones.
FUZZ_SEED ?=
fuzz: install
	FUZZ_SCALE=full FUZZ_SEED=$(FUZZ_SEED) $(VPY) -m pytest tests/e2e/test_malformed_traffic.py \
		tests/integration/test_fuzz_endpoint.py -p no:cacheprovider -o timeout=1800

# The chaos soak for 10 minutes (`make test` runs it for 40 s): every push answered 201 must
# be delivered, stored, expired or replaced while masters are reloaded, restarted and killed,
# the database goes away and connections drop. It prints its seed; `SOAK_SEED=<n> make soak`
# replays the fault schedule. Not AUTOPUSH_*: the nodes refuse unknown ones.
SOAK_SEED ?=
soak: install
	SOAK_SECONDS=600 SOAK_SEED=$(SOAK_SEED) $(VPY) -m pytest tests/e2e/test_soak.py -s \
		-p no:cacheprovider -o timeout=1800

# `make run DB=postgres` runs the nodes on a local PostgreSQL cluster (var/postgres)
# instead of the local DynamoDB.
DB ?= dynamodb
run: install
	$(VPY) scripts/run-local --db $(DB)

docs: install
	$(VPY) scripts/settings-reference --write docs/operations.md

clean:
	rm -rf $(VENV) node_modules .pytest_cache
