"""Parameter counts and output shapes of the networks against models.md."""

from __future__ import annotations

from typing import cast

import pytest
import torch
from torch import nn

from pipeline.models.bert import BERT5, TransformerBlock
from pipeline.models.cnn_bert import CnnBert, CnnBertMlp, pool_set_embeddings
from pipeline.models.decovnet import DeCoVNet
from pipeline.models.r2plus1d import R2Plus1D, mid_planes
from pipeline.models.unet2d import UNet2D, fused_for_inference


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_unet_parameter_count_and_shape() -> None:
    net = UNet2D().eval()
    assert n_params(net) == 839_506
    with torch.inference_mode():
        out = net(torch.rand(2, 1, 64, 96))
    assert out.shape == (2, 2, 64, 96)


def test_unet_handles_sides_not_divisible_by_16() -> None:
    with torch.inference_mode():
        out = UNet2D().eval()(torch.rand(1, 1, 50, 70))
    assert out.shape == (1, 2, 50, 70)


def test_decovnet_parameter_counts_per_stage() -> None:
    net = DeCoVNet()
    assert n_params(net) == 346_978
    assert n_params(net.stem) == 7_872
    assert n_params(net.s2) == 5_440
    assert n_params(net.s3) == 28_288
    assert n_params(net.head) == 304_256
    assert n_params(net.classifier) == 1_122
    assert not any(k.startswith(("s4", "s5")) for k in net.state_dict())
    assert n_params(DeCoVNet(num_classes=3)) == 346_978 + 33


def test_decovnet_head_indices_used_by_the_cam() -> None:
    net = DeCoVNet()
    assert isinstance(net.head[0], nn.AdaptiveMaxPool3d)
    for idx, (c_in, c_out) in zip((1, 4, 8), ((128, 64), (64, 32), (32, 32)), strict=True):
        conv = net.head[idx]
        assert isinstance(conv, nn.Conv3d)
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (c_in, c_out, (3, 3, 3))
    assert isinstance(net.head[10], nn.AdaptiveMaxPool3d)
    assert [type(m) for m in net.classifier] == [nn.Linear, nn.Linear]


def test_decovnet_init() -> None:
    sd = DeCoVNet().state_dict()
    assert torch.all(sd["s2.branch_c.1.weight"] == 0)
    assert torch.all(sd["s3.branch_c.1.weight"] == 0)
    assert torch.all(sd["s2.branch_a.1.weight"] == 1)
    assert torch.all(sd["classifier.0.bias"] == 0)
    assert 0.005 < float(sd["classifier.0.weight"].std()) < 0.02


@pytest.mark.parametrize("num_classes", [2, 3])
def test_decovnet_forward_shapes(num_classes: int) -> None:
    net = DeCoVNet(num_classes=num_classes).eval()
    with torch.inference_mode():
        logits, feats, emb = net.forward_with_embedding(torch.rand(1, 2, 8, 64, 96))
        logits2, feats2 = net(torch.rand(1, 2, 8, 64, 96))
    assert logits.shape == (1, num_classes)
    assert feats.shape == (1, 128, 4, 8, 12)
    assert emb.shape == (1, 32)
    assert logits2.shape == (1, num_classes) and feats2.shape == feats.shape
    assert net.cam_weights().shape == (128, num_classes)


def test_decovnet_rejects_single_slice_input() -> None:
    with pytest.raises(ValueError):
        DeCoVNet().eval()(torch.rand(1, 2, 1, 64, 96))


def test_cam_weights_are_the_product_of_the_averaged_head() -> None:
    net = DeCoVNet()
    sd = net.state_dict()
    torch.nn.init.normal_(sd["classifier.0.weight"])
    w1 = sd["head.1.weight"].mean(dim=(2, 3, 4))
    w2 = sd["head.4.weight"].mean(dim=(2, 3, 4))
    w3 = sd["head.8.weight"].mean(dim=(2, 3, 4))
    chain = sd["classifier.1.weight"] @ sd["classifier.0.weight"] @ w3 @ w2 @ w1  # 2 x 128
    torch.testing.assert_close(net.cam_weights(), chain.t())


