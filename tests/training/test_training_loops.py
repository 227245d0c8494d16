"""One-step training of the U-Net and DeCoVNet on tiny data; checkpoints resume; augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.augment import DECOVNET_AUGMENT, augment_slices, augment_volume, random_affine_theta
from training.cache import load_case, save_case
from training.checkpoint import load_checkpoint
from training.synthetic import generate_case
from training.train_decovnet import (
    PreparedVolume,
    choose_window,
    lesion_cam_loss,
    load_prepared,
    prepare_case,
    save_prepared,
    train_decovnet,
)
from training.train_unet import (
    SliceSet,
    build_slice_set,
    choose_slices,
    slices_from_volume,
    train_unet,
)


@pytest.fixture(scope="module")
def cached_cases(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("cases")
    paths = []
    for seed, kind in ((41, "covid"), (42, "normal")):
        path = root / f"case_{seed}.npz"
        save_case(generate_case(seed, kind=kind, matrix=96, slice_spacing_mm=4.0), path)
        paths.append(path)
    return paths


def test_case_cache_round_trip(cached_cases: list[Path]) -> None:
    original = generate_case(41, kind="covid", matrix=96, slice_spacing_mm=4.0)
    loaded = load_case(cached_cases[0])
    np.testing.assert_array_equal(loaded.hu, np.rint(original.hu))
    np.testing.assert_array_equal(loaded.lung_left, original.lung_left)
    np.testing.assert_array_equal(loaded.lesion_mask, original.lesion_mask)
    assert loaded.kind == "covid" and loaded.label == original.label


def test_affine_identity_and_augment_shapes() -> None:
    rng = np.random.default_rng(0)
    cfg = DECOVNET_AUGMENT.__class__(rotation_deg=0, translate_fraction=0, scale_delta=0,
                                     shear_deg=0, brightness_delta=0, contrast_delta=0)
    theta = random_affine_theta(rng, cfg, 16, 24)
    np.testing.assert_allclose(theta.numpy(), [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    x = torch.rand(2, 5, 16, 24)
    x[1] = (x[1] > 0.5).float()
    y = augment_volume(x, rng, DECOVNET_AUGMENT)
    assert y.shape == x.shape and float(y[0].min()) >= 0 and float(y[0].max()) <= 1
    imgs, tgts = augment_slices(torch.rand(3, 1, 16, 24), torch.ones(3, 16, 24).long(), rng)
    assert imgs.shape == (3, 1, 16, 24) and tgts.dtype == torch.long


@pytest.mark.slow
def test_unet_step_reduces_loss_and_resumes(cached_cases: list[Path], tmp_path: Path) -> None:
    slices = build_slice_set(cached_cases, [], seed=0, slices_per_case=4, work_shape_px=(64, 96))
    assert slices.images.shape[1:] == (64, 96) and set(np.unique(slices.labels)) <= {0, 1}
    slices.save(tmp_path / "s.npz")
    slices = SliceSet.load(tmp_path / "s.npz")
    ckpt = tmp_path / "unet.pt"
    _, state = train_unet(slices, ckpt, max_steps=20, max_minutes=2, batch=4, lr=3e-3)
    assert state.step == 20
    losses = [h["loss"] for h in state.history]
    assert losses[-1] < losses[0]
    _, resumed = train_unet(slices, ckpt, max_steps=22, max_minutes=2, batch=4, resume=True)
    assert resumed.step == 22 and len(resumed.history) == 2


@pytest.mark.slow
def test_decovnet_prepare_train_and_resume(cached_cases: list[Path], tmp_path: Path) -> None:
    prepared = [prepare_case(p, (32, 48), use_morphology=False) for p in cached_cases]
    assert prepared[0].label == 1 and prepared[1].label == 0
    assert prepared[0].finding_per_slice.sum() > 0 and prepared[1].finding_per_slice.sum() == 0
    assert prepared[0].lesion.shape == prepared[0].image.shape
    assert prepared[0].lesion.sum() > 0 and prepared[1].lesion.sum() == 0
    # the crop's finding slices are those the per-slice counts name
    np.testing.assert_array_equal(prepared[0].lesion.any(axis=(1, 2)),
                                  prepared[0].finding_per_slice > 0)
    paths = []
    for i, p in enumerate(prepared):
        path = tmp_path / f"in_{i}.npz"
        save_prepared(p, path)
        paths.append(path)
    again = load_prepared(paths[0])
    np.testing.assert_array_equal(again.image, prepared[0].image)
    np.testing.assert_array_equal(again.lesion, prepared[0].lesion)
    ckpt = tmp_path / "decovnet.pt"
    model, state = train_decovnet(paths, ckpt, max_steps=2, max_minutes=2, window_slices=8)
    assert state.step == 2 and ckpt.exists()
    logits, _ = model(prepared[0].tensor()[None])
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    _, resumed = train_decovnet(paths, ckpt, max_steps=3, max_minutes=2, window_slices=8,
                                resume=True)
    assert resumed.step == 3
    fresh = type(model)()
    rng = np.random.default_rng(0)
    st, cfg = load_checkpoint(ckpt, fresh, None, rng)
    assert st.step == 3 and cfg["window_slices"] == 8


def test_choose_window_centres_on_findings() -> None:
    finding = np.zeros(100, dtype=np.int32)
    finding[70:75] = 10
    v = PreparedVolume(np.zeros((100, 4, 4), np.uint8), np.zeros((100, 4, 4), np.uint8), 1,
                       "covid", 0, finding, np.zeros((100, 4, 4), np.uint8))
    rng = np.random.default_rng(1)
    for _ in range(20):
        start, stop = choose_window(v, 20, rng)
        assert stop - start == 20 and start <= 74 and stop > 70
    assert choose_window(v, 200, rng) == (0, 100)


def test_lesion_cam_loss_rewards_a_cam_on_the_lesion_only_for_covid() -> None:
    from pipeline.models.decovnet import DeCoVNet

    torch.manual_seed(0)
    model = DeCoVNet()
    lesion = torch.zeros(1, 8, 32, 48)
    lesion[:, 2:6, 8:24, 8:24] = 1.0
    w = model.cam_weights()[:, 1].detach()
    feats = torch.zeros(1, 128, 4, 4, 6)
    on_lesion = feats.clone()
    on_lesion[0, :, 1:3, 1:3, 1:3] = torch.sign(w)[:, None, None, None]
    off_lesion = on_lesion.roll(3, dims=4)
    with torch.no_grad():
        good = lesion_cam_loss(model, on_lesion, lesion, cls=1)
        bad = lesion_cam_loss(model, off_lesion, lesion, cls=1)
        assert float(good) < float(bad)
        # for a non-COVID case the same evidence is penalised: the target is zero everywhere
        assert float(lesion_cam_loss(model, on_lesion, lesion, cls=0)) > float(
            lesion_cam_loss(model, feats, lesion, cls=0))
    # the loss reaches the head weights the CAM is made of
    lesion_cam_loss(model, on_lesion, lesion, cls=1).backward()
    assert model.head[1].weight.grad is not None and model.classifier[1].weight.grad is not None


def test_unet_slices_favour_findings() -> None:
    flagged = np.zeros(100, dtype=bool)
    flagged[40:50] = True
    rng = np.random.default_rng(0)
    for _ in range(10):
        z = choose_slices(100, 8, rng, flagged, finding_share=0.5)
        assert len(set(z.tolist())) == 8 and list(z) == sorted(z)
        assert int(flagged[z].sum()) == 4
    # fewer flagged slices than asked for: all of them, the rest from the others
    z = choose_slices(100, 30, rng, flagged, finding_share=0.5)
    assert int(flagged[z].sum()) == 10 and len(z) == 30
    assert len(choose_slices(5, 8, rng, None)) == 5
    # and on a phantom, through the stage's own input builder
    case = generate_case(41, kind="covid", matrix=96, slice_spacing_mm=4.0)
    x, y = slices_from_volume(case.hu, case.spacing_mm, case.lungs, 6, rng, (32, 48),
                              findings=case.lesion_mask)
    assert x.shape == (6, 32, 48) and y.shape == (6, 32, 48)


@pytest.mark.slow
def test_cnn_bert_light_training_runs(cached_cases: list[Path], tmp_path: Path) -> None:
    from training.train_cnn_bert import train_cnn_bert

    ckpt = tmp_path / "cnn_bert.pt"
    model, mlp, state = train_cnn_bert(cached_cases, ckpt, max_steps=2, max_minutes=2,
                                       depth=10, base_width=8, resize_px=40, crop_px=32,
                                       mlp_epochs=5)
    assert state.step == 2 and ckpt.exists()
    assert (tmp_path / "cnn_bert_mlp.pt").exists()
    logits, emb = model(torch.zeros(1, 3, 32, 32, 32))
    assert logits.shape == (1, 2) and emb.shape == (1, 64)
    assert mlp(torch.zeros(1, 128)).shape == (1, 2)


@pytest.mark.slow
def test_export_writes_checksummed_weights_and_an_honest_card(
    cached_cases: list[Path], tmp_path: Path
) -> None:
    from pipeline.models.registry import load_model
    from training.publish import export_model

    ckpts = tmp_path / "checkpoints"
    prepared = []
    for i, path in enumerate(cached_cases):
        target = tmp_path / f"in_{i}.npz"
        save_prepared(prepare_case(path, (32, 48), use_morphology=False), target)
        prepared.append(target)
    train_decovnet(prepared, ckpts / "base.pt", max_steps=2, max_minutes=2, window_slices=8)
    train_decovnet(prepared, ckpts / "tuned.pt", max_steps=1, max_minutes=2, window_slices=8,
                   full_volume_share=1.0, init_from=ckpts / "base.pt")
    metrics = {"classification": {"roc_auc": 0.5}, "localization": {"cam_share": 1.0}}
    registry = tmp_path / "registry"
    spec = export_model("decovnet", tmp_path, metrics, registry_dir=registry, crop_px=(32, 48),
                        run_name="tuned")
    card = (registry / "decovnet.md").read_text()
    assert "Not weakly supervised" in card and "Every step sees a whole volume." in card
    assert "Fine-tuned from the weights of `base.pt` (a run of 2 steps" in card
    assert "ROC AUC (COVID vs non-COVID): 0.5000" in card
    assert "share of COVID cases whose lesions came from the CAM" in card
    assert spec.metadata["fine_tuned_from"] == "base.pt"
    model, loaded = load_model("decovnet", "cpu", registry)
    assert loaded.sha256 == spec.sha256 and loaded.input_spec["crop_shape_px"] == [32, 48]
    tuned = torch.load(ckpts / "tuned.pt", weights_only=False)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, tuned[key]), key


@pytest.mark.slow
def test_cnn_bert_steps_change_every_layer_and_lower_the_loss(tmp_path: Path) -> None:
    """The CNN-BERT backbone trains through the shared loop: on one tiny fixed batch every
    trainable tensor moves and the loss falls (a loop that never steps the optimiser, or a
    model whose gradients stop somewhere, fails here)."""
    import torch.nn.functional as F

    from pipeline.models.cnn_bert import CnnBert
    from training.loop import LoopConfig, run_training

    torch.manual_seed(3)
    model = CnnBert(depth=10, base_width=8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.randn(2, 3, model.frames, 32, 32)
    target = torch.tensor([0, 1])
    losses: list[float] = []

    def step(m: torch.nn.Module, rng: np.random.Generator) -> torch.Tensor:
        loss = F.cross_entropy(m(x)[0], target)
        losses.append(float(loss.detach()))
        return loss

    state = run_training(model, step, LoopConfig(max_steps=6, max_minutes=2, lr=1e-3),
                         tmp_path / "cnn_bert.pt", False, {}, "test-cnn-bert")
    assert state.step == 6 and len(losses) == 6
    unchanged = [name for name, p in model.named_parameters()
                 if p.requires_grad and torch.equal(p.detach(), before[name])]
    assert unchanged == []
    assert np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2]), losses
