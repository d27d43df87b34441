"""The hooks through which plugins (and the core's own built-ins) extend telfhash-core.

Every hook is optional for a plugin.  Third-party plugins register through the ``telfhash``
entry-point group; see :mod:`telfhash_core.plugins`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("telfhash")
hookimpl = pluggy.HookimplMarker("telfhash")


@hookspec
def telfhash_result(result, options):
    """Called once for every file result, in the process that collects results; may add to ``result.extra``."""


@hookspec
def telfhash_fields():
    """Return ``{name: compute(buf, result) -> value}``: opt-in per-file fields computed from the file's bytes
    in the hashing process (asked for with ``hash_file(..., fields=[name])`` or ``telfhash --field NAME``)."""


@hookspec
def telfhash_output_formats():
    """Return a list of :class:`telfhash_core.formats.OutputFormat` this plugin offers to ``telfhash -f``."""


@hookspec
def telfhash_exporters():
    """Return a list of :class:`telfhash_core.formats.Exporter` (clusters/results to a shareable file)."""


@hookspec
def telfhash_commands(subparsers):
    """Add subcommands to the ``telfhash`` CLI: ``subparsers.add_parser(...)`` and ``set_defaults(func=...)``."""
