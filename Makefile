# popgate: `make demo` and `make test` are all a newcomer needs (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests drive as real peers: Dovecot as the POP3 upstream (and
# reference IMAP server), curl and mbsync (isync) as IMAP clients, openssl for test CAs;
# Postfix (its smtp-sink as the upstream SMTP), swaks and msmtp as submission clients;
# Chromium and its driver as the browser of the web page tests; PostgreSQL as the second
# store backend (a private server per test run, gateway/testing/postgres.py).
DEB_PACKAGES := dovecot-core dovecot-pop3d dovecot-imapd curl isync openssl offlineimap3 fetchmail getmail6 sieve-connect dovecot-managesieved dovecot-sieve postfix swaks msmtp chromium chromium-driver postgresql
# Bench-only peers (make bench): the ingest tools popgate is measured against.
BENCH_PACKAGES := getmail6 fetchmail dovecot-fts-xapian

.PHONY: demo test lint unit system-packages venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# compat mode keeps twistd's plugin scan able to see twisted/plugins/popgate.py
	$(BIN)/python -m pip install -q --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

system-packages:
	@bash .ci/system-packages $(DEB_PACKAGES)

demo: $(STAMP)
	$(BIN)/popgate demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not dovecot and not slow and not postgres'

test: $(STAMP) system-packages lint
	$(BIN)/python -m pytest -q

bench: $(STAMP) system-packages
	@bash .ci/system-packages $(BENCH_PACKAGES)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-state .pytest_cache .hypothesis build *.egg-info
	find twisted -name dropin.cache -delete
