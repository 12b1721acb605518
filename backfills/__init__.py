"""Batched, resumable, throttled backfills of any column, declared once per column.

An app declares what to fill in its ``backfills.py`` (:mod:`backfills.registry`); then
``manage.py backfill NAME``, the admin's Backfill runs, the task workers and the migration
operations (:mod:`backfills.operations`) all work with it. This app never imports the apps
whose columns it fills.

- :mod:`backfills.engine` fills one key range in batches; :mod:`backfills.lanes` several at once;
- :mod:`backfills.models` is the run ledger, :mod:`backfills.ledger` its rows as the engine and
  operators see them;
- :mod:`backfills.leases` decides who works on a run, :mod:`backfills.controls` how operators
  steer it, :mod:`backfills.health` when it backs off;
- :mod:`backfills.workers` carries runs on in task workers;
- :mod:`backfills.orchestration` is what the command, the admin and the migrations call.
"""
