"""manage.py backfill_priority: ``manage.py backfill tasks.task.priority`` under the name users
and the docs know; the same flags, the same output."""

from backfills.management.commands.backfill import Command as BackfillCommand


class Command(BackfillCommand):
    help = (
        "Fill Task.priority where it is still NULL (manage.py backfill tasks.task.priority), in "
        "keyset batches of one UPDATE each, committed one by one and checkpointed: a killed run "
        "resumes where it stopped, with the same reference date. Run it between the expand "
        "(0002) and contract (0004) migrations."
    )
    backfill_name = "tasks.task.priority"
