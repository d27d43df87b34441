"""Check a bundle the way its consumers will: ``stix2-validator`` (strict) and ``stix2.parse``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ValidationReport:
    """``errors``/``warnings``: ``"<object id>: <message>"`` from stix2-validator; ``parse_error``:
    why ``stix2.parse`` (without ``allow_custom``) refused the bundle, or None."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    parse_error: str | None = None
    custom_content: bool = False  # parse only succeeded with allow_custom=True

    @property
    def ok(self) -> bool:
        return not self.errors and not self.warnings and self.parse_error is None

    def lines(self) -> list[str]:
        out = [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        if self.parse_error:
            out.append(f"stix2.parse: {self.parse_error}")
        elif self.custom_content:
            out.append("stix2.parse: accepted only with allow_custom=True (custom content)")
        return out


def validate_bundle(bundle: dict, *, strict: bool = True) -> ValidationReport:
    """Validate ``bundle`` (a dict) with stix2-validator (``--strict`` by default) and parse it
    with ``stix2.parse(allow_custom=False)``."""
    from stix2validator import ValidationOptions, validate_parsed_json

    report = ValidationReport()
    try:
        results = validate_parsed_json(bundle, ValidationOptions(strict=strict, version="2.1"))
    except Exception as exc:  # the validator itself failed on this input
        report.errors.append(f"validator: {type(exc).__name__}: {exc}")
        results = []
    for r in results if isinstance(results, list) else [results]:
        oid = getattr(r, "object_id", "") or "bundle"
        for e in getattr(r, "errors", None) or []:
            report.errors.append(_line(oid, getattr(e, "message", None) or e))
        for w in getattr(r, "warnings", None) or []:
            report.warnings.append(_line(oid, getattr(w, "message", None) or w))
    report.parse_error, report.custom_content = _parse(bundle)
    return report


def _line(oid: str, message) -> str:
    text = str(message)
    # the validator's messages usually start with the object's id already
    return text if "--" in text.split(" ", 1)[0] else f"{oid}: {text}"


def _parse(bundle: Any) -> tuple[str | None, bool]:
    import stix2

    try:
        stix2.parse(bundle, allow_custom=False)
        return None, False
    except Exception as exc:
        first = f"{type(exc).__name__}: {exc}"
    try:
        stix2.parse(bundle, allow_custom=True)
    except Exception:
        return first, False
    return first, True
