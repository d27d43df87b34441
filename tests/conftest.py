"""Shared test set-up: ``tests/`` on the import path, and one line instead of one per test for the
tests that need a corpus this machine does not have."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402

# The stats key under which corpus skips are counted (the final line reads "N skipped (no corpus)").
NO_CORPUS = "skipped (no corpus)"


# Tests that need the whole shared corpus (its counts, particular files or programs across many
# CPUs, the static corpus, or the reference's output on corpus paths): without it they are
# skipped, while every other corpus test runs on the committed sample (see tests/corpus.py).
NEEDS_FULL_CORPUS = frozenset(
    {
        "test_batch.py::test_kill_and_resume_every_file_exactly_once",
        "test_batch.py::test_local_engine_equals_reference",
        "test_batch.py::test_parquet_resume_and_leftover_temp_part",
        "test_cape_tools.py::test_a_worker_that_dies_costs_only_its_file",
        "test_cape_tools.py::test_no_worker_python_falls_back_in_process",
        "test_cape_tools.py::test_timeout_stops_one_file_and_the_next_is_hashed",
        "test_cape_tools.py::test_worker_leaves_no_process_behind",
        "test_cluster.py::test_cluster_cli_round_trip",
        "test_cluster.py::test_cluster_statistics_equal_brute_force",
        "test_cluster.py::test_components_equal_brute_force_on_synthetic_families",
        "test_cluster.py::test_dash_g_prints_the_reference_layout",
        "test_companion.py::test_call_fallback_covers_big_endian_and_other_cpus",
        "test_companion.py::test_clustering_runs_on_the_companion_field",
        "test_companion.py::test_library_or_executable_agrees_with_the_file_name",
        "test_companion.py::test_same_program_across_cpus_gets_close_values",
        "test_companion.py::test_shipped_helper_list_is_what_the_corpus_gives",
        "test_companion.py::test_strings_match_a_plain_scan_of_rodata",
        "test_companion.py::test_value_is_deterministic_and_the_same_from_bytes_and_from_a_process_pool",
        "test_companion_eval.py::test_debian_corpus_targets",
        "test_companion_eval.py::test_static_corpus_targets",
        "test_companion_tx2.py::test_index_searches_one_rule_set_and_recomputes_tx1_as_tx2",
        "test_companion_tx2.py::test_mips_undefined_func_imports_read_like_notype_elsewhere",
        "test_companion_tx2.py::test_shipped_helper_list_is_what_the_corpus_gives",
        "test_companion_tx2.py::test_toolchain_strings_come_out_of_a_static_program",
        "test_companion_tx2.py::test_tx1_values_still_read_and_compare_only_with_tx1",
        "test_companion_tx2.py::test_value_shape_and_rule_through_the_api",
        "test_companion_tx2_fast.py::test_symbol_strings_under_the_string_cap",
        "test_conformance.py::test_corpus_exercises_both_paths_on_every_architecture",
        "test_conformance.py::test_whole_corpus_matches_reference",
        "test_fallback.py::test_sweep_on_corpus_static_binaries_equals_reference_loop",
        "test_index_concurrency.py::test_killed_add_keeps_committed_batches_and_rerun_completes",
        "test_stix.py::test_import_reads_every_telfhash_and_matches_local_samples",
        "test_stix_receivers.py::test_other_producers_extension_content_is_checked_against_the_schema_per_item",
        "test_yara_rules.py::test_each_rule_matches_its_members_and_no_other_corpus_file_in_both_engines",
    }
)


def pytest_collection_modifyitems(config, items):
    if corpus.available():
        return
    import pytest

    skip = pytest.mark.skip(reason=corpus.full_reason())
    for item in items:
        if item.nodeid.removeprefix("tests/").split("[")[0] in NEEDS_FULL_CORPUS:
            item.add_marker(skip)


def _needs_absent_corpus(report) -> bool:
    longrepr = getattr(report, "longrepr", None)
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    return corpus.SKIP_MARK in reason


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    stats = terminalreporter.stats
    skipped = stats.get("skipped", [])
    absent = [r for r in skipped if _needs_absent_corpus(r)]
    if not absent:
        return
    stats["skipped"] = [r for r in skipped if not _needs_absent_corpus(r)]
    if not stats["skipped"]:
        del stats["skipped"]
    stats.setdefault(NO_CORPUS, []).extend(absent)
    files = sorted({r.nodeid.split("::")[0] for r in absent})
    terminalreporter.write_sep("-", "corpus")
    terminalreporter.write_line(
        f"{len(absent)} tests skipped because a shared corpus is absent ({', '.join(corpus.missing())}), in: "
        + ", ".join(Path(f).name for f in files)
    )
    terminalreporter.write_line(corpus.HOW_TO_GET)
