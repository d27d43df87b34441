"""The hooks through which plugins (and the core's own built-ins) extend telfhash-core.

Every hook is optional for a plugin.  Third-party plugins register through the ``telfhash``
entry-point group; see :mod:`telfhash_core.plugins`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("telfhash")
hookimpl = pluggy.HookimplMarker("telfhash")


@hookspec
def telfhash_result(result):
    """Called once for every file result, in the process that collects results; may add to ``result.extra``."""


@hookspec
def telfhash_output_formats():
    """Return a list of :class:`telfhash_core.formats.OutputFormat` this plugin offers to ``telfhash -f``."""


@hookspec
def telfhash_exporters():
    """Return a list of :class:`telfhash_core.formats.Exporter` (clusters/results to a shareable file)."""


@hookspec
def telfhash_commands(subparsers):
    """Add subcommands to the ``telfhash`` CLI: ``subparsers.add_parser(...)`` and ``set_defaults(func=...)``."""
