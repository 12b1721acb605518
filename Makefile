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
# The demo's database (a test plays the demo on a file of its own).
DEMO_DB ?= $(CURDIR)/db.sqlite3
# The migration lint only needs a PostgreSQL server to render the SQL; it writes nothing.
LINT_URL ?= postgres://root@127.0.0.1:5432/postgres
DEMO_TASKS ?= 20000
DEMO := DATABASE_URL=sqlite:///$(DEMO_DB) $(PY) manage.py
PYTEST_ARGS ?=
# `make test-django6`: the suite on the newest Django 6 under Python 3.12, in a venv of its own
# (`make test` stays on .venv: Python 3.11, Django 5.2 LTS). python3.12 if it runs, else pyenv's.
PYTHON_DJANGO6 ?= $(shell { python3.12 -c "" 2>/dev/null && command -v python3.12; } || ls -d "$$(pyenv root 2>/dev/null || echo $${PYENV_ROOT:-$$HOME/.pyenv})"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -n 1)
VENV_DJANGO6 := .venv-dj6
PY_DJANGO6 := $(VENV_DJANGO6)/bin/python
STAMP_DJANGO6 := $(VENV_DJANGO6)/.installed

.PHONY: install demo test test-sqlite test-postgres test-django6 test-django6-postgres lint bench-seed bench-backfill bench-backfill-statements bench-locks bench-rehearsal bench-adaptive bench-index-cost clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo plays both rollouts on SQLite, from an empty db.sqlite3 each time: today's app with
# its reference data, rewound to before either column existed, then each rollout in turn, in the
# runbook's order (docs/zero-downtime.md). Each command is shown as you would type it; DATABASE_URL
# points at the demo's db.sqlite3 for all of them.
run = @echo '   $$ manage.py $(1)' && $(DEMO) $(1)

demo: $(STAMP)
	@rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	@echo
	@echo "== 1. Today's app: every app migrated, the reference data and the demo users"
	$(call run,migrate --verbosity 0)
	$(call run,loaddata workspaces categories roles operators demo)
	@echo
	@echo "== 2. Back to where the story starts: tasks as it was before priority, with tasks the old code wrote"
	@echo "   Tasks is migrated back to 0001; the rows stay. The seed writes them as the old code did,"
	@echo "   naming neither column, with due dates around a reference date (--today, default today)."
	$(call run,migrate tasks 0001_initial --verbosity 0)
	$(call run,seed --tasks $(DEMO_TASKS) --seed 1 --without-priority --without-workspace)
	@echo
	@echo "== 3. The priority rollout (runbook: The first column)"
	@echo "   3a. Expand: add priority, nullable. On PostgreSQL a catalogue change, under a bounded lock wait."
	$(call run,migrate tasks 0002_priority_expand)
	@echo "   3b. Deploy the code that writes it: Task.save() and bulk_create() set priority from the rule."
	@echo "   3c. Backfill the old rows in batches. The rule counts due dates from the run's reference date"
	@echo "       (the day the run started, kept on the run so a resumed run computes the same values)."
	@echo "       First a dry run, then the real one: resumable, try Ctrl-C and run it again."
	$(call run,backfill_priority --dry-run)
	$(call run,backfill_priority)
	@echo "   3d. Data migration 0003 (finishes the backfill), contract 0004 (default, then NOT NULL through"
	@echo "       a validated check, no long lock), index 0005 (priority, due_date; CONCURRENTLY on PostgreSQL)."
	$(call run,migrate tasks 0005_priority_index)
	@echo
	@echo "== 4. The workspace rollout, a foreign key (runbook: The second column)"
	@echo "   4a. The workspaces table and the categories' workspaces."
	$(call run,migrate tasks 0006_workspaces)
	$(call run,loaddata workspaces categories)
	@echo "   4b. Expand: workspace_id nullable; on PostgreSQL its key NOT VALID and its index CONCURRENTLY."
	$(call run,migrate tasks 0007_workspace_expand)
	@echo "   4c. Backfill: each task gets its category's workspace, else the default one."
	$(call run,backfill tasks.task.workspace --dry-run)
	$(call run,backfill tasks.task.workspace)
	@echo "   4d. Data migration 0008, contract 0009 (the key validated, NOT NULL)."
	$(call run,migrate tasks 0009_workspace_contract)
	@echo
	@echo "== 5. The admin's indexes, a step of their own: one per sortable column and a trigram index"
	@echo "   for the title search (0010; CONCURRENTLY on PostgreSQL, where a list of 1,000,000 tasks needs them)."
	$(call run,migrate)
	@echo
	@echo "== 6. Where things stand: the registered backfills, their runs, the tasks"
	$(call run,backfill --list)
	$(call run,backfill --status)
	$(call run,task_stats)
	@echo
	@echo "Open the admin:  $(PY) manage.py runserver  then http://127.0.0.1:8000/admin/"
	@echo "Log in as alice (Admin, Operators: Backfill runs), bob (Manager) or carol (Member);"
	@echo "password: taskproj-demo"

test: test-sqlite test-postgres

test-sqlite: $(STAMP)
	DATABASE_URL=$(SQLITE_URL) $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: $(STAMP)
	DATABASE_URL=$(POSTGRES_URL) $(PY) -m pytest $(PYTEST_ARGS)

$(STAMP_DJANGO6): pyproject.toml
	@test -n "$(PYTHON_DJANGO6)" || { echo "No Python 3.12 found: set PYTHON_DJANGO6=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON_DJANGO6) -m venv $(VENV_DJANGO6)
	$(PY_DJANGO6) -m pip install --quiet --upgrade pip
	$(PY_DJANGO6) -m pip install --quiet -e '.[dev]' 'Django>=6'
	touch $(STAMP_DJANGO6)

test-django6: $(STAMP_DJANGO6)
	@$(PY_DJANGO6) -c 'import django, sys; print(f"Django {django.get_version()} on Python {sys.version.split()[0]}")'
	DATABASE_URL=$(SQLITE_URL) $(PY_DJANGO6) -m pytest $(PYTEST_ARGS)
	DATABASE_URL=$(SQLITE_URL) $(PY_DJANGO6) manage.py makemigrations --check --dry-run

test-django6-postgres: $(STAMP_DJANGO6)
	DATABASE_URL=$(POSTGRES_URL) $(PY_DJANGO6) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	DATABASE_URL=$(SQLITE_URL) $(PY) manage.py makemigrations --check --dry-run
	DATABASE_URL=$(LINT_URL) $(PY) manage.py lint_migrations

bench-seed: $(STAMP)
	$(PY) benchmarks/seed.py

bench-backfill: $(STAMP)
	$(PY) benchmarks/backfill.py

bench-backfill-statements: $(STAMP)
	$(PY) benchmarks/backfill_statements.py

bench-locks: $(STAMP)
	$(PY) benchmarks/locks.py

bench-rehearsal: $(STAMP)
	$(PY) benchmarks/rehearsal.py

bench-adaptive: $(STAMP)
	$(PY) benchmarks/adaptive.py

bench-index-cost: $(STAMP)
	$(PY) benchmarks/index_cost.py

clean:
	rm -rf $(VENV) $(VENV_DJANGO6) db.sqlite3 db.sqlite3-wal db.sqlite3-shm .pytest_cache .ruff_cache
