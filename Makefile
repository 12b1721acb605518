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
# The migration lint only needs a PostgreSQL server to render the SQL; it writes nothing.
LINT_URL ?= postgres://root@127.0.0.1:5432/postgres
DEMO_TASKS ?= 20000
DEMO := DATABASE_URL=$(SQLITE_URL) $(PY) manage.py
PYTEST_ARGS ?=

.PHONY: install demo test test-sqlite test-postgres lint bench-seed bench-backfill bench-locks bench-rehearsal bench-adaptive clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo plays both rollouts on SQLite, from an empty db.sqlite3 each time: today's app with
# its reference data, rewound to before either column existed, then each rollout in turn.
demo: $(STAMP)
	rm -f db.sqlite3 db.sqlite3-wal db.sqlite3-shm
	@echo "== 1. Today's app: every migration, the reference data and the demo users"
	$(DEMO) migrate --verbosity 0
	$(DEMO) loaddata workspaces categories roles operators demo
	@echo "== 2. Back to where the brief starts (tasks before priority); legacy tasks as the old code wrote them"
	$(DEMO) migrate tasks 0001_initial --verbosity 0
	$(DEMO) seed --tasks $(DEMO_TASKS) --seed 1 --without-priority --without-workspace
	@echo "== 3. The priority rollout: expand, backfill in batches (resumable; try Ctrl-C and run it again), data migration, contract, index"
	$(DEMO) migrate tasks 0002_priority_expand
	$(DEMO) backfill_priority --dry-run
	$(DEMO) backfill_priority
	$(DEMO) migrate tasks 0005_priority_index
	@echo "== 4. The workspace rollout: workspaces, expand (key NOT VALID, index concurrently), backfill, contract"
	$(DEMO) migrate tasks 0007_workspace_expand
	$(DEMO) loaddata workspaces categories
	$(DEMO) backfill tasks.task.workspace --dry-run
	$(DEMO) backfill tasks.task.workspace
	$(DEMO) migrate
	$(DEMO) backfill --list
	$(DEMO) backfill --status
	$(DEMO) task_stats
	@echo
	@echo "Open the admin:  $(PY) manage.py runserver  then http://127.0.0.1:8000/admin/"
	@echo "Log in as alice (Admin, Operators: Backfill runs), bob (Manager) or carol (Member);"
	@echo "password: taskproj-demo"

test: test-sqlite test-postgres

test-sqlite: $(STAMP)
	DATABASE_URL=$(SQLITE_URL) $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: $(STAMP)
	DATABASE_URL=$(POSTGRES_URL) $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	DATABASE_URL=$(SQLITE_URL) $(PY) manage.py makemigrations --check --dry-run
	DATABASE_URL=$(LINT_URL) $(PY) manage.py lint_migrations

bench-seed: $(STAMP)
	$(PY) benchmarks/seed.py

bench-backfill: $(STAMP)
	$(PY) benchmarks/backfill.py

bench-locks: $(STAMP)
	$(PY) benchmarks/locks.py

bench-rehearsal: $(STAMP)
	$(PY) benchmarks/rehearsal.py

bench-adaptive: $(STAMP)
	$(PY) benchmarks/adaptive.py

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-wal db.sqlite3-shm .pytest_cache .ruff_cache
