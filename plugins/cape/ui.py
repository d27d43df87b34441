"""Make telfhash visible in CAPE's web UI, HTML report and search (``telfhash-cape install --ui``).

CAPE offers no hook for extra rows in its file-info panels, extra overview panels or extra
search terms: templates and the search-term map are plain files of the checkout.  So this
module applies small, marked insertions to four of CAPE's files and writes one template of its
own:

* ``web/templates/analysis/generic/_file_info.html`` and ``data/html/generic/_file_info.html``:
  a ``telfhash`` row after the ``TLSH`` row, shown only for a real digest (not ``-``/``tnull``);
* ``web/templates/analysis/overview/index.html``: includes the summary panel
  (``web/templates/analysis/overview/_telfhash.html``, ours) after the statistics panel;
* ``lib/cuckoo/common/web_utils.py``: ``telfhash`` in ``hash_searches`` and
  ``search_term_map_repetetive_blocks``, like ``ssdeep`` (search ``telfhash:t1...``);
* ``custom/analysis_services.py`` (CAPE's own hook, written only when absent): ``CUSTOM_SERVICES``
  names ``telfhash``, so the report page loads the summary from MongoDB.

Each insertion goes right after an *anchor* (lines of CAPE's own text that must occur exactly
once) and is wrapped in marker lines.  ``apply`` refuses, changing nothing, when an anchor is
missing or ambiguous (CAPE changed those lines); ``revert`` removes exactly the inserted text and
refuses for a file whose insertion was edited.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

TAG = "telfhash-cape"
PANEL_REL = Path("web/templates/analysis/overview/_telfhash.html")
PANEL_MARKER = "{# managed-by: telfhash-cape (install --ui); removed by uninstall #}"
# CAPE's hook for extra report keys: web/analysis/views.py imports CUSTOM_SERVICES from
# custom/analysis_services.py and adds each to the fields the report page loads from MongoDB
# (its projection names the keys it shows; "telfhash" is not among them)
SERVICES_REL = Path("custom/analysis_services.py")
SERVICES_MARKER = "# managed-by: telfhash-cape (install --ui); removed by uninstall"
SERVICES_TEXT = f'''{SERVICES_MARKER}
"""Report keys CAPE's web UI loads in addition to its own (web/analysis/views.py, report()).

"telfhash": the summary the telfhash processing module stores, shown by the overview panel.
It is not an on-demand service: handle_custom_service() computes nothing, so CAPE's on_demand
view stores nothing and the summary is never overwritten.
"""

CUSTOM_SERVICES = ["telfhash"]


def handle_custom_service(service, task_id, sha256):
    return None, service
'''


@dataclass(frozen=True)
class Patch:
    rel: str  # file, relative to the CAPE root
    anchor: str  # CAPE's text; the insertion goes right after it
    block: str  # inserted text (marker lines included)
    what: str


def _tpl_block(body: str) -> str:
    return f"{{# {TAG} BEGIN: added by telfhash-cape install --ui #}}\n{body}{{# {TAG} END #}}\n"


_ROW_WEB = """            {% if file.telfhash and file.telfhash != "-" and file.telfhash != "tnull" %}
            <tr>
                <th class="text-end text-info">telfhash</th>
                <td class="text-monospace text-break">{{file.telfhash}}</td>
            </tr>
            {% endif %}
"""

_ROW_HTML = """        {% if file.telfhash and file.telfhash != "-" and file.telfhash != "tnull" %}
        <tr>
            <th>telfhash</th>
            <td style="word-wrap: break-word;">{{file.telfhash}}</td>
        </tr>
        {% endif %}
"""

_INCLUDE_PANEL = """{% if analysis.telfhash.files %}
    {% include "analysis/overview/_telfhash.html" %}
{% endif %}
"""

PATCHES: tuple[Patch, ...] = (
    Patch(
        "web/templates/analysis/generic/_file_info.html",
        """            {% if file.tlsh %}
            <tr>
                <th class="text-end text-info">TLSH</th>
                <td class="text-monospace text-break">{{file.tlsh}}</td>
            </tr>
            {% endif %}
""",
        _tpl_block(_ROW_WEB),
        "telfhash row in the web UI's file-info panel",
    ),
    Patch(
        "data/html/generic/_file_info.html",
        """        {% if file.tlsh %}
        <tr>
            <th>TLSH</th>
            <td style="word-wrap: break-word;">{{file.tlsh}}</td>
        </tr>
        {% endif %}
