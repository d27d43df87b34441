"""The ``telfhash`` command: a drop-in for the reference CLI, plus subcommands from plugins.

``telfhash [-r] [-g] [-t N] [-f FORMAT] [-o FILE] [-j N] PATH...`` hashes files.  A first
argument that names a subcommand (and is not an existing path) runs that subcommand instead:
``telfhash cluster ...``, ``telfhash index ...``; ``telfhash --help`` lists them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
from typing import Iterable, Iterator, TextIO

from . import __version__
from .commands.args import add_progress, add_threshold, non_negative_int
from .formats import FormatContext, available_formats
from .hashing.api import expand_paths, hash_paths
from .plugins import DuplicateNameError, get_plugin_manager
from .progress import PROGRESS_MIN_FILES, Progress
from .result import Result

# Below this many files a process pool costs more than it saves.
PARALLEL_MIN_FILES = 16

__all__ = ["main", "hash_parser", "run_hash", "non_negative_int", "PROGRESS_MIN_FILES"]


def _commands() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="telfhash", description="telfhash subcommands")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    try:
        get_plugin_manager().hook.telfhash_commands(subparsers=sub)
    except argparse.ArgumentError as exc:  # argparse's "conflicting subparser: NAME"
        name = str(exc).rpartition(": ")[2]
        raise DuplicateNameError(f"two plugins offer the command {name!r}; uninstall or disable one of them") from None
    return parser, dict(sub.choices)


def hash_parser(command_names: Iterable[str] = ()) -> argparse.ArgumentParser:
    formats = available_formats()
    epilog = ""
    if command_names:
        epilog = "subcommands (run 'telfhash COMMAND --help'): " + ", ".join(sorted(command_names))
    p = argparse.ArgumentParser(
        prog="telfhash",
        description="Compute the telfhash of ELF files (identical to the reference tool's values).",
        epilog=epilog,
    )
    p.add_argument("-g", "--group", action="store_true", help="group the files whose telfhashes are within the threshold")
    add_threshold(p, "TLSH distance for -g")
    p.add_argument("-r", "--recursive", action="store_true", help="walk folders given as PATH")
    p.add_argument("-o", "--output", default=None, help="write the output to this file instead of stdout")
    p.add_argument(
        "-f", "--format", default=None, choices=sorted(formats), help="output format (default: aligned file and hash)"
    )
    p.add_argument("-j", "--jobs", type=non_negative_int, default=0, help="processes to use (default: all cores; 1 = no pool)")
    p.add_argument("--details", action="store_true", help="-f json: include reason, arch, method, size... per file")
    p.add_argument("--sha256", action="store_true", help="also compute each file's SHA-256 (json/jsonl)")
    p.add_argument(
        "--field",
        dest="fields",
        action="append",
        default=[],
        metavar="NAME",
        help="add an opt-in per-file field from a plugin (json/jsonl), e.g. --field telfhash_x",
    )
    add_progress(p)
    p.add_argument("-d", "--debug", action="store_true", help="print why files have no telfhash (stderr)")
    p.add_argument("-v", "--version", action="version", version=f"%(prog)s {__version__} (telfhash-core)")
    p.add_argument("files", nargs="+", metavar="PATH", help="ELF files (wildcards accepted) or, with -r, folders")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except DuplicateNameError as exc:  # two plugins offer one name: refuse, say which
        print(f"telfhash: error: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd_parser, commands = _commands()
    if argv and argv[0] in commands and not os.path.exists(argv[0]):
        args = cmd_parser.parse_args(argv)
        return int(args.func(args) or 0)
    args = hash_parser(commands).parse_args(argv)
    return run_hash(args)


def _progress(results: Iterator[Result], bar: Progress) -> Iterator[Result]:
    with bar:
        for r in results:
            bar.update(1, r)
            yield r


def _in_input_order(finished: Iterator[Result], files: list[str], bar: Progress) -> Iterator[Result]:
    """Results as files finish (the bar moves with the work, not behind one slow file), handed on
    in input order (the output is the reference's)."""
    positions: dict[str, collections.deque[int]] = {}
    for i, f in enumerate(files):
        positions.setdefault(f, collections.deque()).append(i)
    waiting: dict[int, Result] = {}
    nxt = 0
    with bar:
        for r in finished:
            bar.update(1, r)
            waiting[positions[r.file].popleft()] = r
            while nxt in waiting:
                yield waiting.pop(nxt)
                nxt += 1


def run_hash(args: argparse.Namespace) -> int:
    # the walk is counted first (a counter on a terminal), then the bar has its total
    bar = Progress(None, enabled=args.progress)
    files = expand_paths(
        args.files, args.recursive, on_error=lambda m: bar.write(f"telfhash: {m}"), on_file=bar.found
    )
    bar.set_total(len(files))
    if not files:
        bar.close(summary=False)
        print("No files found", file=sys.stderr)
        return 1
    fmt = available_formats()[args.format or "default"]
    jobs = args.jobs or (os.cpu_count() or 1)
    if len(files) < PARALLEL_MIN_FILES:
        jobs = 1
    collected: list[Result] = []

    def stream() -> Iterator[Result]:
        # a pool hands results over as they finish; ordered formats get them back in input order
        results = hash_paths(
            files, jobs=jobs, ordered=jobs == 1, sha256=args.sha256, fields=args.fields, options=vars(args)
        )
        ordered = _in_input_order(results, files, bar) if fmt.ordered and jobs > 1 else _progress(results, bar)
        for r in ordered:
            if args.debug and not r.ok:
                print(f"{r.file}: {r.detail or r.msg}", file=sys.stderr)
            if args.group:
                collected.append(r)
            yield r

    ctx = FormatContext(paths=files, options=vars(args))
    with _open_output(args.output) as out:
        fmt.write(stream(), out, ctx)
        to_stdout = out is sys.stdout
        if args.group and len(collected) > 1:
            from .similarity.cluster import print_groups

            print_groups(collected, args.threshold, sys.stdout)
        if to_stdout and fmt.name in ("default", "tsv", "json"):
            print()  # the reference ends its output with an empty line
    return 0


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[TextIO]:
    if path is None or path == "-":
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as fh:
        yield fh


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
