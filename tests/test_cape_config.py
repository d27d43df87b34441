"""``telfhash-cape`` against CAPE's own configuration reader, and its small command-line promises.

A temporary CAPE tree gets CAPE's real ``lib/cuckoo/common/config.py`` (with the modules it
imports) and its shipped ``conf/default/processing.conf.default``, pinned in
tests/fixtures/cape (origin and commit in ORIGIN.md).  ``Config("processing")`` runs in a
subprocess inside that tree, exactly as CAPE's processor reads its settings.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from telfhash_plugins.cape import env
from telfhash_plugins.cape import install as inst
from telfhash_plugins.cape.cli import main
from telfhash_plugins.cape.enrich import Settings, enrich

FIX = Path(__file__).parent / "fixtures" / "cape"
REPO = Path(__file__).resolve().parent.parent


def cape_tree(tmp_path: Path) -> Path:
    """A CAPE checkout with CAPE's real configuration reader and default processing.conf."""
    root = tmp_path / "CAPEv2"
    for src in FIX.rglob("*"):
        if src.is_file() and (src.suffix == ".txt" or src.parts[-3:-1] == ("conf", "default")):
            rel = src.relative_to(FIX)
            dest = root / (str(rel)[: -len(".txt")] if src.suffix == ".txt" else rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest)
    (root / "modules" / "processing").mkdir(parents=True, exist_ok=True)
    return root


def cape_config(root: Path, **env_vars: str) -> tuple[int, dict | str]:
    """``Config("processing").telfhash`` read by CAPE's own code: (0, options) or (1, error)."""
    code = (
        "import json, sys\n"
        "from lib.cuckoo.common.config import Config\n"
        "try:\n"
        "    c = Config('processing')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__ + ': ' + str(exc)); sys.exit(1)\n"
        "print(json.dumps(dict(getattr(c, 'telfhash', {}))))\n"
    )
    e = {k: v for k, v in os.environ.items() if not k.startswith("CAPE_")}
    e.update(env_vars, PYTHONPATH=str(root))
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=e, capture_output=True, text=True, timeout=60, check=False
    )
    return (0, json.loads(p.stdout)) if p.returncode == 0 else (1, p.stdout + p.stderr)


def test_cape_reads_an_index_path_with_percent_signs(tmp_path):
    root = cape_tree(tmp_path)
    folder = tmp_path / "50% of 100%(x)s"
    folder.mkdir()
    index = folder / "telfhash.db"
    assert main(["install", "--cape-root", str(root), "--index", str(index)]) == 0
    rc, options = cape_config(root)
    assert rc == 0, options
    assert options["index"] == str(index) and options["enabled"] is True
    assert Settings.from_options(options).index == str(index)
    assert index.is_file()  # created (empty) at install


def test_the_unescaped_text_is_what_broke_cape(tmp_path):
    """The failure this guards against, with CAPE's reader: a raw % stops all processing."""
    root = cape_tree(tmp_path)
    conf = root / inst.CONFIG_REL
    conf.parent.mkdir(parents=True)
    conf.write_text("[telfhash]\nenabled = yes\nindex = /data/50%/t.db\n")
    rc, err = cape_config(root)
    assert rc == 1 and "InterpolationSyntaxError" in err


def test_status_fails_when_cape_cannot_read_its_configuration(tmp_path, capsys):
    root = cape_tree(tmp_path)
    assert main(["install", "--cape-root", str(root)]) == 0
    assert main(["status", "--cape-root", str(root)]) == 0
    other = root / "custom" / "conf" / "processing.conf.d" / "zz-local.conf"
    other.write_text("[similarity]\nnote = 100% local\n")
    assert cape_config(root)[0] == 1  # CAPE itself cannot read it
    capsys.readouterr()
    assert main(["status", "--cape-root", str(root)]) == 1
    assert "CAPE CANNOT READ" in capsys.readouterr().out
    # and install refuses to write a drop-in CAPE could not read either
    assert main(["install", "--cape-root", str(root), "--overwrite-config"]) == 1