""",
        _tpl_block(_ROW_HTML),
        "telfhash row in the HTML report's file-info table",
    ),
    Patch(
        "web/templates/analysis/overview/index.html",
        """{% if analysis.statistics %}
    {% include "analysis/overview/_statistics.html" %}
{% endif %}
""",
        _tpl_block(_INCLUDE_PANEL),
        "telfhash summary panel on the overview tab",
    ),
    Patch(
        "lib/cuckoo/common/web_utils.py",
        """hash_searches = {
    "ssdeep": "ssdeep",
""",
        f'    "telfhash": "telfhash",  # {TAG}: file search\n',
        "telfhash searchable in the files collection",
    ),
    Patch(
        "lib/cuckoo/common/web_utils.py",
        """search_term_map_repetetive_blocks = {
    "ssdeep": "ssdeep",
""",
        f'    "telfhash": "telfhash",  # {TAG}: search term\n',
        "telfhash as a search term",
    ),
)

PANEL_TEXT = (
    PANEL_MARKER
    + """
{% with t=analysis.telfhash %}
<section id="telfhash" class="mb-4">
  <div class="card bg-dark border-secondary">
    <div class="card-header border-secondary d-flex justify-content-between align-items-center">
      <h5 class="mb-0 text-white"><i class="fas fa-project-diagram me-2 text-info"></i> telfhash (ELF files)</h5>
      <span class="small text-muted">
        {{ t.elf_files|default:0 }} ELF files, {{ t.hashed|default:0 }} hashed,
        threshold {{ t.threshold }}{% if t.index.entries %}, index of {{ t.index.entries }}{% endif %}
      </span>
    </div>
    <div class="card-body p-0">
      <table class="table table-dark table-striped table-sm mb-0" style="table-layout: fixed;">
        <thead><tr>
          <th style="width: 22%;">File</th><th style="width: 12%;">Arch</th>
          <th>telfhash</th><th style="width: 26%;">Known neighbours</th>
        </tr></thead>
        <tbody>
        {% for f in t.files %}
          <tr>
            <td class="text-break">
              {{ f.name|default:f.sha256 }}<br><span class="small text-muted">{{ f.where|join:", " }}</span>
              {% if f.detection %}<br><span class="badge bg-danger">detection: {{ f.detection.family }}</span>
              {% endif %}
            </td>
            <td>{{ f.arch|default:"" }}</td>
            <td class="text-monospace text-break small">
              {% if f.telfhash %}{{ f.telfhash }}{% else %}<span class="text-warning">{{ f.error }}</span>
              {% if f.detail %} <span class="text-muted">({{ f.detail }})</span>{% endif %}{% endif %}
            </td>
            <td class="small">
              {% for k in f.known %}<div>
                <span class="badge bg-secondary">{{ k.distance }}</span>
                {% if k.label %}<span class="badge bg-danger">{{ k.label }}</span>{% endif %}
                <span class="text-monospace">{{ k.sha256|slice:":16" }}</span>
                {% if k.source %}<span class="text-muted">{{ k.source }}</span>{% endif %}
              </div>{% empty %}<span class="text-muted">none</span>{% endfor %}
            </td>
          </tr>
        {% endfor %}
        </tbody>
      </table>
      {% if t.groups %}
      <div class="p-3">
        <h6 class="text-white">Groups (TLSH distance &le; {{ t.threshold }})</h6>
        {% for g in t.groups %}
          <div class="mb-2">
            <span class="badge bg-info text-dark">{{ g.size }} files, max distance {{ g.max_distance }}</span>
            {% for m in g.members %}
              <span class="badge bg-dark border border-secondary ms-1">{{ m.name|default:m.sha256 }}</span>
            {% endfor %}
          </div>
        {% endfor %}
      </div>
      {% endif %}
      {% if t.errors %}
      <div class="p-3 small text-warning">{% for e in t.errors %}<div>{{ e }}</div>{% endfor %}</div>
      {% endif %}
    </div>
  </div>
</section>
{% endwith %}
"""
)


class UIError(Exception):
    """A patch cannot be applied or reverted; nothing was changed."""


def _read(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    except FileNotFoundError:
        raise UIError(f"{path}: not found (not a CAPEv2 checkout of a supported layout?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UIError(f"{path}: cannot read ({exc})") from None


def _write(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=".telfhash-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def patch_state(text: str, p: Patch) -> str:
    """``applied``, ``ready`` (anchor found once, not applied), ``changed`` (anchor missing or
    ambiguous) or ``edited`` (our marker is there but the inserted text is not as written)."""
    if p.anchor + p.block in text:
        return "applied" if text.count(p.anchor + p.block) == 1 else "changed"
    n = text.count(p.anchor)
    if n != 1:
        return "changed"
    after = text[text.index(p.anchor) + len(p.anchor) :][: len(p.block) + 80]
    first = after.split("\n", 1)[0]
    return "edited" if TAG in first or f"{TAG} END" in after else "ready"


def _plan(root: Path) -> dict[Path, str]:
    files: dict[Path, str] = {}
    for p in PATCHES:
        path = root / p.rel
        if path not in files:
            files[path] = _read(path)
    return files


def status(root: str | os.PathLike) -> list[tuple[Patch, str]]:
    r = Path(root)
    out = []
    for p in PATCHES:
        try:
            out.append((p, patch_state(_read(r / p.rel), p)))
        except UIError:
            out.append((p, "missing"))
    return out


def apply(root: str | os.PathLike) -> list[str]:
    """Insert every block (idempotent) and write the panel template; raises :class:`UIError`
    before writing anything when any target changed."""
    r = Path(root)
    files = _plan(r)
    problems, new = [], dict(files)
    for p in PATCHES:
        path = r / p.rel
        st = patch_state(new[path], p)
        if st == "ready":
            new[path] = new[path].replace(p.anchor, p.anchor + p.block, 1)
        elif st != "applied":
            problems.append(
                f"{path}: {p.what}: the lines to patch after have {'been edited' if st == 'edited' else 'changed'}"
            )
    panel = r / PANEL_REL
    if panel.exists() and not _read(panel).startswith(PANEL_MARKER):
        problems.append(f"{panel}: a file not written by telfhash-cape is in the way")
    services = r / SERVICES_REL
    own_services = services.parent.is_dir() and (not services.exists() or _read(services).startswith(SERVICES_MARKER))
    if problems:
        raise UIError("refusing to patch CAPE's UI (nothing changed): " + "; ".join(problems))
    done = []
    for path, text in new.items():
        if text != files[path]:
            _write(path, text)
            done.append(f"patched {path}")
        else:
            done.append(f"{path}: already patched")
    _write(panel, PANEL_TEXT)
    done.append(f"wrote {panel}")
    if own_services:
        _write(services, SERVICES_TEXT)
        done.append(f"wrote {services} (the report page loads the telfhash summary)")
    elif not services.exists() or ('"telfhash"' not in _read(services) and "'telfhash'" not in _read(services)):
        done.append(
            f'note: {services} is your own file: add "telfhash" to its CUSTOM_SERVICES, or the report page '
            "does not load the summary and the telfhash panel stays hidden (the rows and search work without it)"
        )
    return done


def revert(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Remove our insertions and panel; ``(done, refused)``.  A file whose insertion was edited
    is left as it is and listed in ``refused``."""
    r = Path(root)
    done: list[str] = []
    refused: list[str] = []
    by_file: dict[Path, list[Patch]] = {}
    for p in PATCHES:
        by_file.setdefault(r / p.rel, []).append(p)
    for path, patches in by_file.items():
        try:
            text = _read(path)
        except UIError:
            continue
        new, bad = text, []
        for p in patches:
            st = patch_state(new, p)
            if st == "applied":
                new = new.replace(p.anchor + p.block, p.anchor, 1)
            elif st == "edited":
                bad.append(p.what)
        if bad:
            refused.append(f"{path}: our insertion was edited ({', '.join(bad)}); left in place, remove it by hand")
        elif new != text:
            _write(path, new)
            done.append(f"reverted {path}")
    for path, marker in ((r / PANEL_REL, PANEL_MARKER), (r / SERVICES_REL, SERVICES_MARKER)):
        if path.exists():
            if _read(path).startswith(marker):
                path.unlink()
                done.append(f"removed {path}")
            elif path.name != SERVICES_REL.name:
                refused.append(f"{path}: not written by telfhash-cape, left in place")
    return done, refused
