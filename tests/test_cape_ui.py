"""``telfhash-cape install --ui``: the patches on CAPE's real templates and search map (pinned
in tests/fixtures/cape, origin in ORIGIN.md), and the patched templates rendered by the engines
CAPE renders them with: Django for the web UI, Jinja2 (autoescape) for the HTML report.

Stand-ins, and only these: CAPE's ``analysis_tags`` filter library (``flare_capa_*``; the
real module imports much of CAPE) and the URL names the file-info panel reverses
(``file``, ``file_nl``, ``on_demand``, ``vtupload``).  ``key_tags`` is CAPE's own (pinned).

Set ``TELFHASH_CAPE_RENDER_DIR`` to keep the rendered HTML (docs/cape-ui.png is a screenshot
of it in headless Chromium).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
import types
import zlib
from pathlib import Path

import pytest
from telfhash_plugins.cape import ui
from telfhash_plugins.cape.cli import main
from telfhash_plugins.cape.enrich import Settings, enrich

FIX = Path(__file__).parent / "fixtures"
CAPE = FIX / "cape"
TEMPLATES = [p.rel for p in ui.PATCHES]


def cape_tree(tmp_path: Path) -> Path:
    """A CAPE checkout holding the pinned files (``.txt`` suffix dropped)."""
    root = tmp_path / "CAPEv2"
    for src in CAPE.rglob("*"):
        if src.is_file() and src.name != "ORIGIN.md":
            rel = str(src.relative_to(CAPE))
            dest = root / (rel.removesuffix(".txt"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest)
    (root / "modules" / "processing").mkdir(parents=True, exist_ok=True)
    (root / "custom").mkdir()
    (root / "custom" / "__init__.py").write_text("")  # as CAPE ships it
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------- patches


def test_install_ui_patches_and_uninstall_restores_every_byte(tmp_path, capsys):
    root = cape_tree(tmp_path)
    before = snapshot(root)
    assert main(["install", "--cape-root", str(root), "--ui"]) == 0
    assert all(st == "applied" for _, st in ui.status(root))
    for rel in set(TEMPLATES):
        assert (
            "telfhash" in (root / rel).read_text()
            and "telfhash" not in (CAPE / (rel if rel.endswith(".html") else rel + ".txt")).read_text()
        )
    assert (root / ui.PANEL_REL).is_file()
    assert main(["install", "--cape-root", str(root), "--ui"]) == 0  # again: nothing doubled
    web = (root / "web/templates/analysis/generic/_file_info.html").read_text()
    assert web.count("{{file.telfhash}}") == 1
    capsys.readouterr()
    assert main(["status", "--cape-root", str(root)]) == 0
    assert f"ui: {len(ui.PATCHES)} of {len(ui.PATCHES)} patches applied" in capsys.readouterr().out
    assert main(["uninstall", "--cape-root", str(root)]) == 0
    assert snapshot(root) == before


def test_the_report_page_loads_the_summary_through_capes_custom_services_hook(tmp_path, monkeypatch):
    """CAPE's report view loads only the keys of its projection plus ``CUSTOM_SERVICES`` of
    ``custom/analysis_services.py``; its on_demand view stores what ``handle_custom_service``
    returns unless that is None."""
    root = cape_tree(tmp_path)
    ui.apply(root)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "custom", raising=False)
    monkeypatch.delitem(sys.modules, "custom.analysis_services", raising=False)
    from custom.analysis_services import CUSTOM_SERVICES, handle_custom_service  # as web/analysis/views.py does

    assert "telfhash" in CUSTOM_SERVICES
    details, _category = handle_custom_service("telfhash", "7", "a" * 64)
    assert details is None  # so an on-demand request can never overwrite the summary
    ui.revert(root)
    assert not (root / ui.SERVICES_REL).exists()


def test_an_operators_own_custom_services_file_is_kept(tmp_path):
    root = cape_tree(tmp_path)
    own = root / ui.SERVICES_REL
    own.write_text("CUSTOM_SERVICES = ['mine']\n\ndef handle_custom_service(s, t, h):\n    return {}, s\n")
    done = ui.apply(root)
    assert any('add "telfhash" to its CUSTOM_SERVICES' in d for d in done)
    ui.revert(root)
    assert own.read_text().startswith("CUSTOM_SERVICES = ['mine']")


def test_search_map_patch_keeps_cape_code_valid_and_adds_the_term(tmp_path):
    root = cape_tree(tmp_path)
    ui.apply(root)
    tree = ast.parse((root / "lib/cuckoo/common/web_utils.py").read_text())
    maps = {
        t.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name) and t.id in ("hash_searches", "search_term_map_repetetive_blocks")
    }
    assert maps["hash_searches"]["telfhash"] == "telfhash"
    assert maps["search_term_map_repetetive_blocks"]["telfhash"] == "telfhash"


def test_changed_target_lines_refuse_and_change_nothing(tmp_path, capsys):
    root = cape_tree(tmp_path)
    f = root / "data/html/generic/_file_info.html"
    f.write_text(f.read_text().replace("<th>TLSH</th>", "<th>TLSH hash</th>"))
    before = snapshot(root)
    assert main(["install", "--cape-root", str(root), "--ui"]) == 1
    assert "data/html/generic/_file_info.html" in capsys.readouterr().err
    assert snapshot(root) == before  # neither the other templates nor the module were written


def test_an_edited_insertion_is_left_for_the_operator(tmp_path):
    root = cape_tree(tmp_path)
    ui.apply(root)
    f = root / "web/templates/analysis/generic/_file_info.html"
    f.write_text(f.read_text().replace('<th class="text-end text-info">telfhash</th>', "<th>TELFHASH</th>"))
    _, refused = ui.revert(root)
    assert any("_file_info.html" in r and "edited" in r for r in refused)
    assert "TELFHASH" in f.read_text()
    assert "telfhash" not in (root / "data/html/generic/_file_info.html").read_text()  # the others reverted
    with pytest.raises(ui.UIError):
        ui.apply(root)


def test_a_foreign_panel_file_is_never_overwritten(tmp_path):
    root = cape_tree(tmp_path)
    panel = root / ui.PANEL_REL
    panel.write_text("<p>local</p>")
    with pytest.raises(ui.UIError):
        ui.apply(root)
    assert panel.read_text() == "<p>local</p>"


# ----------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    """A real enrichment: 7 ELF files of 5 architectures, an index with a labelled sample."""
    from telfhash_core.store.index import Index

    tmp = tmp_path_factory.mktemp("ui")
    entries = {Path(e["fixture"]).name: e for e in json.loads((FIX / "fixtures.json").read_text())["files"]}

    def fd(name, shown=None):
        p = FIX / "elf" / name
        data = p.read_bytes()
        return {
            "type": "ELF executable",
            "path": str(p),
            "name": shown or name.split("__")[-1],
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "md5": hashlib.md5(data).hexdigest(),
            "sha1": hashlib.sha1(data).hexdigest(),
            "crc32": f"{zlib.crc32(data):08X}",
        }

    target = fd("armel__iot-fam-b__fam_b_v1_arm_dyn", "bot.arm")
    dropped = [
        fd("mips__iot-fam-b__fam_b_v1_mips_dyn", "bot.mips"),
        fd("amd64__iproute2__usr__lib__x86_64-linux-gnu__tc__q_atm.so"),
        fd("i386__iproute2__usr__lib__i386-linux-gnu__tc__q_atm.so"),
        fd("armhf__klibc-utils__usr__lib__klibc__bin__false"),
        fd("amd64__klibc-utils__usr__lib__klibc__bin__sync"),
        fd("m68k__iot-fam-a__fam_a_v1_m68k_dyn", "<img src=x onerror=alert(1)>"),
    ]
    db = tmp / "telfhash.db"
    known = [
        fd("powerpc__iot-fam-b__fam_b_v1_powerpc_dyn"),
        fd("s390x__iproute2__usr__lib__s390x-linux-gnu__tc__q_atm.so"),
    ]
    with Index(str(db), create=True) as ix:
        ix.add_files([k["path"] for k in known], source="stix")
        ix.set_label(known[0]["sha256"], "iot-fam-b")
    results = {"target": {"file": target}, "dropped": dropped, "info": {"id": 7, "category": "file"}}
    summary = enrich(results, Settings(index=str(db), detections=True, timeout=0))
    results["telfhash"] = summary
    assert not summary["errors"], summary["errors"]
    return {"results": results, "entries": entries, "known": known}


def _django_engine(root: Path, monkeypatch):
    django = pytest.importorskip("django", reason="Django (the cape extra) renders CAPE's web templates")
    from django import template
    from django.conf import settings
    from django.urls import re_path

    stub = types.ModuleType("telfhash_test_cape_analysis_tags")
    stub.register = template.Library()  # type: ignore[attr-defined]
    for name in ("flare_capa_attck", "flare_capa_capability", "flare_capa_mbc"):
        stub.register.filter(name, lambda v, *a: v)  # type: ignore[attr-defined]
    urls = types.ModuleType("telfhash_test_cape_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        re_path(r"^" + name + "/" + "/".join(["([^/]*)"] * n) + "/$", lambda r: None, name=name)
        for name in ("file", "file_nl", "on_demand", "vtupload")
        for n in range(1, 7)
    ]
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    monkeypatch.setitem(sys.modules, urls.__name__, urls)
    tags = root / "web" / "analysis" / "templatetags"
    monkeypatch.syspath_prepend(str(tags))
    if not settings.configured:
        settings.configure(ROOT_URLCONF=urls.__name__, INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    from django.urls import clear_url_caches

    settings.ROOT_URLCONF = urls
    clear_url_caches()
    return template.Engine(
        dirs=[str(root / "web" / "templates")], libraries={"key_tags": "key_tags"}, builtins=[stub.__name__], debug=True
    )


def _keep(name: str, html: str) -> None:
    out = os.environ.get("TELFHASH_CAPE_RENDER_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / name).write_text(html)


def test_web_file_info_panel_shows_telfhash_only_for_a_digest(tmp_path, monkeypatch, analysis):
    root = cape_tree(tmp_path)
    ui.apply(root)
    from django.template import Context

    engine = _django_engine(root, monkeypatch)
    tpl = engine.get_template("analysis/generic/_file_info.html")
    base = {"id": 7, "tab_name": "static", "config": {}, "analysis": analysis["results"], "settings": {}}
    target = analysis["results"]["target"]["file"]
    digest = analysis["entries"]["armel__iot-fam-b__fam_b_v1_arm_dyn"]["reference"]["telfhash"]
    html = tpl.render(Context(dict(base, file=target)))
    _keep("file_info.html", html)
    assert '<th class="text-end text-info">telfhash</th>' in html and f">{digest}</td>" in html
    for shown in ("-", "tnull"):
        plain = tpl.render(Context(dict(base, file=dict(target, telfhash=shown))))
        assert '<th class="text-end text-info">telfhash</th>' not in plain and "CRC32" in plain
    # without the patch, CAPE's panel has no such row (the test would notice a broken patch)
    ui.revert(root)
    engine = _django_engine(root, monkeypatch)
    assert "telfhash" not in engine.get_template("analysis/generic/_file_info.html").render(
        Context(dict(base, file=target))
    )


def test_overview_panel_renders_groups_neighbours_and_detections(tmp_path, monkeypatch, analysis):
    root = cape_tree(tmp_path)
    ui.apply(root)
    from django.template import Context

    engine = _django_engine(root, monkeypatch)
    patch = next(p for p in ui.PATCHES if p.rel.endswith("overview/index.html"))
    wrapper = engine.from_string(patch.block)  # exactly the text inserted into CAPE's overview
    results = analysis["results"]
    html = wrapper.render(Context({"analysis": results}))
    _keep("telfhash_panel.html", html)
    s = results["telfhash"]
    assert 'id="telfhash"' in html
    for f in s["files"]:
        assert (f["telfhash"] or f["error"]) in html
    assert s["groups"] and all(f"{g['size']} files, max distance {g['max_distance']}" in html for g in s["groups"])
    assert '<span class="badge bg-danger">iot-fam-b</span>' in html
    assert html.count('<span class="badge bg-danger">detection: iot-fam-b</span>') == 2  # bot.arm, bot.mips
    assert results["detections"][0]["family"] == "iot-fam-b"
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html  # a hostile name stays text
    assert wrapper.render(Context({"analysis": {"telfhash": {"files": []}}})).strip() == ""


def test_html_report_row_with_capes_jinja2_environment(tmp_path, analysis):
    jinja2 = pytest.importorskip("jinja2")
    root = cape_tree(tmp_path)
    ui.apply(root)
    sys.path.insert(0, str(root / "web" / "analysis" / "templatetags"))
    try:
        import key_tags  # CAPE's own filters (pinned)
    finally:
        sys.path.pop(0)
    env = jinja2.Environment(autoescape=True, loader=jinja2.FileSystemLoader(str(root / "data" / "html")))
    env.filters.update(
        {
            "getkey": key_tags.getkey,
            "str2list": key_tags.str2list,
            "dict2list": key_tags.dict2list,
            "parentfixup": key_tags.parentfixup,
            "flare_capa_capability": str,
            "flare_capa_attck": str,
            "flare_capa_mbc": str,
        }
    )
    tpl = env.get_template("generic/_file_info.html")
    target = analysis["results"]["target"]["file"]
    html = tpl.render(file=target, results=analysis["results"])
    assert "<th>telfhash</th>" in html and target["telfhash"] in html
    assert "<th>telfhash</th>" not in tpl.render(file=dict(target, telfhash="tnull"), results={})
