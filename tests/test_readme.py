"""The README works when pasted: its blocks marked ``<!-- readme-test: run -->`` run (in a shell, from
the repository's root, ``.venv/bin/`` standing for this interpreter's environment) and print what
the following ``<!-- readme-test: stdout -->`` block shows.  Only blocks that need no network and
no server are marked."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (run|stdout) -->\s*\n```[a-z]*\n(.*?)```", re.S)


def marked_blocks() -> list[tuple[str, str | None]]:
    """``(script, expected stdout or None)`` for each marked run block, in README order."""
    found = BLOCK.findall(README.read_text(encoding="utf-8"))
    out: list[tuple[str, str | None]] = []
    for kind, text in found:
        if kind == "run":
            out.append((text, None))
        elif out and out[-1][1] is None:
            out[-1] = (out[-1][0], text)
        else:
            raise AssertionError("a readme-test stdout block must follow a run block")
    return out


def test_readme_has_marked_blocks():
    blocks = marked_blocks()
    assert blocks and all(expected is not None for _, expected in blocks)


@pytest.fixture()
def venv_bin(tmp_path):
    """A folder standing in for ``.venv/bin``: ``telfhash`` and ``python`` of this environment."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, cmd in (
        ("telfhash", f'exec "{sys.executable}" -m telfhash_core.cli "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
    ):
        script = folder / name
        script.write_text(f"#!/bin/sh\n{cmd}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.parametrize("index", range(len(marked_blocks())))
def test_readme_block_prints_what_the_readme_shows(index, venv_bin):
    script, expected = marked_blocks()[index]
    script = script.replace(".venv/bin/", f"{venv_bin}/")
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    p = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == expected
