"""The Assemblyline 4 service: telfhash results for Linux ELF files.

Assemblyline hands the service one file per task (submitted files and the ELF children that
other services extract alike) and expects a result in its own model; this module turns the
:mod:`.analysis` of a file into result sections, tags and heuristics. The runtime loads the
class named by ``SERVICE_PATH=telfhash_plugins.assemblyline.service.Telfhash`` and reads
``service_manifest.yml`` from the working directory (see the Dockerfile and docs/assemblyline.md).

Whatever the file holds, :meth:`Telfhash.execute` ends with a result: a file without a telfhash,
a file over the size or time limit, an unreadable index and an internal error each get a section
that says so.
"""

from __future__ import annotations

from typing import Any

from assemblyline_v4_service.common.base import ServiceBase
from assemblyline_v4_service.common.request import ServiceRequest
from assemblyline_v4_service.common.result import (
    Heuristic,
    Result,
    ResultKeyValueSection,
    ResultSection,
    ResultTableSection,
    TableRow,
)

from .analysis import (
    Analysis,
    IndexReader,
    Settings,
    clean_label,
    hash_with_budget,
    related_in_submission,
    remember,
)

SEEN_KEY = "telfhash_files"  # temporary submission data: the submission's hashed ELF files

HEUR_SIMILAR = 1
HEUR_KNOWN = 2

TAG_LSH = "file.lsh"
TAG_FAMILY = "attribution.family"


class Telfhash(ServiceBase):
    """telfhash, its cross-CPU companion value and the nearest indexed samples of an ELF file."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.settings = Settings.from_config(self.config)
        self._index = IndexReader(self.settings.index_path) if self.settings.index_path else None

    def start(self) -> None:
        for problem in self.settings.problems:
            self.log.warning("configuration: %s", problem)
        self.log.info(
            "telfhash service: index=%s threshold=%d max_neighbours=%d max_file_size=%d time_budget=%gs companion=%s",
            self.settings.index_path or "(none)",
            self.settings.threshold,
            self.settings.max_neighbours,
            self.settings.max_file_size,
            self.settings.time_budget,
            self.settings.companion,
        )

    def stop(self) -> None:
        if self._index is not None:
            self._index.close()

    def execute(self, request: ServiceRequest) -> None:
        result = Result()
        request.result = result
        # fetching the file is the runtime's business: when that fails, the task fails as a
        # service error (which Assemblyline retries), not as a finding about the file
        path = request.file_path
        try:
            self._analyse(request, result, path)
        except Exception as exc:  # never let a bad file or a bug fail the task: say what happened
            self.log.exception("telfhash: unexpected error")
            result.sections.clear()
            section = ResultKeyValueSection("telfhash: internal error")
            section.set_item("error", f"{type(exc).__name__}: {exc}"[:1000])
            section.set_item("file", str(request.file_name)[:1000])
            result.add_section(section)

    # -- the work

    def _analyse(self, request: ServiceRequest, result: Result, path: str) -> None:
        name = str(request.file_name or request.sha256)
        analysis = hash_with_budget(path, name, self.settings)
        if self._index is not None and not analysis.timed_out:
            self._index.annotate(analysis, request.sha256, self.settings)

        result.add_section(hash_section(analysis, self.settings))
        if self.settings.problems:
            notes = ResultSection("telfhash: configuration problems")
            notes.add_lines(self.settings.problems)
            result.add_section(notes)
        if self._index is not None:
            for section in index_sections(analysis, self.settings):
                result.add_section(section)

        seen = request.temp_submission_data.get(SEEN_KEY)
        related = related_in_submission(analysis.result.telfhash, seen, request.sha256)
        if related:
            result.add_section(related_section(related, self.settings.threshold))
        if analysis.result.telfhash:
            request.temp_submission_data[SEEN_KEY] = remember(seen, request.sha256, name, analysis.result.telfhash)


# ----------------------------------------------------------------------------- sections


def hash_section(analysis: Analysis, settings: Settings) -> ResultKeyValueSection:
    """telfhash as the reference prints it, the companion value, method and architecture; the
    reason where there is no telfhash."""
    r = analysis.result
    section = ResultKeyValueSection("telfhash" if r.telfhash else "telfhash: none")
    section.set_item("telfhash", r.reference_telfhash)
    section.set_item("telfhash_x", analysis.telfhash_x or "-")
    section.set_item("method", r.method or "-")
    section.set_item("architecture", r.arch or "-")
    if r.telfhash:
        section.set_item("symbols", r.symbols)
        section.add_tag(TAG_LSH, r.telfhash)
    else:
        if analysis.timed_out:
            section.set_item("reason", "timeout")
            section.set_item("detail", f"not hashed within the time budget of {settings.time_budget:g} s")
        else:
            section.set_item("reason", r.reason.value if r.reason else "unknown")
            section.set_item("detail", r.detail or "-")
            if r.msg:
                section.set_item("reference message", r.msg)
    if analysis.telfhash_x:
        section.add_tag(TAG_LSH, analysis.telfhash_x)
    return section


def index_sections(analysis: Analysis, settings: Settings) -> list[ResultSection]:
    """The file's own index entry (with its label), the nearest indexed samples, and the
    heuristic for labelled samples within the threshold."""
    out: list[ResultSection] = []
    if analysis.index_note:
        note = ResultSection("telfhash index: not searched")
        note.add_line(analysis.index_note)
        return [note]
    own = analysis.own_entry
    own_label = clean_label(own.get("label")) if own else None
    if own is not None:
        known = ResultKeyValueSection("telfhash index: this file is a known sample")
        known.set_item("sha256", str(own.get("sha256") or ""))
        known.set_item("label", own_label or "-")
        known.set_item("source", str(own.get("source") or "-"))
        known.set_item("added", str(own.get("added") or "-"))
        if own_label:
            known.set_heuristic(Heuristic(HEUR_KNOWN, signature="telfhash_known_labelled_sample"))
            known.add_tag(TAG_FAMILY, own_label)
        out.append(known)
    if not analysis.result.telfhash and not analysis.telfhash_x:
        return out

    title = f"telfhash index: {len(analysis.neighbours)} known sample(s) within distance {settings.threshold}"
    table = ResultTableSection(title)
    for n in analysis.neighbours:
        table.add_row(
            TableRow(
                distance=n.distance,
                by=n.by,
                label=n.label or "-",
                arch=n.arch or "-",
                sha256=n.sha256,
                source=n.source or "-",
            )
        )
    if not analysis.neighbours:
        table = ResultTableSection(f"telfhash index: no known sample within distance {settings.threshold}")
    out.append(table)

    labelled = analysis.labelled(settings.threshold)
    if labelled:
        similar = ResultSection(f"Similar to labelled sample(s): {', '.join(sorted(labelled))}")
        for label, distance in sorted(labelled.items(), key=lambda kv: (kv[1], kv[0])):
            similar.add_line(f"{label}: distance {distance}")
            similar.add_tag(TAG_FAMILY, label)
        similar.set_heuristic(Heuristic(HEUR_SIMILAR, signature="telfhash_similar_labelled_sample"))
        table.add_subsection(similar)
    return out


def related_section(related: list[dict[str, Any]], threshold: int) -> ResultTableSection:
    """Distances to the other ELF files of the same submission (its parent and siblings)."""
    section = ResultTableSection("telfhash: other ELF files of this submission")
    for item in related:
        section.add_row(
            TableRow(
                distance=item["distance"],
                near="yes" if item["distance"] <= threshold else "no",
                name=item["name"] or "-",
                sha256=item["sha256"],
            )
        )
    return section
