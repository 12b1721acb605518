# Two commands for a fresh machine with Python 3.11+ and make:
#   make demo   install, then run the demo on SQLite
#   make test   install, then run the whole test suite (SQLite, then PostgreSQL)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The PostgreSQL pass of `make test`; its tests are skipped with the reason if it is unreachable.
POSTGRES_URL ?= postgres://root@127.0.0.1:5432/test
SQLITE_URL := sqlite:///$(CURDIR)/db.sqlite3
DEMO_TASKS ?= 20000
PYTEST_ARGS ?=

.PHONY: install demo test test-sqlite test-postgres lint bench-seed clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo starts from an empty SQLite database each time (db.sqlite3 at the project root).
demo: $(STAMP)
	rm -f db.sqlite3 db.sqlite3-wal db.sqlite3-shm
	DATABASE_URL=$(SQLITE_URL) $(PY) manage.py migrate --verbosity 1
	DATABASE_URL=$(SQLITE_URL) $(PY) manage.py loaddata categories roles demo
	DATABASE_URL=$(SQLITE_URL) $(PY) manage.py seed --tasks $(DEMO_TASKS) --seed 1
	DATABASE_URL=$(SQLITE_URL) $(PY) manage.py task_stats
	@echo
	@echo "Open the admin:  $(PY) manage.py runserver  then http://127.0.0.1:8000/admin/"
	@echo "Log in as alice (Admin), bob (Manager) or carol (Member); password: taskproj-demo"

test: test-sqlite test-postgres

test-sqlite: $(STAMP)
	DATABASE_URL=$(SQLITE_URL) $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: $(STAMP)
	DATABASE_URL=$(POSTGRES_URL) $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	DATABASE_URL=$(SQLITE_URL) $(PY) manage.py makemigrations --check --dry-run

bench-seed: $(STAMP)
	$(PY) benchmarks/seed.py

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-wal db.sqlite3-shm .pytest_cache .ruff_cache
