"""DAFH: the net on real tiles (shapes, Ptanh slope, Grad-CAM layer, backward), the focal and
DAFH losses against hand-computed values, and save/reload encoding identically."""

from __future__ import annotations

import math

import pytest
import torch

from hashview.models import build_model
from _model_helpers import check_trained_model_reloads_identically, kather_batch
from hashview.training.triplet_class_losses import DAFHLoss, euclidean_distances, focal_loss

SIZE = 64


@pytest.fixture(scope="module")
def batch():
    return kather_batch(SIZE)  # 4 classes x 3 real Kather tiles


def test_forward_on_real_tiles_codes_logits_and_feature_map(batch):
    x, _ = batch
    net = build_model("dafh", 32, input_size=SIZE, n_classes=4).eval()
    seen = []
    handle = net.feature_layer().register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.inference_mode():
        codes, logits = net.codes_and_class_logits(x)
        plain = net(x)
        batch_stats = net.train()(x)  # BatchNorm on the batch, as in training
    handle.remove()
    assert codes.shape == (12, 32) and logits.shape == (12, 4)
    assert torch.equal(codes, plain) and codes.abs().max() < 1
    # codes depend on the image (an untrained net in eval mode is nearly constant: its
    # BatchNorm running statistics are still the defaults)
    assert batch_stats.std(dim=0).mean() > 0.01
    # B0's penultimate stage: 192 channels at 1/32 resolution (2x2 at 64 px)
    assert seen[0][1:] == (192, 2, 2)


def test_ptanh_slope_stays_above_one():
    net = build_model("dafh", 16, input_size=SIZE)
    for theta in (-10.0, 0.0, 5.0):  # (float32 rounds 1 + softplus(theta) to 1 below ~-16)
        net.slope_param.data.fill_(theta)
        assert net.slope.item() > 1.0
    net.slope_param.data.fill_(0.0)
    assert net.slope.item() == pytest.approx(1 + math.log(2))


def test_backward_reaches_backbone_cbam_fusion_slope_and_classifier(batch):
    x, y = batch
    net = build_model("dafh", 16, input_size=SIZE, n_classes=4).train()
    codes, logits = net.codes_and_class_logits(x)
    loss, parts = DAFHLoss(mode="batch-hard")(codes, logits, y)
    loss.backward()
    assert parts["triplets"] == 12
    for p in (net.stem_to_penultimate[0][0].weight, net.cbam.spatial.weight,
              net.cbam.mlp[0].weight, net.fusion[0].weight, net.hash_layer.weight,
              net.slope_param, net.classifier.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_classifier_on_codes_or_on_the_fusion_layer():
    assert build_model("dafh", 16, input_size=SIZE, n_classes=3).classifier.in_features == 16
    text = build_model("dafh", 16, input_size=SIZE, n_classes=3, classifier_input="fusion")
    assert text.classifier.in_features == 256
    with pytest.raises(Exception, match="classifier_input"):
        build_model("dafh", 16, classifier_input="pixels")


def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    p = [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1)), 0.5]  # p of the true class
    expected = [-(1 - q) ** 1.5 * math.log(q) for q in p]
    assert focal_loss(logits, labels, 1.5).tolist() == pytest.approx(expected, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(focal_loss(logits, labels, 0.0), ce)  # gamma 0 = cross-entropy


def test_dafh_loss_by_hand():
    codes = torch.tensor([[0.5, -0.5], [0.3, 0.1], [-0.2, 0.4]])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # batch-hard triplets: (0, 1, 2) and (1, 0, 2); Euclidean distances
    d01, d02, d12 = math.sqrt(0.40), math.sqrt(1.30), math.sqrt(0.34)
    triplet = (max(d01 - d02 + 0.5, 0) + max(d01 - d12 + 0.5, 0)) / 2
    f = [-(1 - q) ** 1.5 * math.log(q) for q in (1 / (1 + math.exp(-2)),
                                                   1 / (1 + math.exp(1)), 0.5)]
    # lambda (F_A + F_P + F_N), lambda = 1/3: anchors {0, 1}, positives {1, 0}, negatives {2, 2}
    focal = ((f[0] + f[1]) / 2 + (f[1] + f[0]) / 2 + f[2]) / 3
    value, parts = DAFHLoss(mode="batch-hard")(codes, logits, labels)
    assert parts["triplets"] == 2
    assert value.item() == pytest.approx(focal + triplet, abs=1e-6)
    weighted, _ = DAFHLoss(margin=0.2, triplet_weight=2.0, mode="batch-hard")(codes, logits,
                                                                            labels)
    triplet02 = (max(d01 - d02 + 0.2, 0) + max(d01 - d12 + 0.2, 0)) / 2
    assert weighted.item() == pytest.approx(focal + 2 * triplet02, abs=1e-6)


def test_euclidean_distances_have_finite_gradients_on_identical_rows():
    x = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 1.0]], requires_grad=True)
    d = euclidean_distances(x)
    assert d[0, 1].item() == 0 and d[0, 2].item() == pytest.approx(math.sqrt(0.5))
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_trained_model_reloads_and_encodes_identically(tmp_path):
    result = check_trained_model_reloads_identically("dafh", tmp_path, SIZE)
    assert result.card.arch == "dafh"
    assert result.card.training["config"]["objective_options"]["focal_gamma"] == 1.5
