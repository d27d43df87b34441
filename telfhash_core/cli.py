"""The ``telfhash`` command: a drop-in for the reference CLI, plus subcommands from plugins.

``telfhash [-r] [-g] [-t N] [-f FORMAT] [-o FILE] [-j N] PATH...`` hashes files.  A first
argument that names a subcommand runs that subcommand (``telfhash cluster ...``, ``telfhash
index ...``; ``telfhash --help`` lists them), even where a file of that name exists: write
``./cluster`` to hash the file.  A first word close to a subcommand's name that is no file gets
"did you mean".

Exit status: 0 when the paths were processed (a file without telfhash is a result, not an
error), 1 when there was nothing to hash or the output could not be written, 2 for usage errors.

Start-up is kept below the reference's: plain hashing imports neither NumPy nor pyelftools for a
small file, starts no process pool for a small job, and loads no plugin manager unless a
third-party plugin is installed; ``telfhash index ...`` and the other built-in subcommands load
their own module only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import sys
from collections import Counter
from typing import Iterable, Iterator, TextIO

from . import __version__
from .commands.args import add_progress, add_threshold, non_negative_int
from .hashing.api import expand_paths, hash_paths
from .outputs import BUILTIN_FORMATS, FormatContext, OutputFormat
from .plugins import DuplicateNameError, get_plugin_manager, hashing_needs_plugins
from .progress import PROGRESS_MIN_FILES, Progress, plural, reason_words
from .result import Result

# Below this many files a process pool costs more than it saves.
PARALLEL_MIN_FILES = 16

__all__ = ["main", "hash_parser", "run_hash", "non_negative_int", "PROGRESS_MIN_FILES"]


# The built-in subcommands and the modules that define them (through ``telfhash_commands``),
# known without importing them: ``telfhash index ...`` imports the index command's module only.
BUILTIN_COMMANDS = {
    "batch": "telfhash_core.commands.batch",
    "cluster": "telfhash_core.commands.cluster",
    "index": "telfhash_core.commands.index",
    "plugins": "telfhash_core.commands.plugins",
    "export": "telfhash_core.commands.plugins",
}

# A first argument that could be a subcommand's name (a path has a "/" or "." or is not a word).
_COMMAND_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


def _formats(plugins: bool) -> dict[str, OutputFormat]:
    if not plugins:
        return {f.name: f for f in BUILTIN_FORMATS}
    from .formats import available_formats

    return available_formats()


def _commands(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The subcommand parser: every plugin's commands, or ``only`` the named built-in's (when no
    third-party plugin could offer a command of the same name)."""
    parser = argparse.ArgumentParser(prog="telfhash", description="telfhash subcommands")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if only is not None and only in BUILTIN_COMMANDS and not hashing_needs_plugins():
        import importlib

        importlib.import_module(BUILTIN_COMMANDS[only]).telfhash_commands(subparsers=sub)
        return parser, dict(sub.choices)
    try:
        get_plugin_manager().hook.telfhash_commands(subparsers=sub)
    except argparse.ArgumentError as exc:  # argparse's "conflicting subparser: NAME"
        name = str(exc).rpartition(": ")[2]
        raise DuplicateNameError(f"two plugins offer the command {name!r}; uninstall or disable one of them") from None
    return parser, dict(sub.choices)


