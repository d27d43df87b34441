"""``telfhash batch``: hash a corpus to resumable JSONL/Parquet; ``telfhash batch cluster`` groups it.

``telfhash batch INPUT... -o OUT`` is short for ``telfhash batch hash INPUT... -o OUT``: the
``batch`` parser has two argparse subcommands, ``hash`` (the default when the first word is not
a subcommand) and ``cluster``.  The hashing options may also stand before the inputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..batch.common import BatchError, log
from ..batch.run import DEFAULT_CHUNK, run_batch
from ..hookspecs import hookimpl
from ..progress import plural, reason_words
from .args import add_threshold, non_negative_int

PROG = "telfhash batch"


class _AnyWord(dict):
    """The subcommand names, where every word is acceptable (see :class:`_DefaultSubcommand`)."""

    def __contains__(self, word: object) -> bool:
        return True


class _DefaultSubcommand(argparse._SubParsersAction):
    """Subcommands where a first word that names none runs ``default_name`` with every word."""

    default_name = "hash"

    def add_parser(self, name, **kwargs):
        parser = super().add_parser(name, **kwargs)
        self.choices = _AnyWord(self._name_parser_map)  # argparse checks the first word against these
        return parser

    def __call__(self, parser, namespace, values, option_string=None):
        if values and values[0] not in self._name_parser_map:
            values = [self.default_name, *values]
        super().__call__(parser, namespace, values, option_string)


def _hash_options(p: argparse.ArgumentParser, top: bool) -> None:
    """The hashing options; on the ``batch`` parser itself (``top``) with the defaults, on
    ``batch hash`` without (so that an option given before the inputs is not reset)."""

    def d(value):
        return value if top else argparse.SUPPRESS

    p.add_argument(
        "--from-list",
        action="append",
        default=d([]),
        metavar="FILE",
        help="file listing one path or URL per line (- = stdin)",
    )
    p.add_argument("-o", "--output", default=d(None), help="output: a JSONL file, or a folder for --format parquet")
    p.add_argument(
        "--format",
        choices=("jsonl", "parquet"),
        default=d(None),
        help="default: parquet when OUT ends in .parquet, else jsonl",
    )
    p.add_argument(
        "--engine", choices=("local", "dask"), default=d("local"), help="local process pool (default) or Dask"
    )
    p.add_argument(
        "--scheduler",
        default=d(None),
        metavar="ADDR",
        help="Dask scheduler address (tcp://host:8786) or scheduler file; default: a new local cluster",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=non_negative_int,
        default=d(0),
        help="local processes, or workers of a new local Dask cluster (default: all cores)",
    )
    p.add_argument(
        "--resume-key",
        choices=("path", "sha256"),
        default=d("path"),
        help="skip files already written by path+size+mtime (default) or by content",
    )
    p.add_argument(
        "--chunk", type=non_negative_int, default=d(DEFAULT_CHUNK), help=f"files per task (default {DEFAULT_CHUNK})"
    )
    p.add_argument(
        "--flush-rows",
        type=non_negative_int,
        default=d(None),
        help="rows per durable write (default 1000 for JSONL, 20000 for Parquet)",
    )
    p.add_argument(
        "--progress", dest="progress", action="store_true", default=d(None), help="always show a progress bar"
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", default=d(None), help="never show a progress bar"
    )
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no summary line")


def _fmt_for(path: str, fmt: str | None) -> str:
    return fmt or ("parquet" if path.rstrip("/").endswith(".parquet") else "jsonl")


class _AboveTheBar(logging.Handler):
    """Log lines on stderr, written above the progress bar rather than through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _logging(quiet: bool) -> None:
    """Messages of the batch modules (logger ``telfhash_core.batch``) as ``telfhash batch: ...``."""
    if not log.handlers:
        h = _AboveTheBar()
        h.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def run_hash(args: argparse.Namespace) -> int:
    inputs = getattr(args, "inputs", [])
    if not inputs and not args.from_list:
        print(f"{PROG}: error: no INPUT given (folders, files, @LIST, - or URLs)", file=sys.stderr)
        return 2
    if not args.output:
        print(f"{PROG}: error: the following arguments are required: -o/--output", file=sys.stderr)
        return 2
    _logging(args.quiet)
    try:
        summary = run_batch(
            inputs,
            args.output,
            fmt=_fmt_for(args.output, args.format),
            engine=args.engine,
            scheduler=args.scheduler,
            jobs=args.jobs,
            resume_key=args.resume_key,
            from_lists=args.from_list,
            chunk=args.chunk or DEFAULT_CHUNK,
            flush_rows=args.flush_rows,
            progress=args.progress,
        )
    except BatchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; what was written is kept: rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # e.g. the Dask scheduler went away: rows received so far are kept
        print(f"{PROG}: error: {type(exc).__name__}: {exc}; what was written is kept: rerun to resume", file=sys.stderr)
        return 1
    nothing_read = summary.inputs > 0 and summary.unread == summary.written and summary.skipped == 0
    if not args.quiet or nothing_read or summary.unread:
        rate = summary.written / summary.seconds if summary.seconds else 0.0
        unread = f", {summary.unread:,} could not be read" if summary.unread else ""
        if summary.reasons:
            unread += "; without telfhash: " + ", ".join(f"{n:,} {reason_words(k)}" for k, n in summary.reasons.items())
        print(
            f"{PROG}: {plural(summary.inputs, 'file')}: {summary.written:,} written "
            f"({summary.with_digest:,} with a telfhash{unread}), "
            f"{summary.skipped:,} already in {summary.output}; {summary.seconds:.1f} s ({rate:.0f} files/s)",
            file=sys.stderr,
        )
    if summary.inputs == 0 or nothing_read:
        why = "the inputs name no file" if summary.inputs == 0 else "no input could be read"
        print(f"{PROG}: error: {why}", file=sys.stderr)
        return 1
    if summary.failed_chunks:
        return 1
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    from ..batch.partitioned import cluster_results

    _logging(args.quiet)
    t0 = time.perf_counter()
    try:
        info = cluster_results(
            args.results,
            args.output,
            threshold=args.threshold,
            engine=args.engine,
            scheduler=args.scheduler,
            jobs=args.jobs,
            fmt=_fmt_for(args.output, args.format),
        )
    except BatchError as exc:
        print(f"{PROG} cluster: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(
            f"{PROG} cluster: {plural(info['files'], 'file')} with a telfhash ({info['distinct']:,} distinct) in "
            f"{plural(info['clusters'], 'cluster')} ({info['multi']:,} with 2+ files) at threshold {args.threshold}; "
            f"{plural(info['tasks'], 'partition')}; {time.perf_counter() - t0:.1f} s -> {args.output}",
            file=sys.stderr,
        )
    return 0


