"""Command line of the training package: ``python -m training <command>`` (or ``dicomnode-train``).

Commands: make-dicom, make-data, train-unet, train-decovnet, validate-unet, validate-decovnet,
train-cnn-bert, evaluate, report, export, fit-verdict, export-verdicts.
Everything heavy is cached under the work directory (default ``.work/``, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from training.cache import DEFAULT_WORK_DIR, case_file, make_cases, split_seeds

logger = logging.getLogger("training")

REAL_TRAINING_CASE = "cap002"  # the one real study whose morphological lungs the U-Net sees
UNET_REAL_INSERTIONS = 3  # lesion-inserted copies of that study added to the U-Net slices


def _device(name: str) -> torch.device:
    from pipeline.device import select_device

    return select_device(name)


def _existing_cases(work: Path, split: str, count: int) -> list[Path]:
    paths = [case_file(work, split, s) for s in split_seeds(split, count * 3)]
    found = [p for p in paths if p.exists()][:count]
    if not found:
        raise SystemExit(f"no {split} phantoms under {work}; run make-data first")
    return found


def cmd_make_dicom(args: argparse.Namespace) -> int:
    from training.dicom_writer import write_series
    from training.synthetic import generate_case

    case = generate_case(args.seed, kind=args.kind, matrix=args.matrix,
                         slice_spacing_mm=args.slice_spacing)
    paths = write_series(case.hu, case.spacing_mm, args.out, patient_id=f"PHANTOM{args.seed}",
                         transfer_syntax=args.transfer_syntax,
                         series_description=f"Synthetic chest CT phantom ({case.kind})")
    print(f"wrote {len(paths)} slices of a {case.kind} phantom ({case.label}) to {args.out}")
    return 0


def cmd_make_data(args: argparse.Namespace) -> int:
    version = args.phantom_version
    make_cases(args.work_dir, "test", args.test, matrix=args.matrix, version=version)
    make_cases(args.work_dir, "train", args.train, matrix=args.matrix, version=version)
    return 0


def cmd_train_unet(args: argparse.Namespace) -> int:
    from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
    from training.insertion import insert_into_volume
    from training.real_data import load_real_cases
    from training.train_unet import SliceSet, build_slice_set, train_unet

    torch.set_num_threads(args.threads)
    cache = args.work_dir / "unet" / args.slices
    if cache.exists():
        slices = SliceSet.load(cache)
    else:
        real = []
        if args.real:
            seg = MorphologicalLungSegmenter()
            for case in load_real_cases():
                if case.name != REAL_TRAINING_CASE:
                    continue
                lungs = seg.segment(case.volume)
                real.append((case.name, case.volume, lungs.both))
                for k in range(UNET_REAL_INSERTIONS):
                    vol, _ = insert_into_volume(case.volume, lungs, seed=k,
                                                kind="covid" if k % 3 else "cap")
                    real.append((f"{case.name}+insert{k}", vol, lungs.both))
        slices = build_slice_set(_existing_cases(args.work_dir, "train", args.cases), real,
                                 seed=args.seed)
        slices.save(cache)
    logger.info("U-Net training slices: %d", len(slices.images))
    train_unet(slices, args.work_dir / "checkpoints" / f"{args.run_name}.pt", max_steps=args.steps,
               max_minutes=args.minutes, batch=args.batch, lr=args.lr, seed=args.seed,
               resume=args.resume, device=_device(args.device), init_from=args.init_from)
    return 0


def cmd_train_decovnet(args: argparse.Namespace) -> int:
    from training.train_decovnet import prepare_split, train_decovnet

    torch.set_num_threads(args.threads)
    crop = (args.crop_h, args.crop_w)
    prepared = prepare_split(args.work_dir, "train",
                             _existing_cases(args.work_dir, "train", args.cases), crop, args.seed)
    prepared += _real_training_inputs(args, crop)
    train_decovnet(prepared, args.work_dir / "checkpoints" / f"{args.run_name}.pt",
                   max_steps=args.steps, max_minutes=args.minutes, lr=args.lr, seed=args.seed,
                   window_slices=args.window, full_volume_share=args.full_share,
                   resume=args.resume, device=_device(args.device), augment=args.augment,
                   aux_weight=args.aux_weight, init_from=args.init_from,
                   real_share=args.real_share)
    return 0


def _real_training_inputs(args: argparse.Namespace, crop: tuple[int, int]) -> list[Path]:
    """The prepared real studies ``--real-cases`` asks for, minus ``--leave-out``."""
    from training.real_cases import prepare_real_split, select_names
    from training.real_data import COVID_CT_MD_DIR, real_case_names
    from training.reviewed_cases import (
        is_verdict_export,
        prepare_reviewed_split,
        reviewed_case_names,
    )

    root = args.real_root or COVID_CT_MD_DIR
    reviewed = is_verdict_export(root)  # a `dicomnode export-verdicts` folder
    available = reviewed_case_names(root) if reviewed else real_case_names(root)
    wanted = args.real_cases if args.real_cases in ("all", "none") else args.real_cases.split(",")
    names = select_names(available, wanted, args.leave_out)
    if not names:
        return []
    logger.info("real studies in training: %s (left out: %s)", names, args.leave_out or "none")
    if reviewed:
        return prepare_reviewed_split(root, args.work_dir, names, crop)
    return prepare_real_split(args.work_dir, names, crop, root=root)


def cmd_validate_decovnet(args: argparse.Namespace) -> int:
    from pipeline.models.decovnet import DeCoVNet
    from training.checkpoint import load_checkpoint
    from training.metrics import binary_scores, roc_auc
    from training.train_decovnet import CLASS_NAMES, prepare_split, validate_prepared

    torch.set_num_threads(args.threads)
    paths = prepare_split(args.work_dir, "val", _existing_cases(args.work_dir, "val", args.cases),
                          (args.crop_h, args.crop_w), args.seed)
    for run in args.runs:
        model = DeCoVNet(num_classes=len(CLASS_NAMES))
        state, _ = load_checkpoint(args.work_dir / "checkpoints" / f"{run}.pt", model, None,
                                   np.random.default_rng(0))
        rows = validate_prepared(model, paths)
        labels = [r.label for r in rows]
        scores = [r.p_covid for r in rows]
        bs = binary_scores(labels, scores)
        auc = roc_auc(labels, scores)
        hits = [r.cam_hit for r in rows if r.cam_hit is not None]
        print(f"{run}: step {state.step}, validation n={len(paths)} AUC {auc:.3f} "
              f"accuracy {bs.accuracy:.3f} sensitivity {bs.sensitivity:.3f} "
              f"specificity {bs.specificity:.3f} crop CAM hit rate "
              f"{np.mean(hits) if hits else float('nan'):.2f} ({len(hits)} COVID cases)")
    return 0


def cmd_validate_unet(args: argparse.Namespace) -> int:
    import tempfile

    from pipeline.series import volume_from_array
    from pipeline.stages.lung_unet import UNetLungSegmenter
    from training.cache import load_case
    from training.metrics import dice
    from training.publish import export_model

    torch.set_num_threads(args.threads)
    cases = [load_case(p) for p in _existing_cases(args.work_dir, "val", args.cases)]
    for run in args.runs:
        with tempfile.TemporaryDirectory() as registry:
            export_model("unet", args.work_dir, {}, registry_dir=Path(registry), run_name=run)
            segmenter = UNetLungSegmenter(device="cpu", registry_dir=registry)
            scores = [dice(segmenter.segment(volume_from_array(c.hu, c.spacing_mm)).both, c.lungs)
                      for c in cases]
        by_kind = {k: np.mean([d for d, c in zip(scores, cases, strict=True) if c.kind == k])
                   for k in sorted({c.kind for c in cases})}
        print(f"{run}: validation n={len(cases)} lung Dice mean {np.mean(scores):.4f} "
              f"min {np.min(scores):.4f}; by kind "
              + ", ".join(f"{k} {v:.4f}" for k, v in by_kind.items()))
    return 0


def cmd_train_cnn_bert(args: argparse.Namespace) -> int:
    from training.train_cnn_bert import train_cnn_bert

    torch.set_num_threads(args.threads)
    train_cnn_bert(_existing_cases(args.work_dir, "train", args.cases),
                   args.work_dir / "checkpoints" / "cnn_bert.pt", max_steps=args.steps,
                   max_minutes=args.minutes, depth=args.depth, base_width=args.width,
                   lr=args.lr, seed=args.seed, resume=args.resume,
                   device=_device(args.device))
    return 0


def _exported_runs(registry_dir: Path | None) -> list[str]:
    """The training runs the registered models were exported from (registry metadata)."""
    from pipeline.models.registry import read_registry

    runs = [str(spec.metadata["run"]) for spec in read_registry(registry_dir).values()
            if spec.metadata.get("run")]
    return runs or ["unet", "decovnet"]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_all
    from training.report import write_report

    torch.set_num_threads(args.threads)
    results = evaluate_all(args.work_dir, args.registry_dir, args.cases, crop_px=None,
                           real=args.real)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "evaluation.json").write_text(json.dumps(results, indent=2))
    write_report(results, args.out, args.work_dir, runs=_exported_runs(args.registry_dir))
    print(f"report written to {args.out / 'report.md'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from training.report import write_report

    results = json.loads((args.work_dir / "evaluation.json").read_text())
    notes = [n.read_text() for n in args.notes]
    path = write_report(results, args.out, args.work_dir,
                        runs=_exported_runs(args.registry_dir), notes=notes)
    print(f"report written to {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.publish import export_model

    metrics_path = args.work_dir / "evaluation.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    spec = export_model(args.model, args.work_dir, metrics, registry_dir=args.registry_dir,
                        crop_px=(args.crop_h, args.crop_w), run_name=args.run_name)
    print(f"exported {spec.name} {spec.version} sha256 {spec.sha256} -> {spec.weights_path}")
    return 0


def cmd_fit_verdict(args: argparse.Namespace) -> int:
    from training.fit_verdict import run

    torch.set_num_threads(args.threads)
    policy = run(args.work_dir, args.cases, args.real, args.registry_dir, write=args.write)
    print(json.dumps({k: v for k, v in policy.items() if k != "domain"}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dicom", help="write one phantom as a CT Image Storage series")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=["covid", "cap", "mass", "normal"], default="covid")
    p.add_argument("--matrix", type=int, choices=[128, 256, 512], default=512)
    p.add_argument("--slice-spacing", type=float, default=2.0, help="mm")
    p.add_argument("--transfer-syntax", choices=["explicit", "jpegls", "jpeg2000", "rle"],
                   default="explicit")
    p.set_defaults(func=cmd_make_dicom)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
        q.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        q.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
        q.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("make-data", help="generate and cache phantom cases")
    common(p)
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--test", type=int, default=60)
    p.add_argument("--matrix", type=int, default=256)
    p.add_argument("--phantom-version", type=int, choices=(1, 2), default=1,
                   help="1: the phantoms the shipped models trained on; 2: with fissures, "
                        "nodules, effusions, partial inspiration and reconstruction kernels")
    p.set_defaults(func=cmd_make_data)

    def trainer(q: argparse.ArgumentParser, steps: int, minutes: float, lr: float) -> None:
        common(q)
        q.add_argument("--cases", type=int, default=200, help="training phantoms to use")
        q.add_argument("--steps", type=int, default=steps)
        q.add_argument("--minutes", type=float, default=minutes, help="time budget of this run")
        q.add_argument("--lr", type=float, default=lr)
        q.add_argument("--resume", action="store_true", help="continue from the checkpoint")

    p = sub.add_parser("train-unet", help="train the 2D lung U-Net")
    trainer(p, 1200, 25.0, 1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-real", dest="real", action="store_false",
                   help=f"do not add slices of the real study {REAL_TRAINING_CASE}")
    p.add_argument("--run-name", default="unet", help="checkpoint name under checkpoints/")
    p.add_argument("--slices", default="slices.npz",
                   help="slice cache file under unet/ (built on first use)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this checkpoint's weights (fresh optimiser and step count)")
    p.set_defaults(func=cmd_train_unet)

    p = sub.add_parser("train-decovnet", help="train DeCoVNet (COVID-19 vs non-COVID)")
    trainer(p, 1500, 30.0, 3e-4)
    p.add_argument("--crop-h", type=int, default=112)
    p.add_argument("--crop-w", type=int, default=168)
    p.add_argument("--window", type=int, default=48, help="slices per training window")
    p.add_argument("--augment", choices=["paper", "mild", "intensity", "none"], default="mild")
    p.add_argument("--aux-weight", type=float, default=1.0,
                   help="weight of the voxel-level CAM loss on the phantoms' lesion masks "
                        "(0 = the paper's volume-label loss only)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this checkpoint's weights (fresh optimiser and step count)")
    p.add_argument("--run-name", default="decovnet", help="checkpoint name under checkpoints/")
    p.add_argument("--full-share", type=float, default=0.1,
                   help="share of the steps (at the end) on whole volumes")
    p.add_argument("--real-cases", default="none",
                   help="real studies to add (weak slice labels + lesion-inserted copies): "
                        "'all', 'none' or comma-separated names, e.g. P002,cap002")
    p.add_argument("--leave-out", action="append", default=[], metavar="NAME",
                   help="a real study never read for this run (repeatable)")
    p.add_argument("--real-share", type=float, default=0.4,
                   help="probability that a step draws a real volume of its class")
    p.add_argument("--real-root", type=Path, default=None,
                   help="folder with labels/cases.json (default: shared COVID-CT-MD), or "
                        "a `dicomnode export-verdicts` folder (labels.csv)")
    p.set_defaults(func=cmd_train_decovnet)

    p = sub.add_parser("validate-decovnet", help="score DeCoVNet checkpoints on the val split")
    common(p)
    p.add_argument("runs", nargs="+", help="checkpoint names under checkpoints/")
    p.add_argument("--cases", type=int, default=16, help="validation phantoms to use")
    p.add_argument("--crop-h", type=int, default=112)
    p.add_argument("--crop-w", type=int, default=168)
    p.set_defaults(func=cmd_validate_decovnet)

    p = sub.add_parser("validate-unet", help="score U-Net checkpoints on the val split")
    common(p)
    p.add_argument("runs", nargs="+", help="checkpoint names under checkpoints/")
    p.add_argument("--cases", type=int, default=16, help="validation phantoms to use")
    p.set_defaults(func=cmd_validate_unet)

    p = sub.add_parser("train-cnn-bert", help="train a light 3D-CNN-BERT")
    trainer(p, 300, 20.0, 1e-4)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=16)
    p.set_defaults(func=cmd_train_cnn_bert)

    p = sub.add_parser("evaluate", help="evaluate the registered models, write the report")
    common(p)
    p.add_argument("--registry-dir", type=Path, default=None)
    p.add_argument("--cases", type=int, default=60, help="held-out test phantoms")
    p.add_argument("--out", type=Path, default=Path("docs/evaluation"))
    p.add_argument("--no-real", dest="real", action="store_false")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="rewrite the report from the last evaluation.json")
    common(p)
    p.add_argument("--out", type=Path, default=Path("docs/evaluation"))
    p.add_argument("--registry-dir", type=Path, default=None)
    p.add_argument("--notes", type=Path, nargs="*", default=[], help="markdown notes to add")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export a trained checkpoint into the model registry")
    common(p)
    p.add_argument("--model", choices=["unet", "decovnet", "cnn-bert"], required=True)
    p.add_argument("--registry-dir", type=Path, default=None)
    p.add_argument("--crop-h", type=int, default=112)
    p.add_argument("--crop-w", type=int, default=168)
    p.add_argument("--run-name", default=None, help="checkpoint name (default: the model's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("export-verdicts",
                       help="the node's reviewed studies as a de-identified training set")
    common(p)
    p.add_argument("--config", type=Path, default=None, help="the node's TOML settings file")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_export_verdicts)

    p = sub.add_parser("fit-verdict", help="fit DeCoVNet's temperature, band and domain")
    common(p)
    p.add_argument("--registry-dir", type=Path, default=None)
    p.add_argument("--cases", type=int, default=16, help="held-back validation phantoms")
    p.add_argument("--no-real", dest="real", action="store_false",
                   help="do not add the real studies to the calibration")
    p.add_argument("--dry-run", dest="write", action="store_false",
                   help="fit and print, do not write the registry")
    p.set_defaults(func=cmd_fit_verdict)
    return parser


def cmd_export_verdicts(args: argparse.Namespace) -> int:
    from training.verdict_export import export_verdicts

    count = export_verdicts(args.config, args.out)
    print(f"wrote {count} reviewed case(s) to {args.out} (labels.csv, images/, masks/)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
