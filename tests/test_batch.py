"""telfhash batch: local and Dask engines against the reference values, resume, Parquet, inputs."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import corpus
from telfhash_core.batch import run as batch

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# The schema docs/batch.md documents, written out independently of the code.
DOCUMENTED_SCHEMA = [
    ("path", "string"),
    ("size", "int64"),
    ("mtime_ns", "int64"),
    ("sha256", "string"),
    ("telfhash", "string"),
    ("reason", "string"),
    ("detail", "string"),
    ("arch", "string"),
    ("method", "string"),
    ("fallback", "bool"),
    ("symbols", "int32"),
]
SMALL_PKGS = {"coreutils", "klibc-utils"}  # left out of the subset, to keep the tests short


def reference_value(row: dict) -> str:
    """What the reference prints for a batch row: the digest, tnull or -."""
    if row["telfhash"]:
        return row["telfhash"]
    return "tnull" if row["reason"] == "too_few_symbols" else "-"


@pytest.fixture(scope="module")
def subset():
    """About 500 corpus files of every architecture: symbols, fallback, tnull and no digest."""
    return [f for f in corpus.files() if f["pkg"] not in SMALL_PKGS]


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def check_against_manifest(rows: list[dict], entries: list[dict]) -> None:
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "a file appears twice"
    assert set(by_path) == {e["abspath"] for e in entries}
    for e in entries:
        r = by_path[e["abspath"]]
        assert reference_value(r) == e["reference"]["telfhash"], e["path"]
        assert r["sha256"] == e["sha256"]
        assert r["size"] == e["size"]
        assert r["fallback"] == (r["method"] == "fallback")


@pytest.fixture(scope="module")
def local_rows(subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out.jsonl"
    summary = batch.run_batch([f["abspath"] for f in subset], str(out), jobs=2, progress=False)
    assert summary.written == len(subset) and summary.failed_chunks == 0
    return read_jsonl(out)


def test_local_engine_equals_reference(local_rows, subset):
    rows = local_rows
    check_against_manifest(rows, subset)
    assert any(r["fallback"] for r in rows), "the subset should exercise the fallback"
    assert any(r["reason"] == "too_few_symbols" for r in rows)


# ----------------------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        protocol="tcp",
        silence_logs=40,
    )
    client = distributed.Client(cluster)
    try:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.mark.dask
def test_dask_engine_equals_local_and_reference(tmp_path, subset, local_rows, dask_client):
    subset = subset[::2]  # every architecture still, in half the time
    paths = [f["abspath"] for f in subset]
    dask_out = tmp_path / "dask.parquet"
    summary = batch.run_batch(paths, str(dask_out), fmt="parquet", engine="dask", client=dask_client, progress=False)
    assert summary.written == len(subset) and summary.failed_chunks == 0
    # every task ran on a worker process, not in this one
    assert len(dask_client.scheduler_info()["workers"]) == 2
    table = pq.read_table(dask_out)
    assert [(f.name, str(f.type)) for f in table.schema] == DOCUMENTED_SCHEMA
    dask_rows = sorted(table.to_pylist(), key=lambda r: r["path"])
    wanted = set(paths)
    assert dask_rows == sorted((r for r in local_rows if r["path"] in wanted), key=lambda r: r["path"])
    check_against_manifest(dask_rows, subset)


@pytest.mark.dask
def test_dask_workers_read_fsspec_urls(tmp_path, dask_client):
    pytest.importorskip("fsspec")
    entries = [f for f in corpus.files() if f["pkg"] == "busybox-static"]  # one folder per architecture
    folders = sorted({os.path.dirname(f["abspath"]) for f in entries})
    out = tmp_path / "urls.jsonl"
    s = batch.run_batch(["file://" + d for d in folders], str(out), engine="dask", client=dask_client, progress=False)
    rows = read_jsonl(out)
    assert s.written == len(rows) == len(entries)
    by_url = {r["path"]: r for r in rows}
    for e in entries:
        r = by_url["file://" + e["abspath"]]
        assert reference_value(r) == e["reference"]["telfhash"] and r["sha256"] == e["sha256"]


@pytest.mark.dask
def test_dask_clustering_equals_single_machine_on_corpus(tmp_path, dask_client):
    from telfhash_core.batch.partitioned import cluster_digests, relabel

    digests = [f["reference"]["telfhash"] for f in corpus.files() if f["reference"]["telfhash"].startswith("t1")]
    expected = single_machine(digests, 50)
    labels, info = cluster_digests(digests, 50, engine="dask", client=dask_client, ntasks=6)
    assert info["tasks"] > 1
    assert (relabel(labels) == expected).all()


def single_machine(digests, threshold):
    """The single-machine grouping (cluster.components where present, else tlshdist's)."""
    import numpy as np

    from telfhash_core.batch.partitioned import relabel

    try:
        from telfhash_core.similarity.cluster import components
    except ImportError:
        from telfhash_core.similarity.tlshdist import components_within, encode

        return relabel(components_within(encode(digests), threshold))
    return relabel(np.asarray(components(digests, threshold)))


# ----------------------------------------------------------------------------- resume


def test_kill_and_resume_every_file_exactly_once(tmp_path):
    entries = corpus.files()  # the whole corpus, one process, fsync every 5 rows: seconds, enough to kill midway
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f["abspath"] + "\n" for f in entries))
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "telfhash_core.cli",
        "batch",
        "--from-list",
        str(listing),
        "-o",
        str(out),
        "-j",
        "1",
        "--chunk",
        "1",
        "--flush-rows",
        "5",
        "--no-progress",
    ]
    env = dict(os.environ, TELFHASH_NO_ENTRY_POINTS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.stat().st_size > 0 and out.read_bytes().count(b"\n") >= 40:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    first = read_jsonl(out)
    total = len(entries)
    assert 40 <= len(first) < total
    with open(out, "ab") as fh:  # a line cut short, as a kill during a write leaves it
        fh.write(b'{"path": "/half/written')
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    rows = read_jsonl(out)  # also proves the torn line is gone (it would not parse)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == total
    assert rows[: len(first)] == first  # what was written before the kill is kept as is
    check_against_manifest(rows, entries)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and "0 written" in again.stderr
    assert len(read_jsonl(out)) == total


def test_parquet_resume_and_leftover_temp_part(tmp_path, subset):
    out = tmp_path / "out.parquet"
    first = [f["abspath"] for f in subset[:50]]
    everything = [f["abspath"] for f in subset[:120]]
    s1 = batch.run_batch(first, str(out), fmt="parquet", jobs=1, flush_rows=20, progress=False)
    assert s1.written == 50
    assert len([n for n in os.listdir(out) if n.endswith(".parquet")]) >= 2  # one part per durable write
    (out / ".part-killed.tmp").write_bytes(b"PAR1 half a part")  # what a kill during a write leaves
    s2 = batch.run_batch(everything, str(out), fmt="parquet", jobs=2, progress=False)
    assert (s2.skipped, s2.written) == (50, 70)
    assert not (out / ".part-killed.tmp").exists()
    table = pq.read_table(out)
    assert [(f.name, str(f.type)) for f in table.schema] == DOCUMENTED_SCHEMA
    paths = table.column("path").to_pylist()
    assert sorted(paths) == sorted(everything)


def test_changed_file_is_hashed_again_and_listed_once(tmp_path, subset):
    with_digest = [f for f in subset if f["reference"]["telfhash"].startswith("t1")]
    a, b = (
        with_digest[0],
        next(f for f in with_digest if f["reference"]["telfhash"] != with_digest[0]["reference"]["telfhash"]),
    )
    target = tmp_path / "sample"
    shutil.copyfile(a["abspath"], target)
    out = tmp_path / "out.jsonl"
    batch.run_batch([str(target)], str(out), jobs=1, progress=False)
    assert read_jsonl(out)[0]["telfhash"] == a["reference"]["telfhash"]
    shutil.copyfile(b["abspath"], target)
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    s = batch.run_batch([str(target)], str(out), jobs=1, progress=False)
    rows = read_jsonl(out)
    assert s.written == 1 and len(rows) == 1
    assert rows[0]["telfhash"] == b["reference"]["telfhash"]


def test_sha256_resume_key_keeps_each_content_once(tmp_path, subset):
    src = [f for f in subset if f["reference"]["telfhash"].startswith("t1")][:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for k, f in enumerate(src):
        shutil.copyfile(f["abspath"], folder / f"a{k}")
    shutil.copyfile(src[0]["abspath"], folder / "copy-of-a0")
    out = tmp_path / "out.jsonl"
    s1 = batch.run_batch([str(folder)], str(out), resume_key="sha256", jobs=1, progress=False)
    assert (s1.written, s1.skipped) == (3, 1)
    os.rename(folder / "a1", folder / "renamed")  # moved: same content, nothing new to hash
    s2 = batch.run_batch([str(folder)], str(out), resume_key="sha256", jobs=2, progress=False)
    assert s2.written == 0
    rows = read_jsonl(out)
    assert sorted(r["sha256"] for r in rows) == sorted(f["sha256"] for f in src)


# ----------------------------------------------------------------------------- inputs and hostile input


def test_inputs_lists_stdin_urls_and_hostile_files(tmp_path, subset, monkeypatch):
    fsspec = pytest.importorskip("fsspec")
    good = [f for f in subset if f["reference"]["telfhash"].startswith("t1")][:4]
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "empty").write_bytes(b"")
    (hostile / "text").write_bytes(b"#!/bin/sh\necho hi\n")
    (hostile / "truncated-elf").write_bytes(open(good[0]["abspath"], "rb").read()[:300])
    os.mkfifo(hostile / "fifo")  # must not hang the batch
    lst = tmp_path / "list.txt"
    lst.write_text(good[0]["abspath"] + "\n\n" + str(tmp_path / "missing") + "\n")
    lst2 = tmp_path / "list2.txt"
    lst2.write_text(good[1]["abspath"] + "\r\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(good[2]["abspath"] + "\n"))
    mem = fsspec.filesystem("memory")
    mem.pipe("/telfhash-test/x/sample", open(good[3]["abspath"], "rb").read())
    out = tmp_path / "out.jsonl"
    file_url = "file://" + good[3]["abspath"]
    s = batch.run_batch(
        [f"@{lst}", "-", str(hostile), file_url, "memory://telfhash-test/x", good[0]["abspath"]],
        str(out),
        from_lists=[str(lst2)],
        jobs=1,
        progress=False,
    )
    rows = {r["path"]: r for r in read_jsonl(out)}
    assert s.written == len(rows) == 10  # the repeated path is hashed once
    for k in range(3):
        assert rows[good[k]["abspath"]]["telfhash"] == good[k]["reference"]["telfhash"]
    assert rows[file_url]["telfhash"] == good[3]["reference"]["telfhash"]
    assert rows["memory:///telfhash-test/x/sample"]["telfhash"] == good[3]["reference"]["telfhash"]
    assert rows[file_url]["sha256"] == good[3]["sha256"]
    assert rows[str(tmp_path / "missing")]["reason"] == "not_found"
    assert rows[str(hostile / "empty")]["reason"] == "empty"
    assert rows[str(hostile / "text")]["reason"] == "not_elf"
    assert rows[str(hostile / "fifo")]["reason"] == "not_regular"
    assert rows[str(hostile / "truncated-elf")]["telfhash"] is None
    mem.rm("/telfhash-test", recursive=True)


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    from telfhash_core.cli import main

    folder_as_jsonl = tmp_path / "adir"
    folder_as_jsonl.mkdir()
    for args in (
        ["batch", str(tmp_path), "-o", str(folder_as_jsonl)],  # JSONL output onto a folder
        ["batch", f"@{tmp_path / 'no-such-list'}", "-o", str(tmp_path / "o.jsonl")],
        ["batch", "cluster", str(tmp_path / "no-results.jsonl"), "-o", str(tmp_path / "c.jsonl")],
    ):
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert "telfhash batch" in err and "error" in err


def test_missing_optional_dependency_names_the_extra():
    with pytest.raises(batch.BatchError, match=r"telfhash-core\[dask\]"):
        batch.need("telfhash_no_such_module")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_names_that_are_not_utf8_are_written_and_resumed(tmp_path, subset, fmt):
    good = next(f for f in subset if f["reference"]["telfhash"].startswith("t1"))
    folder = tmp_path / "in"
    folder.mkdir()
    raw_name = os.path.join(os.fsencode(folder), b"bad-\xff\xfe-name")
    shutil.copyfile(good["abspath"], raw_name)
    shutil.copyfile(good["abspath"], folder / "plain")
    out = tmp_path / ("out.jsonl" if fmt == "jsonl" else "out.parquet")
    s1 = batch.run_batch([str(folder)], str(out), fmt=fmt, jobs=1, progress=False)
    assert s1.written == 2
    rows = read_jsonl(out) if fmt == "jsonl" else pq.read_table(out).to_pylist()
    by_name = {os.path.basename(r["path"]): r for r in rows}
    assert set(by_name) == {"plain", "bad-\\xff\\xfe-name"}
    assert by_name["bad-\\xff\\xfe-name"]["telfhash"] == good["reference"]["telfhash"]
    s2 = batch.run_batch([str(folder)], str(out), fmt=fmt, jobs=1, progress=False)
    assert (s2.written, s2.skipped) == (0, 2)


@pytest.mark.dask
def test_sha256_key_on_dask_workers(tmp_path, subset, dask_client):
    src = [f for f in subset if f["reference"]["telfhash"].startswith("t1")][:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for k, f in enumerate(src):
        shutil.copyfile(f["abspath"], folder / f"a{k}")
    out = tmp_path / "out.parquet"
    s1 = batch.run_batch(
        [str(folder)], str(out), fmt="parquet", resume_key="sha256", engine="dask", client=dask_client, progress=False
    )
    assert s1.written == 3
    shutil.copyfile(src[1]["abspath"], folder / "copy-of-a1")  # known content under a new name: skipped by a worker
    shutil.copyfile(subset[-1]["abspath"], folder / "new")
    s2 = batch.run_batch(
        [str(folder)], str(out), fmt="parquet", resume_key="sha256", engine="dask", client=dask_client, progress=False
    )
    assert (s2.written, s2.skipped) == (1, 4)  # a0, a1, a2 and the copy are known
    shas = pq.read_table(out).column("sha256").to_pylist()
    assert sorted(shas) == sorted([f["sha256"] for f in src] + [subset[-1]["sha256"]])


def test_two_runs_cannot_write_one_output(tmp_path, subset):
    out = tmp_path / "out.jsonl"
    holder = batch.JsonlSink(str(out))  # a run in progress
    try:
        with pytest.raises(batch.BatchError, match="another telfhash batch run"):
            batch.run_batch([subset[0]["abspath"]], str(out), jobs=1, progress=False)
    finally:
        holder.close()
    assert batch.run_batch([subset[0]["abspath"]], str(out), jobs=1, progress=False).written == 1
