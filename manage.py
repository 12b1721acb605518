#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    """Run administrative tasks."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskproj.settings")
    from taskproj.cli import main as run

    run(sys.argv)


if __name__ == "__main__":
    main()