def add_batch_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "batch",
        help="hash a corpus to resumable JSONL/Parquet, locally or on Dask; 'batch cluster' groups the results",
        description="Hash a corpus into a resumable JSONL file or Parquet folder, locally or on a Dask cluster. "
        "Rerun the same command to resume. 'telfhash batch cluster --help' groups the results.",
        usage="telfhash batch [hash] INPUT... -o OUT [options]\n       telfhash batch cluster RESULTS -o OUT [options]",
    )
    _hash_options(p, top=True)
    p.set_defaults(func=run_hash, inputs=[])
    sub = p.add_subparsers(dest="batch_command", metavar="ACTION", action=_DefaultSubcommand)

    h = sub.add_parser("hash", help="hash INPUT... (the default: 'telfhash batch INPUT...')", prog="telfhash batch")
    h.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="folders (recursive), files, @LIST files, - (list on stdin), URLs"
    )
    _hash_options(h, top=False)
    h.set_defaults(func=run_hash)

    c = sub.add_parser(
        "cluster",
        prog="telfhash batch cluster",
        help="group the digests of a batch output",
        description="Group the digests of a batch output (files within the TLSH distance threshold, "
        "transitively), comparing only pairs whose length codes allow it.",
    )
    c.add_argument(
        "results", metavar="RESULTS", help="a batch output (JSONL file or Parquet folder) or telfhash -f jsonl output"
    )
    c.add_argument(
        "-o", "--output", required=True, help="clusters: JSONL file, or Parquet with --format parquet / a .parquet name"
    )
    c.add_argument("--format", choices=("jsonl", "parquet"), default=None)
    add_threshold(c)
    c.add_argument("--engine", choices=("local", "dask"), default="local")
    c.add_argument("--scheduler", default=None, metavar="ADDR")
    c.add_argument(
        "-j", "--jobs", type=non_negative_int, default=0, help="threads (local) or workers of a new local Dask cluster"
    )
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=run_cluster)
    return p


def main(argv: list[str]) -> int:
    """``telfhash batch ...`` on its own (tests, scripts)."""
    parser = argparse.ArgumentParser(prog="telfhash")
    add_batch_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["batch", *argv])
    return int(args.func(args) or 0)


@hookimpl
def telfhash_commands(subparsers):
    add_batch_parser(subparsers)
