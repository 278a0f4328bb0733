"""Indexing on a Ray cluster: the same library as a single-process run, bad files reported by
name, a killed encoding worker neither loses nor duplicates tiles. One local Ray for all."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from _library_content import library_content
from conftest import DATA, KATHER, SLIDE
from hashview.cli import main
from hashview.indexing import index_paths
from hashview.library import Library
from hashview.tiling import TilingParams

ray = pytest.importorskip("ray")

from hashview.cluster import index_with_ray  # noqa: E402 (after the skip without Ray)
from hashview.cluster.ray_index import ACTOR_PREFIX  # noqa: E402

# Several chunks per slide and two patch batches, so that chunks are spread over both actors.
BATCH = 8
PARAMS = TilingParams(tile_size=150, target_mpp=0.495, max_tiles=40)


@pytest.fixture(scope="session")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 << 20,
             log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / "single.h5"
    report = index_paths([SLIDE, KATHER], path, params=PARAMS, batch_size=BATCH)
    assert not report.failed
    return library_content(path)


def test_ray_library_equals_the_single_process_one(local_ray, single_process, tmp_path):
    path = tmp_path / "ray.h5"
    events = []
    report = index_with_ray([SLIDE, KATHER], path, params=PARAMS, batch_size=BATCH,
                            workers=2, progress=events.append)
    assert not report.failed
    assert report.tiles_added == len(single_process) == 52  # 40 slide tiles, 12 patches
    assert library_content(path) == single_process  # same tiles, same codes, same labels
    last = events[-1]
    assert (last.stage, last.done, last.total) == ("tiles", 52, 52)
    assert "tiles/s" in last.message
    copy = tmp_path / "copy.svs"
    shutil.copyfile(SLIDE, copy)
    again = index_with_ray([SLIDE, copy, KATHER], path, params=PARAMS, batch_size=BATCH)
    assert again.tiles_added == 0 and len(again.skipped) == 14  # a rerun skips what is stored
    # which of the two is the duplicate depends on which plan comes back first
    assert [set(d.values()) for d in again.duplicates] == [{str(copy), str(SLIDE)}]
    assert library_content(path) == single_process


def test_a_killed_worker_loses_and_duplicates_no_tile(local_ray, single_process, tmp_path):
    killed = []

    def encoders() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(ACTOR_PREFIX)}

    earlier = encoders()  # other runs' actors may still be listed while they go away

    def kill_one_worker(event):
        if event.done and not killed:
            actor = ray.get_actor(sorted(encoders() - earlier)[0])
            pid = ray.get(actor.describe.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    # one actor: the chunks left after the kill (most of the 52 tiles) must go through it, so its
    # death is always met (with two, the other one may finish the run before it is)
    path = tmp_path / "ray.h5"
    report = index_with_ray([SLIDE, KATHER], path, params=PARAMS, batch_size=BATCH,
                            workers=1, progress=kill_one_worker)
    assert killed and not report.failed
    assert any("encoding worker was lost" in w for w in report.warnings)
    assert library_content(path) == single_process
    with Library.open(path) as library:
        assert library.n_tiles == len(single_process)  # nothing stored twice


@pytest.mark.slow
def test_a_killed_driver_keeps_what_it_committed_and_a_rerun_does_the_rest(
        local_ray, single_process, tmp_path):
    """A driver joined to the cluster by its address is killed once a source is committed:
    only whole sources are stored, and a rerun gives the single-process library."""
    import subprocess
    import sys
    import time

    path = tmp_path / "ray.h5"
    driver = subprocess.Popen(
        [sys.executable, "-m", "hashview", "index", str(SLIDE), str(KATHER), "--library",
         str(path), "--engine", "ray", "--address", ray.get_runtime_context().gcs_address,
         "--batch-size", str(BATCH), "--tile-size", "150", "--mpp", "0.495", "--max-tiles",
         "40"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if path.exists() and Library.open(path).n_sources:
            break
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL  # killed while it ran
    committed = library_content(path)
    assert committed and committed.items() <= single_process.items()  # whole sources only
    report = index_with_ray([SLIDE, KATHER], path, params=PARAMS, batch_size=BATCH)
    assert not report.failed and report.skipped
    assert library_content(path) == single_process


def test_cli_ray_engine_reports_a_bad_slide_in_one_line(local_ray, tmp_path, capsys):
    bad = DATA / "bad" / "truncated.svs"
    code = main(["index", str(bad), str(KATHER), "--library", str(tmp_path / "lib.h5"),
                 "--engine", "ray", "--workers", "2", "--batch-size", str(BATCH)])
    out, err = capsys.readouterr()
    assert code == 3  # partial: the patches were added
    lines = [line for line in err.splitlines() if "truncated.svs" in line]
    assert len(lines) == 1 and lines[0].startswith("hashview: ") and "Traceback" not in err
    assert "added 12 source(s), 12 tiles" in out


def test_engine_options_need_the_ray_engine(capsys):
    assert main(["index", str(KATHER), "--library", "x.h5", "--workers", "3"]) == 2
    assert "need --engine ray" in capsys.readouterr().err


def test_a_background_job_indexes_on_ray(local_ray, tmp_path):
    from hashview.jobs import JobSpec, run_job

    events: list[dict] = []
    spec = JobSpec("index", {"paths": [KATHER], "library_path": tmp_path / "lib.h5",
                             "batch_size": BATCH, "engine": "ray", "workers": 2})
    assert run_job(spec, events.append) == "done"
    assert events[-1]["result"]["tiles_added"] == 12
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["stage"] == "tiles" and progress[-1]["done"] == 12
    events.clear()
    spec = JobSpec("index", {"paths": [KATHER], "library_path": tmp_path / "lib.h5",
                             "engine": "spark"})
    assert run_job(spec, events.append) == "failed"
    assert "unknown engine 'spark'" in events[-1]["message"]


def test_more_workers_than_the_local_ray_can_place_is_one_line(local_ray, tmp_path, capsys):
    code = main(["index", str(KATHER), "--library", str(tmp_path / "lib.h5"), "--engine", "ray",
                 "--workers", "4"])
    assert code == 1
    assert capsys.readouterr().err == ("hashview: 4 workers need 2.5 CPUs with reading; the "
                                       "local Ray has 2\n")


def test_a_cluster_address_nothing_answers_at_is_one_line(tmp_path):
    import subprocess
    import sys

    library = tmp_path / "lib.h5"
    run = subprocess.run([sys.executable, "-m", "hashview", "index", str(KATHER), "--library",
                          str(library), "--engine", "ray", "--address", "ray://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr == "hashview: ray://127.0.0.1:1: no Ray cluster answers there " \
                         "(Connection refused)\n"
    assert not library.exists()  # no library made for a run that could not start


def test_a_stain_normalised_library_on_ray_equals_the_single_process_one(local_ray, tmp_path):
    from hashview.stain_reference import fit_reference_text

    reference = fit_reference_text(str(SLIDE))
    single, plain = tmp_path / "single.h5", tmp_path / "plain.h5"
    assert not index_paths([KATHER], single, params=PARAMS, batch_size=BATCH,
                           stain_reference=reference).failed
    shutil.copyfile(single, tmp_path / "single-patches.h5")  # before the slide joins it
    index_paths([KATHER], plain, params=PARAMS, batch_size=BATCH)
    path = tmp_path / "ray.h5"
    report = index_with_ray([KATHER], path, params=PARAMS, batch_size=BATCH, workers=2,
                            stain_reference=reference)
    assert not report.failed and report.tiles_added == 12
    with Library.open(path, mode="r") as library:
        assert library.model.stain_reference == reference
    assert library_content(path) == library_content(single)
    assert library_content(path) != library_content(plain)  # the tiles were re-stained
    # a second run into it re-stains to the stored reference without being told
    again = index_with_ray([SLIDE], path, params=PARAMS, batch_size=BATCH, workers=2)
    index_paths([SLIDE], single, params=PARAMS, batch_size=BATCH)
    assert again.tiles_added == 40 and library_content(path) == library_content(single)
    cli = tmp_path / "cli.h5"
    assert main(["index", str(KATHER), "--library", str(cli), "--engine", "ray",
                 "--stain-normalise", str(SLIDE), "--tile-size", "150", "--mpp", "0.495",
                 "--batch-size", str(BATCH)]) == 0
    with Library.open(cli, mode="r") as library:
        assert library.model.stain_reference == reference
    assert library_content(cli) == library_content(tmp_path / "single-patches.h5")


def test_annotated_slides_on_ray_equal_the_single_process_library(local_ray, tmp_path, capsys):
    from hashview.annotations.tiles import AnnotationOptions
    from conftest import TINY_SLIDE

    slides, exports = tmp_path / "slides", tmp_path / "exports"
    slides.mkdir()
    exports.mkdir()
    for slide in (SLIDE, TINY_SLIDE):
        shutil.copy(slide, slides)
    shutil.copy(DATA / "annotations" / "CMU-1-Small-Region.geojson", exports)
    (exports / "tiny-16px.svs.geojson").write_text('{"type": "FeatureCollection"}')
    options = AnnotationOptions(exports, min_cover=0.75, annotated_only=True)
    single = index_paths([slides], tmp_path / "single.h5", params=PARAMS, batch_size=BATCH,
                         annotations=options)
    on_ray = index_with_ray([slides], tmp_path / "ray.h5", params=PARAMS, batch_size=BATCH,
                            workers=2, annotations=options)
    assert on_ray.failed == single.failed and len(on_ray.failed) == 1  # the tiny slide's file
    assert "FeatureCollection without" in on_ray.failed[0]
    assert on_ray.tile_labels == single.tile_labels and set(on_ray.tile_labels) == {
        "Dermis", "Epidermis"}
    assert library_content(tmp_path / "ray.h5") == library_content(tmp_path / "single.h5")
    code = main(["index", str(slides / SLIDE.name), "--library", str(tmp_path / "cli.h5"),
                 "--engine", "ray", "--annotations", str(exports), "--max-tiles", "40"])
    out = capsys.readouterr().out
    assert code == 0 and "tile labels: Dermis" in out
