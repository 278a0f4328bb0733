"""LGFFEM: the float-descriptor model, Sub-center ArcFace, cosine evaluation, float model files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hashview.encode import Encoder
from hashview.errors import ModelError
from hashview.evaluation import evaluate_model
from hashview.library import Library
from hashview.metrics import cosine_ranking, evaluate_codes
from hashview.models import LoadedModel, ModelCard, build_model, load_model, save_model
from hashview.slides.folders import scan_patch_folder
from hashview.training import TrainConfig, train
from hashview.training.arcface import SubCenterArcFace
from hashview.training.data import PatchesInMemory
from hashview.training.loop import _Run

KATHER = Path(__file__).resolve().parent / "data" / "kather"
SIZE = 64
# A few thousand parameters: the same code paths as the default net, fast on 2 CPU cores.
TINY = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "neck_channels": 16, "neck_layers": 1}


@pytest.fixture(scope="module")
def entries():
    return scan_patch_folder(KATHER)  # 4 classes x 3 real Kather tiles


@pytest.fixture(scope="module")
def images(entries):
    return [Image.open(e.path).convert("RGB") for e in entries]


def tiny_config(**kw) -> TrainConfig:
    base = dict(arch="lgffem", bits=16, epochs=1, batch_size=6, input_size=SIZE,
                steps_per_epoch=2, seed=5, device="cpu", arch_kwargs=dict(TINY))
    base.update(kw)
    return TrainConfig(**base)


def _normalised(images, size):
    pixels = np.stack([np.asarray(im.resize((size, size), Image.BILINEAR)) for im in images])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------- the model

def test_forward_and_backward_on_real_tiles(images):
    torch.manual_seed(0)
    net = build_model("lgffem", 64)  # the default (shipped) configuration
    assert (net.code_kind, net.input_size) == ("float", 96)
    x = _normalised(images[:4], net.input_size)
    descriptors, raw = net.forward_with_logits(x)
    assert descriptors.shape == (4, 64) and descriptors.dtype == torch.float32
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(torch.sign(descriptors), torch.sign(raw))
    loss = SubCenterArcFace(64, 4)(raw, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    missing = [n for n, p in net.named_parameters() if p.grad is None
               or not torch.isfinite(p.grad).all()]
    assert not missing
    assert net.backbone[0][0].weight.grad.abs().sum() > 0  # reaches the stem


def test_odd_pyramid_sides_and_bad_settings():
    net = build_model("lgffem", 16, input_size=72, **TINY).eval()  # levels 18, 9, 4, 2
    with torch.no_grad():
        assert net(torch.randn(2, 3, 72, 72)).shape == (2, 16)
    with pytest.raises(ModelError, match="stages"):
        build_model("lgffem", 16, dims=[8, 16, 32])


# ---------------------------------------------------------------- Sub-center ArcFace by hand

def _arcface(centres, k, scale=2.0, margin=30.0):
    loss = SubCenterArcFace(2, len(centres) // k, k, margin_degrees=margin, scale=scale)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor(centres, dtype=torch.float32))
    return loss


@pytest.mark.parametrize("centres,k,target_cos", [
    # one centre per class; the embedding sits on its class centre: t = 0, cos(0 + 30 deg)
    ([[2.0, 0.0], [0.0, 1.0]], 1, math.cos(math.radians(30))),
    # two sub-centres per class; the nearer one (45 deg) counts: cos(45 + 30 deg)
    ([[0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], 2, math.cos(math.radians(75))),
    # t = 180 deg, t + m > pi: the linear continuation cos t - m sin m
    ([[-1.0, 0.0], [0.0, 1.0]], 1, -1.0 - math.radians(30) * math.sin(math.radians(30))),
])
def test_subcenter_arcface_by_hand(centres, k, target_cos):
    # embedding (3, 0), class 0; the other class's best cosine is 0 in every case
    loss = _arcface(centres, k)(torch.tensor([[3.0, 0.0]]), torch.tensor([0]))
    expected = math.log(1.0 + math.exp(2.0 * (0.0 - target_cos)))
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------- training

def test_steps_lower_the_loss_on_a_fixed_batch(entries):
    data = PatchesInMemory(entries, SIZE)
    cfg = tiny_config(augment=False, schedule="constant", epochs=2).resolved()
    assert cfg.objective_options == {"subcenters": 3, "margin_degrees": 17.2, "scale": 64.0}
    run = _Run(cfg, data, torch.device("cpu"))
    pixels, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    before = run.batch_loss(pixels, labels)
    for _ in range(8):
        run.step(pixels, labels)
    after = run.batch_loss(pixels, labels)
    assert after < 0.8 * before, (before, after)


def test_bad_objective_option_is_one_line():
    with pytest.raises(ModelError, match="subcenters"):
        tiny_config(objective_options={"subcenters": 0}).resolved()


def test_trained_model_reloads_and_encodes_identically(entries, images, tmp_path):
    result = train(tiny_config(), entries, tmp_path)
    loaded = load_model(result.model_path)
    assert loaded.card.code_kind == "float" and loaded.card.code_bytes == 16 * 4
    assert '"code_kind": "float"' in (tmp_path / f"{loaded.card.name}.json").read_text()
    from_file = Encoder(loaded, device="cpu")
    assert from_file.code_kind == "float"
    codes = from_file.encode(images)
    assert codes.dtype == np.float32 and codes.shape == (len(images), 16)
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)
    in_memory = Encoder(LoadedModel(result.net, result.card), device="cpu").encode(images)
    np.testing.assert_array_equal(codes, in_memory)


def test_card_code_kind_default_and_validation():
    base = {"name": "m", "arch": "dch", "bits": 64, "input_size": 128}
    card = ModelCard.from_dict(base)
    assert card.code_kind == "binary" and card.code_bytes == 8
    with pytest.raises(ModelError, match="code_kind") as err:
        ModelCard.from_dict({**base, "code_kind": "ternary"}, "m.json")
    assert str(err.value).startswith("m.json: ") and "\n" not in str(err.value)


# ---------------------------------------------------------------- cosine evaluation

def test_cosine_ranking_ties_by_index_and_map_by_hand():
    db = np.array([[1, 0], [0, 1], [1, 0], [-1, 0]], dtype=np.float32)
    db_labels = np.array(["a", "b", "a", "b"])
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    order, distances = cosine_ranking(queries, db)
    assert order.tolist() == [[0, 2, 1, 3], [1, 0, 2, 3]]
    np.testing.assert_allclose(distances, [[0, 0, 1, 2], [0, 1, 1, 1]])
    scores = evaluate_codes(db, db_labels, queries, np.array(["a", "a"]), bits=2, k_list=(2,),
                            vote_k=1)
    # query 1: relevant at ranks 1, 2 -> AP 1; query 2: at ranks 2, 3 -> (1/2 + 2/3) / 2
    assert scores["map"] == pytest.approx((1.0 + (0.5 + 2 / 3) / 2) / 2)
    assert scores["vote_accuracy@1"] == 0.5
    assert not [k for k in scores if k.startswith("radius")]


def test_evaluate_float_model_scores_the_binarised_variant_too(tmp_path):
    torch.manual_seed(0)
    net = build_model("lgffem", 16, input_size=SIZE, **TINY).eval()
    card = save_model(net, ModelCard(name="tiny", arch="lgffem", bits=16, input_size=SIZE),
                      tmp_path / "tiny")
    assert card.code_kind == "float"
    result = evaluate_model(tmp_path / "tiny.safetensors", KATHER, seeds=(0, 1), device="cpu")
    assert (result["code_kind"], result["bytes_per_code"], result["binarised_bytes_per_code"]) \
        == ("float", 64, 2)
    for key in ("map", "binarised_map", "binarised_radius2_precision", "vote_accuracy@10"):
        assert 0.0 <= result["mean"][key] <= 1.0, key
    assert "radius2_precision" not in result["mean"]


# ---------------------------------------------------------------- end to end

def test_index_and_search_a_float_library_through_the_cli(tmp_path, capsys):
    import json

    from hashview.cli import main

    torch.manual_seed(0)
    net = build_model("lgffem", 16, input_size=SIZE, **TINY).eval()
    save_model(net, ModelCard(name="tiny", arch="lgffem", bits=16, input_size=SIZE),
               tmp_path / "tiny")
    library = tmp_path / "float.h5"
    assert main(["index", str(KATHER), "--library", str(library), "--model",
                 str(tmp_path / "tiny.safetensors"), "--json"]) == 0
    capsys.readouterr()
    query = sorted((KATHER / "04_LYMPHO").iterdir())[0]
    assert main(["search", str(library), str(query), "--json", "--top-k", "12", "--model",
                 str(tmp_path / "tiny.safetensors")]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 12
    assert hits[0]["source_path"] == str(query.resolve())
    distances = [h["distance"] for h in hits]
    assert distances == sorted(distances)
    # distance = 1 - cosine between the stored descriptors (float16 in the library, hence the
    # tolerance); every patch is one source with one tile
    with Library.open(library) as lib:
        assert lib.code_kind == "float"
        codes, table = lib.codes(), lib.tile_table()
        rows = {h["source_path"]: int(np.flatnonzero(
            table["source_id"] == lib.find_source(path=h["source_path"]).id)[0]) for h in hits}
    assert len(rows) == 12 and codes.shape == (12, 16)
    query_code = codes[rows[str(query.resolve())]]
    for hit in hits:
        expected = 1.0 - float(codes[rows[hit["source_path"]]] @ query_code)
        assert hit["distance"] == pytest.approx(expected, abs=2e-3)
    # queries of the wrong kind or width are refused with the library named
    from hashview.errors import LibraryError
    from hashview.search import Searcher

    with Library.open(library) as lib:
        searcher = Searcher(lib)
    with pytest.raises(LibraryError, match="have 8 dimensions but this library holds 16-d"):
        searcher.search(np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="must be floating point"):
        searcher.search(np.zeros((1, 16), np.uint8))


def test_explanations_of_a_float_model_explain_the_cosine_its_search_ranks_by():
    from hashview.explain import explain_pair, similarities, similarity

    torch.manual_seed(0)
    net = build_model("lgffem", 16, input_size=SIZE, **TINY).eval()
    loaded = LoadedModel(net, ModelCard(name="tiny", arch="lgffem", bits=16, input_size=SIZE,
                                        code_kind="float"))
    images = [Image.open(p).convert("RGB") for p in sorted(KATHER.glob("*/*.tif"))[:3]]
    a, b = images[0], images[1]
    descriptors = Encoder(loaded, device="cpu").encode([a, b])  # unit vectors
    cosine = float(descriptors[0] @ descriptors[1])
    assert similarity(loaded, a, b) == pytest.approx(cosine, abs=1e-5)
    assert similarities(loaded, [a, b], b)[1] == pytest.approx(1.0, abs=1e-5)
    result = explain_pair(loaded, a, b)
    assert result.similarity == pytest.approx(cosine, abs=1e-5)
    assert result.stats["hamming"] is None
    assert result.stats["distance"] == pytest.approx(1.0 - cosine, abs=1e-5)
    assert result.map_a.shape == (a.height, a.width) and 0.0 <= result.map_a.min()
