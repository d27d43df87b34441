"""Argument types and option groups shared by the ``telfhash`` command and its subcommands."""

from __future__ import annotations

import argparse

from ..digest import DEFAULT_THRESHOLD


def non_negative_int(text: str) -> int:
    """argparse type for thresholds, counts and jobs: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_threshold(p: argparse.ArgumentParser, what: str = "TLSH distance") -> None:
    """``-t/--threshold N`` (default :data:`~telfhash_core.digest.DEFAULT_THRESHOLD`)."""
    p.add_argument(
        "-t",
        "--threshold",
        type=non_negative_int,
        default=DEFAULT_THRESHOLD,
        help=f"{what} (default {DEFAULT_THRESHOLD}, inclusive)",
    )


def add_progress(p: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` (default: a bar only when stderr is a terminal)."""
    p.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
