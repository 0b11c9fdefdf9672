"""What every benchmark writes: its JSON report and a Markdown summary beside it (same name, .md), atomically, and
the stamps that say when and under what load it was measured."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from relearn_core.imageio import atomic_write_bytes


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the machine was beside the measurement."""
    return [round(value, 2) for value in os.getloadavg()]


def stamp() -> dict:
    """When the report was made and how busy the machine was at its end: the keys every summary names."""
    return {"date": utc_now(), "load_average_at_end": load_average()}


def write_report(out: str | os.PathLike, report, summary: str) -> None:
    """Write ``report`` as JSON to ``out`` and ``summary`` (Markdown) beside it, then print the summary."""
    out = Path(out)
    summary = summary if summary.endswith("\n") else summary + "\n"
    atomic_write_bytes(out, (json.dumps(report, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(out.with_suffix(".md"), summary.encode())
    print(summary, end="")