def test_r2plus1d_34_parameter_count_and_caffe2_mid_planes() -> None:
    net = R2Plus1D()
    assert n_params(net) == 63_491_975
    assert mid_planes(64, 64) == 144 and mid_planes(64, 128) == 230
    sd = net.state_dict()
    for layer, mid in (("layer2", 288), ("layer3", 576), ("layer4", 1152)):
        assert sd[f"{layer}.0.conv2.0.0.weight"].shape[0] == mid
    bn = net.stem[1]
    assert isinstance(bn, nn.BatchNorm3d) and bn.eps == 1e-3 and bn.momentum == 0.9


def test_cnn_bert_34_parameter_split() -> None:
    net = CnnBert(depth=34)
    assert n_params(net.backbone) == 63_491_975
    assert n_params(net.bert) == 3_155_456
    assert n_params(net.fc) == 1_026
    assert n_params(net) == 66_648_457


def test_mlp_parameter_count_and_shape() -> None:
    mlp = CnnBertMlp().eval()
    assert n_params(mlp) == 270_690
    with torch.inference_mode():
        assert mlp(torch.rand(3, 1024)).shape == (3, 2)
    acts = [type(m) for m in mlp.net]
    assert acts.count(nn.Sigmoid) == 2 and acts.count(nn.Dropout) == 2


def test_light_r2plus1d_feature_shape() -> None:
    net = R2Plus1D(blocks=(1, 1, 1, 1), base_width=8).eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 32, 48, 48))
    assert out.shape == (1, 64, 4, 3, 3)


def test_light_cnn_bert_forward() -> None:
    net = CnnBert(depth=10, base_width=8).eval()
    with torch.inference_mode():
        logits, emb = net(torch.rand(2, 3, 32, 48, 48))
    assert logits.shape == (2, 2) and emb.shape == (2, 64)
    with pytest.raises(ValueError):
        net(torch.rand(1, 3, 16, 48, 48))


def test_bert_eval_is_deterministic_and_training_masks_tokens() -> None:
    torch.manual_seed(0)
    bert = BERT5(hidden=64, heads=8)
    tokens = torch.rand(4, 4, 64)
    bert.eval()
    with torch.inference_mode():
        a, b = bert(tokens), bert(tokens)
    assert a.shape == (4, 5, 64)
    torch.testing.assert_close(a, b)
    bert.train()
    outs = [bert(tokens) for _ in range(3)]
    assert not torch.allclose(outs[0], outs[1])


def test_bert_attention_ignores_masked_keys() -> None:
    torch.manual_seed(1)
    bert = BERT5(hidden=32, heads=4, dropout=0.0).eval()
    block = cast(TransformerBlock, bert.blocks[0])
    x = torch.rand(1, 5, 32)
    keep = torch.tensor([[True, True, False, True, True]])
    changed = x.clone()
    changed[0, 2] += 10.0
    out_a = block.attention(x, keep)
    out_b = block.attention(changed, keep)
    # Position 2 is masked as a key: other positions' outputs do not depend on it.
    torch.testing.assert_close(out_a[0, [0, 1, 3, 4]], out_b[0, [0, 1, 3, 4]])


def test_pool_set_embeddings_concatenates_max_and_mean() -> None:
    e = torch.tensor([[1.0, 4.0], [3.0, 0.0]])
    torch.testing.assert_close(pool_set_embeddings(e), torch.tensor([3.0, 4.0, 2.0, 2.0]))


def test_fused_unet_gives_the_same_output() -> None:
    torch.manual_seed(0)
    net = UNet2D().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics
            nn.init.uniform_(m.get_buffer("running_mean"), -0.5, 0.5)
            nn.init.uniform_(m.get_buffer("running_var"), 0.5, 2.0)
    fused = fused_for_inference(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 1, 32, 48)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), net(x), atol=1e-5, rtol=1e-4)
