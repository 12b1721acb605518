"""The baseline the seeder is measured against: TaskFactory.build_batch + bulk_create per 1,000.

Run by benchmarks/seed.py in its own process; prints nothing but errors.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskproj.settings")

import django  # noqa: E402

django.setup()

import factory  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from factory.random import randgen  # noqa: E402

from tasks.factories import TaskFactory  # noqa: E402
from tasks.models import Category, Task  # noqa: E402
from tasks.seeding import create_users, ensure_reference_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    factory.random.reseed_random(1)
    ensure_reference_data(using="default")
    categories = list(Category.objects.order_by("slug"))
    users = list(get_user_model().objects.filter(pk__in=create_users(25, using="default")))
    done = 0
    while done < args.tasks:
        size = min(args.batch_size, args.tasks - done)
        batch = TaskFactory.build_batch(
            size,
            category=factory.LazyFunction(lambda: randgen.choice(categories)),
            assignee=factory.LazyFunction(lambda: randgen.choice(users)),
        )
        Task.objects.bulk_create(batch)
        done += size


if __name__ == "__main__":
    main()
