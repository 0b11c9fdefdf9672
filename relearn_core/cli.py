"""The ``relearn`` command line: a thin shell over the Python API in the stage modules."""

from __future__ import annotations

import functools
import sys

import click

from . import __version__
from .errors import RelearnError


def reports_errors(command):
    """Turn a RelearnError into one line on stderr and exit status 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RelearnError as exc:
            click.echo(f"relearn: error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relearn")
def main():
    """relearn: make a salient object detection model better by multiple instance joint re-learning."""