def test_status_reads_what_cape_reads_environment_interpolation_included(tmp_path, capsys, monkeypatch):
    root = cape_tree(tmp_path)
    assert main(["install", "--cape-root", str(root)]) == 0
    conf = root / inst.CONFIG_REL
    conf.write_text(conf.read_text().replace("threshold = 50", "threshold = %(ENV:TELFHASH_T)s"))
    monkeypatch.setenv("TELFHASH_T", "33")
    rc, options = cape_config(root, TELFHASH_T="33")
    assert rc == 0 and options["threshold"] == 33
    capsys.readouterr()
    main(["status", "--cape-root", str(root)])
    assert "threshold=33" in capsys.readouterr().out


@pytest.mark.parametrize(
    "index, why",
    [("/nonexistent-dir-telfhash/x.db", "neither the file nor its folder"), ("relative.db", "absolute path")],
)
def test_install_refuses_an_index_that_cannot_work(tmp_path, capsys, index, why):
    root = cape_tree(tmp_path)
    assert main(["install", "--cape-root", str(root), "--index", index]) == 1
    assert why in capsys.readouterr().err
    assert not (root / inst.CONFIG_REL).exists() and not (root / inst.MODULE_REL).exists()


def test_install_refuses_a_file_that_is_not_an_index(tmp_path, capsys):
    root = cape_tree(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    assert main(["install", "--cape-root", str(root), "--index", str(junk)]) == 1
    assert "not a readable telfhash-core index" in capsys.readouterr().err


def test_install_refuses_values_with_line_breaks(tmp_path):
    root = cape_tree(tmp_path)
    with pytest.raises(inst.InstallError):
        inst.install(root, Settings(index=str(tmp_path / "a\nenabled = no")))
    assert not (root / inst.CONFIG_REL).exists()


def test_uninstall_removes_the_empty_drop_in_folder_only(tmp_path):
    root = cape_tree(tmp_path)
    confd = root / inst.CONFIG_REL.parent
    main(["install", "--cape-root", str(root)])
    assert main(["uninstall", "--cape-root", str(root)]) == 0
    assert not confd.exists()
    main(["install", "--cape-root", str(root)])
    (confd / "mine.conf").write_text("[x]\n")
    assert main(["uninstall", "--cape-root", str(root)]) == 0
    assert (confd / "mine.conf").is_file()


def test_reprocess_with_cape_root_but_no_section_says_so(tmp_path, capsys):
    root = cape_tree(tmp_path)
    analysis = tmp_path / "analysis"
    (analysis / "reports").mkdir(parents=True)
    (analysis / "reports" / "report.json").write_text("{}")
    assert main(["reprocess", "--analysis", str(analysis), "--cape-root", str(root)]) == 1
    assert "no [telfhash] section" in capsys.readouterr().err
    assert not (analysis / "reports" / "report.telfhash.json").exists()


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    root = cape_tree(tmp_path)
    main(["install", "--cape-root", str(root)])
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / ".pp"), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen(
        [sys.executable, "-m", "telfhash_plugins.cape.cli", "status", "--cape-root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=e,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # like `| head` having exited
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_status_reports_versions_and_verdicts(tmp_path, capsys):
    root = cape_tree(tmp_path)
    main(["install", "--cape-root", str(root)])
    capsys.readouterr()
    main(["status", "--cape-root", str(root)])
    out = capsys.readouterr().out
    pe = md.version("pyelftools")
    assert f"pyelftools {pe}: {'known good' if pe in env.KNOWN_GOOD_PYELFTOOLS else 'NOT KNOWN GOOD'}" in out
    assert f"capstone {md.version('capstone')}" in out
    assert "tlsh: importable" in out


def test_unchecked_pyelftools_gives_no_digests_and_says_why(monkeypatch, tmp_path):
    real = env._version
    monkeypatch.setattr(env, "_version", lambda d: "0.29" if d == "pyelftools" else real(d))
    elf = next((REPO / "tests" / "fixtures" / "elf").iterdir())
    results = {"target": {"file": {"type": "ELF 64-bit LSB executable", "path": str(elf), "sha256": "a" * 64}}}
    summary = enrich(results, Settings(timeout=0))
    assert results["target"]["file"]["telfhash_error"] == "environment" and "telfhash" not in results["target"]["file"]
    assert any("pyelftools 0.29" in e for e in summary["errors"])
    assert env.check()["ok"] is False


def test_missing_tlsh_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "tlsh", None)  # what deleting the shared tlsh file leads to
    problem = env.tlsh_problem()
    assert problem and "pip install --force-reinstall --no-deps python-tlsh" in problem
    assert env.refusal() == problem
