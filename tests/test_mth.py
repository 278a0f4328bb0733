"""MTH: the reconstructed net on real tiles (block widths, self-attention against a loop
implementation, Grad-CAM layer, backward), the MTH loss against a hand-computed case, and
save/reload encoding identically."""

from __future__ import annotations

import math

import pytest
import torch

from hashview.models import build_model
from hashview.models.mth import ConvSelfAttention, DenseBlock
from _model_helpers import check_trained_model_reloads_identically, kather_batch
from hashview.training.triplet_class_losses import MTHLoss

SIZE = 64


@pytest.fixture(scope="module")
def batch():
    return kather_batch(SIZE)  # 4 classes x 3 real Kather tiles


def test_widths_follow_the_paper_and_forward_on_real_tiles(batch):
    x, _ = batch
    net = build_model("mth", 32, input_size=SIZE).eval()
    assert DenseBlock(16, 8, 4).out_channels == 48  # c0 + c * d
    assert net.multi_scale.out_channels == 144 and net.dense.out_channels == 176
    seen = []
    handle = net.feature_layer().register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.inference_mode():
        codes, features = net.codes_and_features(x)
        plain = net(x)
    handle.remove()
    assert codes.shape == (12, 32) and features.shape == (12, 1024)
    assert torch.equal(codes, plain) and codes.abs().max() < 1 and (features >= 0).all()
    assert seen[0][1:] == (176, SIZE // 4, SIZE // 4)  # the one 4x reduction


def test_self_attention_matches_a_per_head_loop():
    torch.manual_seed(0)
    attn = ConvSelfAttention(8, heads=2).eval()
    x = torch.randn(2, 8, 3, 3)
    q, k, v = attn.qkv(x).flatten(2).chunk(3, dim=1)  # (B, 8, 9) each
    heads = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[:, s].transpose(1, 2) @ k[:, s] / math.sqrt(4), dim=-1)
        heads.append(v[:, s] @ weights.transpose(1, 2))  # (B, 4, 9)
    expected = x + attn.out(torch.cat(heads, 1).reshape(2, 8, 3, 3))
    with torch.no_grad():
        assert torch.allclose(attn(x), expected, atol=1e-5)
        attn.out.weight.zero_()
        attn.out.bias.zero_()
        assert torch.equal(attn(x), x)  # the residual path


def test_backward_reaches_every_module(batch):
    x, y = batch
    net = build_model("mth", 16, input_size=SIZE).train()
    class_layer, projection = torch.nn.Linear(1024, 4), torch.nn.Linear(16, 4)
    codes, features = net.codes_and_features(x)
    loss, parts = MTHLoss(mode="batch-hard")(codes, features, projection(codes),
                                             class_layer(features), y)
    loss.backward()
    assert parts["triplets"] == 12
    for p in (net.multi_scale.convs[2].weight, net.multi_scale.blocks[0][0].body[2].weight,
              net.attention.qkv.weight, net.dense[3].body[5].weight, net.fc[0].weight,
              net.hash_layer.weight, class_layer.weight, projection.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def _ce(logits, label):
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def test_mth_loss_by_hand():
    codes = torch.tensor([[0.5, -0.5], [0.3, 0.1], [-0.2, 0.4]])
    features = torch.tensor([[1.0, 0.0], [2.0, 2.0], [0.0, 3.0]])
    code_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    class_logits = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    # batch-hard on code distances: triplets (0, 1, 2) and (1, 0, 2)
    r2 = math.sqrt(2)
    c01, c02, c12 = math.sqrt(0.40) / r2, math.sqrt(1.30) / r2, math.sqrt(0.34) / r2
    # unit features: (1, 0), (1/r2, 1/r2), (0, 1)
    f01, f02, f12 = math.sqrt((1 - 1 / r2) ** 2 + 0.5), r2, math.sqrt(0.5 + (1 / r2 - 1) ** 2)
    eta, delta = 0.5, 0.3
    code_t = (max(c01 - c02 + eta, 0) + max(c01 - c12 + eta, 0)) / 2
    feat_t = (max(f01 - f02 + delta, 0) + max(f01 - f12 + delta, 0)) / 2
    s = [_ce(row, int(lab)) for row, lab in zip(code_logits.tolist(), labels)]
    c = [_ce(row, int(lab)) for row, lab in zip(class_logits.tolist(), labels)]
    branches = lambda v: ((v[0] + v[1]) / 2 + (v[1] + v[0]) / 2 + v[2]) / 3
    value, parts = MTHLoss(mode="batch-hard")(codes, features, code_logits, class_logits,
                                              labels)
    assert parts["triplets"] == 2
    assert value.item() == pytest.approx(branches(s) + code_t + feat_t + branches(c), abs=1e-6)
    weighted, _ = MTHLoss(alpha=2.0, beta=0.5, mode="batch-hard")(
        codes, features, code_logits, class_logits, labels)
    assert weighted.item() == pytest.approx(
        branches(s) + 2 * (code_t + feat_t) + 0.5 * branches(c), abs=1e-6)


def test_trained_model_reloads_and_encodes_identically(tmp_path):
    result = check_trained_model_reloads_identically("mth", tmp_path, SIZE)
    assert result.card.arch == "mth"
    assert result.card.training["config"]["objective_options"]["eta"] == 0.5
