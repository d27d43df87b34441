"""Output formats for ``telfhash -f``: the built-in ones (:mod:`telfhash_core.outputs`) registered
through the hooks, and the lookup of every format and exporter the installed plugins offer."""

from __future__ import annotations

from .hookspecs import hookimpl
from .outputs import BUILTIN_FORMATS, Exporter, FormatContext, OutputFormat

__all__ = ["BUILTIN_FORMATS", "Exporter", "FormatContext", "OutputFormat", "available_exporters", "available_formats"]


@hookimpl
def telfhash_output_formats():
    return BUILTIN_FORMATS


def available_formats() -> dict[str, OutputFormat]:
    """Every output format offered by the core and the installed plugins, by name."""
    from .plugins import by_name, get_plugin_manager

    return by_name(get_plugin_manager().hook.telfhash_output_formats(), "output format")


def available_exporters() -> dict[str, Exporter]:
    """Every exporter offered by the installed plugins, by name."""
    from .plugins import by_name, get_plugin_manager

    return by_name(get_plugin_manager().hook.telfhash_exporters(), "exporter")
