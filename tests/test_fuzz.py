"""The input fuzzer (tests/fuzz): its harness tells outcomes apart, its cases are reproducible
from (seed, kind, index), and every fuzzed library, model and sidecar ends in a result or a
one-line refusal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.fuzz.cases import KINDS, make_case
from tests.fuzz.fuzz_inputs import run_fuzz
from tests.fuzz.runner import Worker
from tests.fuzz.seeds import make_seeds, subprocess_env
from tests.fuzz.worker import classify

CASES_PER_KIND = 800  # 2400 cases: about 2-3 minutes on 2 busy cores


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def _folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_same_seed_makes_the_same_cases_and_another_seed_other_ones(seeds, tmp_path):
    mutated_files = {"library": [seeds.library], "model": [seeds.card, seeds.weights],
                     "sidecar": [seeds.sidecar]}
    for kind in KINDS:
        originals = {str(p.relative_to(seeds.folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in mutated_files[kind]}
        other_mutations = files_changed = 0
        for index in range(30):
            first = make_case(kind, 5, index, seeds, tmp_path / "a" / f"{kind}-{index}")
            again = make_case(kind, 5, index, seeds, tmp_path / "b" / f"{kind}-{index}")
            other = make_case(kind, 6, index, seeds, tmp_path / "c" / f"{kind}-{index}")
            assert first.mutations and first.mutations == again.mutations
            digests = _folder_digest(first.folder)
            assert digests == _folder_digest(again.folder), first.mutations
            other_mutations += other.mutations != first.mutations
            files_changed += any(digests.get(name) != d for name, d in originals.items())
        assert other_mutations >= 25, f"seed 6 repeats seed 5's {kind} mutations"
        assert files_changed >= 25, f"{kind}: most cases leave the files as they were"


@pytest.mark.slow
def test_cases_mix_structural_and_byte_level_mutations(seeds, tmp_path):
    words = {kind: " ".join(m for i in range(60) for m in make_case(
        kind, 1, i, seeds, tmp_path / f"{kind}-{i}").mutations) for kind in KINDS}
    for structural in ("attribute", "resize", "replace /", "virtual dataset",
                       "external storage"):
        assert structural in words["library"], structural
    for structural in ("card:", "weights header:", "re-signed"):
        assert structural in words["model"], structural
    for structural in ("sidecar header:", "size and checksum fixed"):
        assert structural in words["sidecar"], structural
    for kind in KINDS:
        assert any(w in words[kind] for w in ("flip bit", "set byte", "truncate", "zero ")), kind


def test_classifier_reads_exit_status_and_stderr():
    assert classify(0, "", None, 1.0) == ("ok", "")
    assert classify(0, "hashview: index note\n", None, 1.0)[0] == "ok"
    assert classify(3, "warning: tiling\nhashview: a.png: bad\n", None, 1.0)[0] == "refused"
    assert classify(1, "hashview: lib.h5: corrupt\n", None, 1.0) == (
        "refused", "hashview: lib.h5: corrupt")
    assert classify(1, "hashview: a\nb\n", None, 1.0)[0] == "bad-message"
    assert classify(1, "", None, 1.0)[0] == "bad-message"
    assert classify(0, "Exception in thread x:\nTraceback (most recent call last):\n  File "
                       "\"a.py\", line 1\nValueError: bad\n", None, 1.0) == (
        "traceback", "printed: ValueError: bad")
    assert classify(None, "", ValueError("bad\nmore"), 1.0) == ("traceback", "ValueError: bad")
    assert classify(None, "", MemoryError(), 1.0)[0] == "memory"
    assert classify(1, "hashview: x: y\n", None, 900.0)[0] == "memory"


@pytest.mark.slow
def test_worker_outcomes_for_known_crashes_hangs_and_errors(tmp_path):
    env = subprocess_env()
    env["HASHVIEW_HOME"] = str(tmp_path / "home")
    worker = Worker(env, tmp_path / "worker.log")
    expected = [("succeed", "ok"), ("refuse", "refused"), ("refuse_in_two_lines", "bad-message"),
                ("write_native_noise", "bad-message"), ("raise_error", "traceback"),
                ("exhaust_address_space", "memory"), ("grow_resident_memory", "memory"),
                ("segfault", "crash"), ("succeed", "ok"), ("abort", "crash"), ("hang", "hang"),
                ("refuse", "refused")]
    try:
        outcomes = []
        for n, (name, _) in enumerate(expected):
            # only the hang waits out its 4 s; the others get room on a loaded machine (a
            # memory case once took over 4 s beside another test run and read as a hang)
            timeout = 4 if name == "hang" else 30
            job = {"call": f"tests.fuzz.harness_checks:{name}",
                   "stderr": str(tmp_path / f"{n}.txt"), "timeout": timeout}
            outcomes.append(worker.run(job, timeout=timeout))
    finally:
        worker.stop()
    assert [o["class"] for o in outcomes] == [want for _, want in expected], outcomes
    details = {name: o["detail"] for (name, _), o in zip(expected, outcomes)}
    assert details["raise_error"].startswith("KeyError: 'no such field'")
    assert "SIGSEGV" in details["segfault"] and "in segfault" in details["segfault"]
    assert "SIGABRT" in details["abort"]
    assert "no answer in 4 s" in details["hang"] and "in hang" in details["hang"]
    assert worker.starts == 4  # the first, and one after each crash or hang


@pytest.mark.slow
def test_fuzzed_libraries_models_and_sidecars_end_in_a_result_or_a_one_line_refusal(tmp_path):
    report = run_fuzz({kind: CASES_PER_KIND for kind in KINDS}, seed=1, workdir=tmp_path,
                      log=lambda line: None)
    # a broken sidecar must never stop a search: it is ignored and the search is exact
    refused_sidecars = [o for o in report.outcomes if o.kind == "sidecar" and o.outcome != "ok"]
    failing = report.failures + [o for o in refused_sidecars if o.passed]
    listing = "\n".join(o.describe() for o in failing[:60])
    assert not failing, f"{report.summary()}\n\n{listing}"
    assert sum(report.counts()[kind]["ok"] for kind in KINDS) > 0
