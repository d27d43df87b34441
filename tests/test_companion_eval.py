"""The companion hash's targets on the shared corpus, checked by the evaluation script itself
(``benchmarks/eval_companion.py``): same-program cross-architecture pairs within distance 50
at least 90%, different-program pairs within 50 at most 1% -- with the shipped helper list and
with a helper list derived from the other half of the programs (hold-out)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import corpus

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ev():
    spec = importlib.util.spec_from_file_location("eval_companion", REPO / "benchmarks" / "eval_companion.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def items(ev):
    corpus.manifest()  # skips with a clear message when the shared corpus is absent
    return ev.load_corpus()


T50 = 1  # index of threshold 50 in THRESHOLDS


def test_thresholds(ev):
    assert ev.THRESHOLDS[T50] == 50


def test_targets_on_the_shared_corpus(ev, items):
    tx = ev.summary(items, [i.tx for i in items])
    ref = ev.summary(items, [i.telfhash for i in items])
    assert tx["same_pairs"] == ref["same_pairs"] > 5000
    assert tx["same"][T50] >= 0.90, tx["same"]
    assert tx["diff"][T50] <= 0.01, tx["diff"]
    assert tx["same"][T50] > ref["same"][T50] + 0.4  # the point of the companion
    # every architecture pair with enough same-program pairs gains
    for key, row in tx["raw"]["same"].items():
        if key != "all" and row[0] >= 100:
            assert ev.fractions(row)[T50] >= 0.8, (key, ev.fractions(row))


def test_targets_hold_out(ev, items):
    for h in ev.holdout(items):
        s = h["telfhash_x"]
        assert s["same"][T50] >= 0.90, h
        assert s["diff"][T50] <= 0.01, h


def test_evaluation_is_deterministic(ev, items):
    again = ev.load_corpus()
    assert [i.tx for i in again] == [i.tx for i in items]
