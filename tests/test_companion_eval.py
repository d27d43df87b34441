"""The companion value's targets on both shared corpora, checked by the evaluation script itself
(``benchmarks/eval_companion.py``): same-program cross-CPU pairs within distance 50 at least
95%, different-program pairs within 50 at most 1% -- for tx2 as shipped, and with one program
held out, and with one CPU held out (the toolchain strings and helper names derived without
that CPU's C library and builds).

Each corpus skips with one line when absent.  The run takes a few minutes (feature extraction
of ~3,000 files, then one pass per held-out CPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import corpus
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ev():
    spec = importlib.util.spec_from_file_location("eval_companion", REPO / "benchmarks" / "eval_companion.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def debian(ev):
    corpus.manifest()  # skips with a clear message when the shared corpus is absent
    return ev.load("debian", tx1=False)


def _rate(r, part):
    return [h / r[part]["all"][0] for h in r[part]["all"][1:]]


def test_thresholds(ev):
    assert ev.THRESHOLDS[ev.T50] == 50


def test_debian_corpus_targets(ev, debian):
    from telfhash_core.companion import tx2

    out = ev.evaluate("shared corpus", debian, tx2.shipped(), debian, per_pair=False)
    for name in ("tx2", "held_out_program", "held_out_cpu"):
        same, diff = _rate(out[name], "same")[ev.T50], _rate(out[name], "diff")[ev.T50]
        assert same >= 0.95 and diff <= 0.01, (name, same, diff)
    assert out["tx2"]["same"]["all"][0] > 5000
    assert _rate(out["tx2"], "same")[ev.T50] > _rate(out["telfhash (reference)"], "same")[ev.T50] + 0.4


def test_static_corpus_targets(ev, debian):
    from telfhash_core.companion import tx2

    corpus.static_manifest()  # skips with a clear message when the static corpus is absent
    static = ev.load("static", tx1=False)
    out = ev.evaluate("shared corpus-static", static, tx2.shipped(), debian, per_pair=False)
    for name in ("tx2", "held_out_program", "held_out_cpu"):
        same, diff = _rate(out[name], "same")[ev.T50], _rate(out[name], "diff")[ev.T50]
        assert same >= 0.95 and diff <= 0.01, (name, same, diff)
    assert all(i.tx2(tx2.shipped()) for i in static)  # every file gets a value


def test_evaluation_matches_the_api(ev, debian):
    """The evaluation's cached path gives the same values as the API."""
    from telfhash_core.companion import telfhash_x_of

    for it in debian[::97]:
        assert it.tx2(ev.tx2.shipped()) == telfhash_x_of(Path(it.path).read_bytes()), it.path
