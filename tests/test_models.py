"""Architectures, registry, model cards and model files (hashview.models)."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch

from hashview.errors import ModelError
from hashview.models import (DEFAULT_MODEL, HashingNet, ModelCard, available_architectures,
                             build_model, list_models, load_model, save_model, user_models_dir)
from hashview.models.dch import paper_param_count
from hashview.models.hatdh import HCAM, eca_kernel_size


def _small_batch(net: HashingNet, n: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, net.input_size, net.input_size, generator=gen) * 2 - 1


# ---------------------------------------------------------------- registry and architectures

def test_registry_knows_both_architectures():
    assert {"hatdh", "dch"} <= set(available_architectures())


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(ModelError) as err:
        build_model("resnet", 64)
    assert "hatdh" in str(err.value) and "dch" in str(err.value)
    assert "\n" not in str(err.value)


def test_bits_must_fill_bytes():
    with pytest.raises(ModelError):
        build_model("dch", 12)


@pytest.mark.parametrize("arch,bits", [("hatdh", 32), ("hatdh", 64), ("hatdh", 128),
                                       ("dch", 16), ("dch", 32), ("dch", 64)])
def test_forward_shape_and_range(arch, bits):
    net = build_model(arch, bits).eval()
    assert (net.arch, net.bits) == (arch, bits)
    assert net.input_size == {"hatdh": 224, "dch": 128}[arch]
    with torch.inference_mode():
        codes, logits = net.forward_with_logits(_small_batch(net))
    assert codes.shape == (2, bits)
    assert torch.all(codes.abs() < 1)
    assert torch.equal(torch.sign(codes), torch.sign(logits))


def test_hcam_keeps_shape_and_omega_is_a_convex_weight():
    hcam = HCAM(512)
    assert hcam.k1 == 5 and hcam.k2 == 7
    assert [eca_kernel_size(c) for c in (32, 64, 128, 256, 1024)] == [3, 3, 5, 5, 5]
    x = torch.randn(2, 512, 7, 9)
    assert hcam(x).shape == x.shape
    for logit in (-50.0, 0.0, 3.0, 50.0):
        hcam.omega_logit.data.fill_(logit)
        w1, w2 = hcam.omega
        assert 0 <= w1.item() <= 1 and 0 <= w2.item() <= 1
        assert w1.item() + w2.item() == pytest.approx(1.0)


def test_hatdh_feature_is_512d_and_attention_can_be_ablated():
    net = build_model("hatdh", 32).eval()
    assert net.hash_layer.in_features == 512
    plain = build_model("hatdh", 32, attention=False).eval()
    assert not any(isinstance(m, HCAM) for m in plain.modules())
    with torch.inference_mode():
        assert plain(_small_batch(plain)).shape == (2, 32)


@pytest.mark.parametrize("arch", ["hatdh", "dch"])
def test_feature_layer_yields_a_feature_map(arch):
    net = build_model(arch, 32).eval()
    seen = []
    handle = net.feature_layer().register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.inference_mode():
        net(_small_batch(net, 1))
    handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][-1] > 1


def test_backward_reaches_backbone_attention_and_hash_layer():
    net = build_model("hatdh", 32).train()
    net(_small_batch(net)).pow(2).sum().backward()
    for p in (net.backbone.features[0][0].weight, net.attention.omega_logit,
              net.attention.h_conv1.weight, net.hash_layer.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert net.backbone.features[0][0].weight.grad.abs().sum() > 0


def test_dch_classifier_trains_and_codes_skip_it():
    net = build_model("dch", 16, n_classes=4).train()
    codes, logits = net.codes_and_class_logits(_small_batch(net, 4))
    assert codes.shape == (4, 16) and logits.shape == (4, 4)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for p in (net.features[0][0].weight, net.lbe.weight, net.classifier.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert net.classify(_small_batch(net, 2)).shape == (2, 4)


def test_dch_variant_parameter_count_and_file_size(tmp_path):
    net = build_model("dch", 64)
    n_params = sum(p.numel() for p in net.parameters())
    # convs 65,376 + BN 384 + FC 1024x2048 + BN 4,096 + LBE 2048x64 + BN 128 + classifier 520
    assert n_params == 2_298_728
    assert net.fc[1].in_features == 64 * 4 * 4
    assert paper_param_count(64, padding="same") == 134_421_348  # the printed "~130M"
    card = save_model(net, ModelCard("dch-64", "dch", 64, 128), tmp_path / "dch-64")
    size = (tmp_path / "dch-64.safetensors").stat().st_size
    assert size < 5_000_000 and card.sha256


# ---------------------------------------------------------------- cards

def test_card_json_roundtrip_ignores_unknown_keys():
    card = ModelCard("m", "hatdh", 64, 224, training={"epochs": 3}, class_names=["a", "b"])
    data = json.loads(card.to_json())
    data["added_by_a_future_version"] = 1
    back = ModelCard.from_json(json.dumps(data))
    assert back == card and back.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("patch", [{"bits": None}, {"bits": 12}, {"input_size": "x"},
                                   {"std": [0.5, 0.5]}, {"std": [0.5, 0.0, 0.5]}])
def test_card_rejects_missing_or_bad_values(patch):
    data = ModelCard("m", "hatdh", 64, 224).to_dict()
    data.update(patch)
    if patch.get("bits", 0) is None:
        del data["bits"]
    with pytest.raises(ModelError) as err:
        ModelCard.from_dict(data, "m.json")
    assert str(err.value).startswith("m.json: ")


def test_card_rejects_invalid_json():
    with pytest.raises(ModelError):
        ModelCard.from_json("{not json", "x.json")


@pytest.mark.parametrize("patch, field", [
    ({"input_size": 100000}, "input_size"), ({"input_size": 8}, "input_size"),
    ({"input_size": 512}, "input_size"),  # MTH's attention is quadratic in positions
    ({"bits": 2**30}, "bits"), ({"bits": True}, "bits"),
    ({"arch_kwargs": {"feature_dim": 10**9}}, "feature_dim"),
    ({"arch_kwargs": {"width": 1.5}}, "width"),
    ({"arch_kwargs": {"pooled_size": 4}}, "pooled_size"),  # DCH's, not MTH's
    ({"arch": "resnet"}, "arch"), ({"code_kind": "float"}, "code_kind"),
    ({"mean": [0.5, float("nan"), 0.5]}, "mean"), ({"std": [0.5, 1e999, 0.5]}, "std"),
    ({"mean": [0.5, "x", 0.5]}, "mean"),
    ({"name": "../../evil"}, "name"), ({"name": ".hidden"}, "name"),
    ({"name": "a\x1b[31mb"}, "name"), ({"name": ""}, "name"),
    ({"sha256": "not-a-digest"}, "sha256"), ({"tile_size": 1}, "tile_size"),
    ({"target_mpp": -1}, "target_mpp"), ({"class_names": [1, 2]}, "class_names"),
])
def test_card_fields_are_checked_for_type_and_range(patch, field):
    data = ModelCard("m", "mth", 64, 64, arch_kwargs={"width": 16, "feature_dim": 1024}).to_dict()
    data.update(patch)
    with pytest.raises(ModelError) as err:
        ModelCard.from_json(json.dumps(data), "m.json")
    message = str(err.value)
    assert message.startswith("m.json: invalid model card: ") and field in message
    assert "\n" not in message and len(message) < 300


def test_every_shipped_card_is_within_the_limits():
    from hashview.models.store import bundled_models_dirs

    cards = sorted(bundled_models_dirs()[0].glob("*.json"))
    assert len(cards) >= 10
    for path in cards:
        ModelCard.read(path)  # raises if a field is out of range


def test_an_oversized_card_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    from hashview.models import cards

    path = tmp_path / "m.json"
    path.write_text(ModelCard("m", "dch", 16, 128).to_json())
    monkeypatch.setattr(cards, "MAX_CARD_BYTES", 100)
    with pytest.raises(ModelError, match=r"m.json: cannot read model card \(file too large"):
        ModelCard.read(path)


def test_saving_refuses_a_name_that_is_not_plain(tmp_path):
    net = build_model("dch", 16)
    for name in (".hidden", "two words", "tab\there"):
        with pytest.raises(ModelError) as err:
            save_model(net, ModelCard("x", "dch", 16, 128), tmp_path / name)
        assert "plain name" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_training_names_a_model_plainly_after_any_folder():
    from hashview.training import TrainConfig

    assert TrainConfig(arch="dch", bits=16, dataset="my data/../x").model_name() == \
        "dch-16-my_data_.._x"
    with pytest.raises(ModelError):
        TrainConfig(arch="dch", bits=16, name="../up").resolved()


def test_a_trained_model_never_takes_a_bundled_model_s_name():
    from hashview.training import TrainConfig

    # a folder called "idc" trained with DCH at 64 bits would be the bundled dch-64-idc
    assert TrainConfig(arch="dch", bits=64, dataset="idc").model_name() == "dch-64-idc-own"
    assert TrainConfig(arch="dch", bits=64, dataset="oral").model_name() == "dch-64-oral"
    assert TrainConfig(arch="dch", bits=64, dataset="idc", name="dch-64-idc").model_name() == \
        "dch-64-idc"  # a name asked for is kept; installing it is then refused in one line


# ---------------------------------------------------------------- model files

def _fp16_rounded(net: HashingNet) -> HashingNet:
    rounded = copy.deepcopy(net)
    for p in rounded.parameters():
        p.data = p.data.half().float()
    return rounded


def _trained_like(arch: str, bits: int) -> HashingNet:
    torch.manual_seed(3)
    net = build_model(arch, bits)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_save_load_roundtrip_matches_fp16_rounded_weights(tmp_path):
    net = _trained_like("hatdh", 32)
    card = save_model(net, ModelCard("x", "hatdh", 32, 224, trained=True), tmp_path / "mine")
    assert card.name == "mine" and len(card.sha256) == 64 and card.created
    first = load_model(tmp_path / "mine.safetensors")
    second = load_model(tmp_path / "mine.json")
    assert first.card.sha256 == card.sha256 and first.card.trained
    x = _small_batch(net, 3)
    with torch.inference_mode():
        expected = _fp16_rounded(net)(x)
        a, b = first.net(x), second.net(x)
    assert torch.equal(a, b)
    assert torch.allclose(a, expected, atol=1e-6)
    assert torch.equal(torch.sign(a), torch.sign(expected))


def test_dch_roundtrip_keeps_arch_kwargs(tmp_path):
    net = build_model("dch", 16, n_classes=3, lbe_batchnorm=False).eval()
    save_model(net, ModelCard("d", "dch", 16, 128, class_names=["a", "b", "c"]), tmp_path / "d")
    loaded = load_model(tmp_path / "d.json")
    assert loaded.net.n_classes == 3 and not loaded.net.lbe_batchnorm
    assert loaded.card.class_names == ["a", "b", "c"]


def test_tampered_weights_are_refused(tmp_path):
    save_model(build_model("dch", 16), ModelCard("t", "dch", 16, 128), tmp_path / "t")
    weights = tmp_path / "t.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError) as err:
        load_model(weights)
    assert "t.safetensors" in str(err.value) and "SHA-256" in str(err.value)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('unpickled')",)


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload)  # the payload is live: unpickling it does write the marker
    assert marker.exists()
    marker.unlink()
    for name in ("evil.pt", "evil.pth", "evil.ckpt"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ModelError) as err:
            load_model(tmp_path / name)
        assert "pickle-based model files are not accepted; use .safetensors" in str(err.value)
    # A pickle disguised as .safetensors (with a matching card) fails to parse, never unpickles.
    import hashlib
    (tmp_path / "evil.safetensors").write_bytes(payload)
    card = ModelCard("evil", "dch", 16, 128, sha256=hashlib.sha256(payload).hexdigest())
    (tmp_path / "evil.json").write_text(card.to_json())
    with pytest.raises(ModelError):
        load_model(tmp_path / "evil.safetensors")
    assert not marker.exists()


def test_wrong_shapes_give_one_line_error(tmp_path):
    save_model(build_model("dch", 16), ModelCard("w", "dch", 16, 128), tmp_path / "w")
    card_path = tmp_path / "w.json"
    data = json.loads(card_path.read_text())
    data["bits"] = 32
    card_path.write_text(json.dumps(data))
    with pytest.raises(ModelError) as err:
        load_model(card_path)
    message = str(err.value)
    assert "\n" not in message and "shape mismatch" in message and "w.safetensors" in message


def _rewrite_card(card_path, **changes):
    data = json.loads(card_path.read_text())
    data.update(changes)
    card_path.write_text(json.dumps(data))


def test_weights_that_do_not_fit_are_refused_from_the_header(tmp_path, monkeypatch):
    """A card that lies about its sizes is refused from the safetensors header, before a single
    tensor is made (here the file's tensors are DCH-16's and the card says 32 bits)."""
    from hashview.models import store

    save_model(build_model("dch", 16), ModelCard("w", "dch", 16, 128), tmp_path / "w")
    _rewrite_card(tmp_path / "w.json", bits=32)

    def never(data):
        raise AssertionError("tensors were loaded from a file that does not fit the card")

    monkeypatch.setattr(store, "load_safetensors_bytes", never)
    with pytest.raises(ModelError) as err:
        load_model(tmp_path / "w.json")
    assert "shape mismatch" in str(err.value) and "lbe.weight" in str(err.value)


def test_a_card_for_a_huge_net_is_refused_without_building_it(tmp_path):
    save_model(build_model("dch", 16), ModelCard("h", "dch", 16, 128), tmp_path / "h")
    # Every field in range, but together 179 million parameters.
    _rewrite_card(tmp_path / "h.json", arch="lgffem", code_kind="float", input_size=96,
                  arch_kwargs={"dims": [768] * 4, "depths": [12] * 4})
    with pytest.raises(ModelError) as err:
        load_model(tmp_path / "h.json")
    assert "h.json" in str(err.value) and "parameters" in str(err.value)


@pytest.mark.slow
def test_a_huge_weights_file_is_refused_by_size_in_little_memory(tmp_path):
    """A 3 GB (sparse) weights file with a plausible card: refused from its size, before it is
    hashed or read, so the process's peak memory barely moves (VmHWM, in a subprocess)."""
    import subprocess
    import sys

    save_model(build_model("dch", 16), ModelCard("big", "dch", 16, 128), tmp_path / "big")
    with open(tmp_path / "big.safetensors", "r+b") as f:
        f.truncate(3 * 2**30)
    code = ("import json, resource, sys\n"
            "from hashview.errors import ModelError\n"
            "from hashview.models import load_model\n"
            # VmHWM, not ru_maxrss, which keeps the peak of the test process it forked from
            "peak = lambda: 1024 * int(next(line.split()[1] for line in open('/proc/self/status')"
            " if line.startswith('VmHWM')))\n"
            "before = peak()\n"
            "try:\n"
            "    load_model(sys.argv[1]); message = None\n"
            "except ModelError as exc:\n"
            "    message = str(exc)\n"
            "print(json.dumps({'grew': peak() - before, 'message': message}))\n")
    root = Path(__file__).resolve().parents[1]  # this checkout's hashview, whatever the cwd
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.safetensors")],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["message"] and "\n" not in result["message"]
    assert "big.safetensors" in result["message"] and "larger than" in result["message"]
    assert result["grew"] < 200 * 2**20, result


