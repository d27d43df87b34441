"""STIX 2.1 export/import of telfhash clusters (``telfhash stix ...``; see docs/stix.md).

>>> from telfhash_plugins.stix import export_bundle, validate_bundle, read_bundle, match_local
>>> bundle = export_bundle(results, clusters)          # dict; dumps(bundle) for the JSON text
>>> validate_bundle(bundle).ok                          # stix2-validator --strict + stix2.parse
>>> report = read_bundle("shared.json")                 # telfhashes named by any STIX 2.1 bundle
>>> match_local(report, ["/samples/a.elf"], threshold=50)
"""

from .export import EXTENSION_ID, ExportError, ExportReport, dumps, export_bundle, extension_definition, file_id
from .importer import (
    BundleError,
    ImportReport,
    LocalMatch,
    add_to_index,
    load_bundle,
    match_local,
    read_bundle,
    search_index,
)
from .taxii import TaxiiError, TaxiiSettings, load_settings, publish, pull
from .validate import ValidationReport, validate_bundle

__all__ = [
    "EXTENSION_ID",
    "BundleError",
    "ExportError",
    "ExportReport",
    "ImportReport",
    "LocalMatch",
    "TaxiiError",
    "TaxiiSettings",
    "ValidationReport",
    "add_to_index",
    "dumps",
    "export_bundle",
    "extension_definition",
    "file_id",
    "load_bundle",
    "load_settings",
    "match_local",
    "publish",
    "pull",
    "read_bundle",
    "search_index",
    "validate_bundle",
]
