"""Schema changes on live PostgreSQL tables without long locks, in one place.

- ``manage.py migrate`` with bounded lock waits, retried, naming the sessions in the way
  (:mod:`migration_safety.management.commands.migrate`, :mod:`migration_safety.blockers`);
- migration operations that keep long locks out (:mod:`migration_safety.operations`);
- ``manage.py lint_migrations``: squawk over every migration's SQL (:mod:`migration_safety.lint`);
- ``manage.py rehearse``: a rollout played on a scratch database under traffic
  (:mod:`migration_safety.rehearsal`), from plans that the app owning the table declares in its
  ``rollouts.py`` (:mod:`migration_safety.rollouts`).

It never imports the apps whose migrations it runs.
"""