def test_missing_card_or_weights(tmp_path):
    with pytest.raises(ModelError):
        load_model(tmp_path / "absent.safetensors")
    with pytest.raises(ModelError) as err:
        load_model("no-such-model")
    assert DEFAULT_MODEL in str(err.value)


@pytest.fixture
def no_bundled(monkeypatch):
    """Hide resources/models, so only the models a test writes are found."""
    from hashview.models import store
    monkeypatch.setattr(store, "bundled_models_dirs", lambda: [])


def test_default_model_is_bundled_trained_and_verified():
    loaded = load_model(DEFAULT_MODEL)  # the sha256 in its card is checked on load
    assert loaded.card.trained and loaded.card.source == "bundled"
    assert loaded.card.metrics and loaded.card.split  # measured, with the split it was tested on
    names = {c.name: c for c in list_models()}
    assert DEFAULT_MODEL in names and all(card.trained for card in names.values())


def test_user_models_are_found_by_name_and_listed(no_bundled):
    net = build_model("dch", 16).eval()
    save_model(net, ModelCard("u", "dch", 16, 128, trained=True), user_models_dir() / "dch-user")
    loaded = load_model("dch-user")
    assert loaded.card.source == "user" and loaded.net.bits == 16
    names = {c.name: c for c in list_models()}
    assert "dch-user" in names and names["dch-user"].trained


def test_saving_the_same_weights_twice_gives_the_same_file(tmp_path):
    torch.manual_seed(0)
    net = build_model("hatdh", 32, input_size=64).eval()
    card = ModelCard("m", "hatdh", 32, 64)
    first = save_model(net, card, tmp_path / "a")
    second = save_model(net, card, tmp_path / "b")
    assert first.sha256 == second.sha256
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


@pytest.mark.slow
def test_loading_the_default_model_does_not_import_torchvision():
    """Only DAFH and LGFFEM need torchvision (~1 s to import): the app's start-up path, which
    loads the default model, must not pay for it (a fresh interpreter, so nothing is cached)."""
    import subprocess
    import sys

    code = ("import sys; from hashview.models import load_model, DEFAULT_MODEL; "
            "load_model(DEFAULT_MODEL); print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_one_table_lists_the_architectures_the_registry_objectives_and_cli_know():
    from hashview import cli
    from hashview.models.card_limits import ARCHITECTURES
    from hashview.models.registry import available_architectures
    from hashview.training.objectives import trainable_architectures

    names = set(ARCHITECTURES)
    assert set(available_architectures()) == names
    assert set(trainable_architectures()) == names
    assert set(cli.ARCH_NAMES) == names
