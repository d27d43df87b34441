"""The single owners of shared mechanics: digest spellings/tags/packing, the bounded-window
executor, Reason inference."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import tlsh

import telfhash_core as tc
from telfhash_core import digest
from telfhash_core.parallel import bounded
from telfhash_core.result import Reason, Result, infer_reason

HEX = "6CA002744810AF4CF146F18551D60351991507155B050F545AF09C540D03FE14986511"


def test_one_parser_for_every_spelling_and_tag():
    for value in ("t1" + HEX.lower(), "T1" + HEX, HEX, HEX.lower(), f"  t1{HEX.lower()}\n"):
        assert digest.hex_body(value) == HEX
    for bad in ("tnull", "-", "", None, 5, "t1" + HEX[:-1], "x1" + HEX, HEX + "0"):
        assert digest.hex_body(bad) is None
    assert digest.tagged_body(f"tx1:t1{HEX.lower()}") == HEX
    assert digest.tagged_body(f"tx1:t1{HEX.lower()}", "tx1") == HEX
    assert digest.tagged_body(f"tx2:t1{HEX.lower()}", "tx1") is None  # another version is not this one
    assert digest.tagged_body(f"t1{HEX.lower()}", "tx1") is None
    assert digest.split_tag("tx1:t1abc") == ("tx1", "t1abc")


def test_spell_pack_and_unpack_agree_with_py_tlsh():
    assert digest.spell(HEX, "t1") == "t1" + HEX.lower() == tc.normalize(HEX)
    assert digest.spell(HEX, "T1") == "T1" + HEX
    assert digest.spell(HEX, "hex") == HEX
    with pytest.raises(ValueError):
        digest.spell(HEX, "t2")
    packed = digest.pack("T1" + HEX)
    assert len(packed) == digest.PACKED_LEN == 35 and digest.unpack(packed) == "t1" + HEX.lower()
    t = tlsh.Tlsh()
    t.fromTlshStr("T1" + HEX)
    assert t.hexdigest().upper() == "T1" + HEX  # py-tlsh reads our spelling back unchanged


def test_bounded_keeps_the_window_and_yields_every_unit_once():
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.002 * (x % 3))
        with lock:
            in_flight -= 1
        return x * x

    submitted = []
    with ThreadPoolExecutor(4) as pool:

        def submit(x: int):
            submitted.append(x)
            assert len(submitted) - done[0] <= 3, "more than the window in flight"
            return pool.submit(work, x)

        done = [0]
        got = {}
        for unit, fut in bounded(range(40), submit, 3):
            done[0] += 1
            got[unit] = fut.result()
    assert got == {x: x * x for x in range(40)}
    assert peak <= 3


def test_bounded_hands_failures_to_the_caller():
    with ThreadPoolExecutor(2) as pool:
        outcomes = []
        for unit, fut in bounded([1, 0, 2], lambda x: pool.submit(lambda: 10 // x), 2):
            try:
                outcomes.append((unit, fut.result()))
            except ZeroDivisionError:
                outcomes.append((unit, "failed"))
    assert sorted(outcomes, key=lambda o: o[0]) == [(0, "failed"), (1, 10), (2, 5)]


def test_a_result_without_a_reason_gets_one_from_the_references_message():
    assert infer_reason("tnull") is Reason.TOO_FEW_SYMBOLS
    assert infer_reason("-", "Could not parse file as ELF") is Reason.NOT_ELF
    assert infer_reason("-", "No such file or directory") is Reason.NOT_FOUND
    assert infer_reason("-", "Unknown error") is Reason.MALFORMED
    assert infer_reason("-") is Reason.NO_SYMBOLS
    r = Result.from_dict({"file": "x", "telfhash": "-", "msg": "Could not parse file as ELF"})
    assert r.reason is Reason.NOT_ELF and r.reference_dict()["msg"] == "Could not parse file as ELF"
