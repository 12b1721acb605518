"""How runs read to people, in the command's output and in the admin."""

from collections.abc import Mapping
from typing import Any


def format_seconds(seconds: float | None) -> str:
    """A duration for people: "42 s", "7 min", "2.5 h"; "-" when unknown."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_parameters(parameters: Mapping[str, Any]) -> str:
    """A run's parameters as words: ``{"reference_date": "2026-12-01"}`` -> "reference date
    2026-12-01"; "no parameters" when there are none."""
    if not parameters:
        return "no parameters"
    return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in parameters.items())
