"""The built-in output formats of ``telfhash -f`` and the classes plugins use to add formats.

Kept apart from :mod:`telfhash_core.formats` (which registers them through the plugin hooks) so
that hashing a file with a built-in format imports no plugin machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TextIO

from .result import Result


@dataclass
class FormatContext:
    """What a format may need besides the results."""

    paths: list[str] = field(default_factory=list)  # every path that will produce a result, in order
    options: dict[str, Any] = field(default_factory=dict)  # parsed CLI options (e.g. "extra_fields")


@dataclass
class OutputFormat:
    """A way to print results.  ``write(results, out, ctx)`` consumes the iterable as results arrive.

    ``ordered=False`` lets the CLI hand results over as files finish (streaming); otherwise the
    results arrive in input order.
    """

    name: str
    description: str
    write: Callable[[Iterable[Result], TextIO, FormatContext], None]
    ordered: bool = True


@dataclass
class Exporter:
    """A way to share results/clusters in another ecosystem's format (e.g. STIX 2.1).

    ``export(results, clusters, out, options)`` writes to the binary or text stream ``out``.
    """

    name: str
    description: str
    export: Callable[..., None]


def _write_default(results: Iterable[Result], out: TextIO, ctx: FormatContext) -> None:
    # As the reference: the file name padded to the longest name, two spaces, the value.
    width = max((len(p) for p in ctx.paths), default=0)
    for r in results:
        out.write(f"{r.file:<{width}}  {r.reference_telfhash}\n")
        out.flush()


def _write_tsv(results: Iterable[Result], out: TextIO, ctx: FormatContext) -> None:
    for r in results:
        out.write(f"{r.file}\t{r.reference_telfhash}\n")


def _write_json(results: Iterable[Result], out: TextIO, ctx: FormatContext) -> None:
    # One JSON list, the reference's keys (and ours when asked with --details).
    import json

    rows = [_row(r, ctx) for r in results]
    out.write(json.dumps(rows) + "\n")


def _write_jsonl(results: Iterable[Result], out: TextIO, ctx: FormatContext) -> None:
    import json

    for r in results:
        out.write(json.dumps(_row(r, ctx, details=True)) + "\n")
        out.flush()


def _row(r: Result, ctx: FormatContext, details: bool | None = None) -> dict:
    if details is None:
        details = bool(ctx.options.get("details"))
    return r.to_dict() if details else r.reference_dict()


BUILTIN_FORMATS = [
    OutputFormat("default", "file name and telfhash, aligned (the reference's screen output)", _write_default),
    OutputFormat("tsv", "file<TAB>telfhash per line", _write_tsv),
    OutputFormat("json", "one JSON list of {file, telfhash, msg} (the reference's -f json)", _write_json),
    OutputFormat(
        "jsonl", "one JSON object per line with every field, streamed as files finish", _write_jsonl, ordered=False
    ),
]
