# autopush-flask: every target does its own set-up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test run clean docs version.json

install: $(VENV)/.installed node_modules/.installed version.json

version.json: $(VENV)/.installed
	$(VPY) scripts/write-version-json

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# pytest exits 5 when it collected nothing: that must fail the build too.
test: install
	@$(VPY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; \
	exit $$rc

run: install
	$(VPY) scripts/run-local

docs: install
	$(VPY) scripts/settings-reference --write README.md

clean:
	rm -rf $(VENV) node_modules .pytest_cache
