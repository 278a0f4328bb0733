"""Grad-CAM for code similarity (hashview.explain) on real Kather tiles with the default model."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import KATHER
from hashview.cli import main
from hashview.explain import (METHODS, deletion_check, explain_pair, map_stats, overlay, pearson,
                              randomised_copy)
from hashview.models import DEFAULT_MODEL, load_model

CLASSES = sorted(p.name for p in KATHER.iterdir() if p.is_dir())


def tile(path) -> Image.Image:
    return Image.open(path).convert("RGB")


def same_class_pairs():
    """Every unordered same-class pair: 4 classes x 3 tiles -> 12 pairs."""
    pairs = []
    for name in CLASSES:
        files = sorted((KATHER / name).iterdir())
        pairs += list(itertools.combinations(files, 2))
    return pairs


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)


@pytest.mark.parametrize("method", METHODS)
def test_maps_have_image_shape_range_and_are_deterministic(model, method):
    a_path, b_path = same_class_pairs()[0]
    a = tile(a_path).resize((150, 120))  # a non-square image: maps follow each image's size
    b = tile(b_path)
    first = explain_pair(model, a, b, method=method)
    assert first.map_a.shape == (120, 150) and first.map_b.shape == (150, 150)
    for heat in (first.map_a, first.map_b):
        assert heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() <= 1.0
        assert heat.max() == pytest.approx(1.0) or heat.max() == 0.0
    assert -1.0 < first.similarity < 1.0
    assert {"similarity_ba", "hamming", "map_a", "map_b"} <= set(first.stats)
    second = explain_pair(model, a, b, method=method)
    np.testing.assert_array_equal(first.map_a, second.map_a)
    np.testing.assert_array_equal(first.map_b, second.map_b)
    assert first.similarity == second.similarity


def test_no_side_effects_on_the_model(model):
    a_path, b_path = same_class_pairs()[1]
    layer = model.net.feature_layer()
    explain_pair(model, tile(a_path), tile(b_path))
    assert not layer._forward_hooks
    assert all(p.grad is None for p in model.net.parameters())
    assert not model.net.training


def test_map_stats_and_overlay():
    heat = np.zeros((10, 20), np.float32)
    heat[:, 15:] = 1.0
    stats = map_stats(heat)
    assert stats["max"] == 1.0 and stats["frac_above_0_5"] == pytest.approx(0.25)
    assert stats["centre_of_mass"][0] > 0.7 and stats["centre_of_mass"][1] == pytest.approx(0.5)
    assert map_stats(np.zeros((4, 4)))["centre_of_mass"] is None
    image = Image.new("RGB", (20, 10), (200, 100, 50))
    assert np.array_equal(np.asarray(overlay(image, heat, opacity=0.0)), np.asarray(image))
    blended = np.asarray(overlay(image, heat, opacity=1.0))
    assert blended[0, 0, 2] > blended[0, 0, 0]    # cold = blue
    assert blended[0, 19, 0] > blended[0, 19, 2]  # hot = red
    assert overlay(image, np.zeros((5, 5)), 0.5).size == image.size


def test_model_randomisation_changes_the_maps(model):
    """Adebayo et al.'s sanity check: maps of a re-initialised net must differ."""
    random_model = randomised_copy(model, seed=0)
    trained = next(iter(model.net.state_dict().values()))
    assert not torch.equal(trained, next(iter(random_model.net.state_dict().values())))
    correlations = []
    for a_path, b_path in same_class_pairs():
        a, b = tile(a_path), tile(b_path)
        mine = explain_pair(model, a, b).map_a
        other = explain_pair(random_model, a, b).map_a
        correlations.append(pearson(mine, other))
    assert np.mean(correlations) < 0.5, correlations


def test_deleting_highlighted_pixels_lowers_similarity_more_than_random(model):
    top, random = [], []
    for a_path, b_path in same_class_pairs():
        a, b = tile(a_path), tile(b_path)
        result = deletion_check(model, a, b, explain_pair(model, a, b).map_a, fraction=0.2)
        top.append(result["top_drop"])
        random.append(result["random_drop"])
    assert np.mean(top) > np.mean(random), (top, random)
    assert np.mean(np.array(top) > np.array(random)) >= 0.6


def test_cli_explain_writes_side_by_side_png_and_json(tmp_path, capsys):
    a_path, b_path = same_class_pairs()[0]
    out = tmp_path / "x.png"
    code = main(["explain", str(a_path), str(b_path), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["out"] == str(out)
    assert {"mean", "max", "frac_above_0_5", "centre_of_mass"} <= set(result["query_map"])
    assert -1.0 < result["similarity"] < 1.0
    with Image.open(out) as png:
        from hashview.cli.models import EXPLAIN_PANEL
        assert png.width == 4 * EXPLAIN_PANEL
        assert png.height > EXPLAIN_PANEL


def test_cli_explain_bad_input_is_one_line(tmp_path, capsys):
    a_path, _ = same_class_pairs()[0]
    code = main(["explain", str(a_path), str(tmp_path / "missing.png")])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "missing.png" in err