def hash_parser(command_names: Iterable[str] = (), *, plugins: bool = True) -> argparse.ArgumentParser:
    formats = _formats(plugins)
    epilog = ""
    if command_names:
        epilog = "subcommands (run 'telfhash COMMAND --help'): " + ", ".join(sorted(command_names))
    p = argparse.ArgumentParser(
        prog="telfhash",
        description="Compute the telfhash of ELF files (identical to the reference tool's values).",
        epilog=epilog,
    )
    p.add_argument(
        "-g", "--group", action="store_true", help="group the files whose telfhashes are within the threshold"
    )
    add_threshold(p, "TLSH distance for -g")
    p.add_argument("-r", "--recursive", action="store_true", help="walk folders given as PATH")
    p.add_argument("-o", "--output", default=None, help="write the output to this file instead of stdout")
    p.add_argument(
        "-f", "--format", default=None, choices=sorted(formats), help="output format (default: aligned file and hash)"
    )
    p.add_argument(
        "-j", "--jobs", type=non_negative_int, default=0, help="processes to use (default: all cores; 1 = no pool)"
    )
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
    # Nothing here multiplies matrices, yet OpenBLAS (loaded with NumPy) starts a thread per core
    # that costs about 0.1 CPU-s per command (e.g. `index search`); one BLAS thread unless the user
    # chose otherwise.  Set before NumPy is first imported (it is imported lazily).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        return _main(argv)
    except DuplicateNameError as exc:  # two plugins offer one name: refuse, say which
        print(f"telfhash: error: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands: dict[str, argparse.ArgumentParser] = {}
    if argv and _COMMAND_WORD.match(argv[0]):
        cmd_parser, commands = _commands(argv[0])
        if argv[0] in commands:  # a subcommand wins over a file of that name (./NAME hashes the file)
            args = cmd_parser.parse_args(argv)
            return int(args.func(args) or 0)
        if argv[0] in BUILTIN_COMMANDS:  # registered under another name: ask every plugin
            cmd_parser, commands = _commands()
        if not os.path.lexists(argv[0]):
            import difflib

            close = difflib.get_close_matches(argv[0], list(commands), n=1, cutoff=0.6)
            if close:
                print(
                    f"telfhash: '{argv[0]}' is neither a subcommand nor a file; did you mean 'telfhash {close[0]}'?",
                    file=sys.stderr,
                )
                return 2
    plugins = hashing_needs_plugins()
    if not commands and (plugins or any(a in ("-h", "--help") for a in argv)):
        commands = _commands()[1]  # with third-party plugins: their command names are checked too
    parser = hash_parser(commands, plugins=plugins)
    args = parser.parse_args(argv)
    _check_options(parser, args)
    return run_hash(args, plugins=plugins or bool(args.fields))


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that would be silently ignored, and unknown field names."""
    fmt = args.format or "default"
    if fmt in ("default", "tsv", "json", "jsonl"):
        for flag, given in (("--sha256", args.sha256), ("--field", bool(args.fields)), ("--details", args.details)):
            if not given:
                continue
            if fmt in ("default", "tsv") or (fmt == "json" and flag != "--details" and not args.details):
                hint = "-f jsonl, or -f json --details" if flag != "--details" else "-f json"
                where = "the default format" if fmt == "default" else "-f " + fmt
                parser.error(f"{flag} has no effect with {where}; use {hint}")
            if fmt == "jsonl" and flag == "--details":
                print(
                    "telfhash: warning: --details has no effect with -f jsonl (it always has every field)",
                    file=sys.stderr,
                )
    if args.fields:
        from .plugins import field_functions

        known = field_functions()
        unknown = [f for f in args.fields if f not in known]
        if unknown:
            names = ", ".join(sorted(known)) or "none installed"
            parser.error(f"unknown --field {', '.join(unknown)} (known: {names})")


def reasons_line(reasons: Counter, debug: bool) -> str:
    """``3 files without telfhash (2 not ELF, 1 not found); -d for details``."""
    total = sum(reasons.values())
    parts = ", ".join(f"{n:,} {reason_words(r)}" for r, n in reasons.most_common())
    return f"{plural(total, 'file')} without telfhash ({parts})" + ("" if debug else "; -d for details")


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


def run_hash(args: argparse.Namespace, *, plugins: bool = True) -> int:
    """Hash the paths of ``args``.  ``plugins=False``: no plugin is installed that hashing would
    call (see :func:`telfhash_core.plugins.hashing_needs_plugins`), so none is loaded."""
    # the walk is counted first (a counter on a terminal), then the bar has its total
    bar = Progress(None, enabled=args.progress)
    files = expand_paths(args.files, args.recursive, on_error=lambda m: bar.write(f"telfhash: {m}"), on_file=bar.found)
    bar.set_total(len(files))
    if not files:
        bar.close(summary=False)
        print("No files found", file=sys.stderr)
        return 1
    fmt = _formats(plugins)[args.format or "default"]
    jobs = args.jobs or (os.cpu_count() or 1)
    if len(files) < PARALLEL_MIN_FILES:
        jobs = 1
    collected: list[Result] = []
    reasons: Counter = Counter()
    # Each "-" (or tnull) of the screen formats gets a reason on a terminal, stdout unchanged.
    summarize = fmt.name in ("default", "tsv") and (args.debug or _isatty(sys.stderr))

    def stream() -> Iterator[Result]:
        # a pool hands results over as they finish; ordered formats get them back in input order
        results = hash_paths(
            files, jobs=jobs, ordered=jobs == 1, sha256=args.sha256, fields=args.fields, options=vars(args)
        )
        ordered = _in_input_order(results, files, bar) if fmt.ordered and jobs > 1 else _progress(results, bar)
        for r in ordered:
            if not r.ok:
                reasons[r.reason.value if r.reason else "unknown"] += 1
                if args.debug:
                    print(f"{r.file}: {r.detail or r.msg}", file=sys.stderr)
            if args.group:
                collected.append(r)
            yield r

    ctx = FormatContext(paths=files, options=vars(args))
    try:
        with _open_output(args.output) as out:
            fmt.write(stream(), out, ctx)
            to_stdout = out is sys.stdout
            if args.group and len(collected) > 1:
                from .similarity.cluster import print_groups

                print_groups(collected, args.threshold, sys.stdout)
            if to_stdout and fmt.name in ("default", "tsv", "json"):
                print()  # the reference ends its output with an empty line
    except OSError as exc:
        if args.output is None or args.output == "-":
            raise
        print(f"telfhash: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if summarize and reasons and not bar.was_shown:  # a bar leaves its own summary line
        sys.stdout.flush()
        print(reasons_line(reasons, args.debug), file=sys.stderr)
    return 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[TextIO]:
    if path is None or path == "-":
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as fh:
        yield fh


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
