# Two commands do everything on a fresh Debian/Ubuntu host (as root):
#   make run    install what is missing, then run the daemon in the foreground
#   make test   the same set-up, then the whole test suite
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test setup test-setup bench clean

run: setup
	$(VENV)/bin/tcpwatch run $(ARGS)

test: test-setup
	$(PY) -m pytest -ra $(ARGS)

setup: $(VENV)/.installed
	@scripts/setup-host.sh

test-setup: $(VENV)/.installed-test
	@scripts/setup-host.sh --test

# The venv is made from the system Python with its site-packages visible, so that the
# distribution's bcc bindings (python3-bpfcc) import inside it. bcc is never pip-installed.
$(VENV)/.installed: pyproject.toml
	@scripts/setup-host.sh
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

bench: setup
	@scripts/setup-host.sh --bench
	$(PY) bench/scrape_cost.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
