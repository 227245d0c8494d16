"""Score a leave-one-study-out DeCoVNet fine-tune on the real study it never saw.

``python -m training.loso --run loso_normal002 --held-out normal002 --work-dir W`` builds a
scratch registry (a copy of the shipped one, ``pipeline/weights``, with the fold's DeCoVNet in
place of the shipped one), fits the fold's verdict policy on held-back *validation phantoms
only* (``training.fit_verdict``; the fold trained on the other real studies, so they cannot
calibrate it, and the held-out one must not), then runs the production stages (U-Net lungs with
the clean-up, DeCoVNet, CAM localizer) on the held-out study: ``training.real_table`` rows.
``--run shipped`` scores the shipped registry itself (all named studies) the same way.
The shipped registry is never written.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.models.registry import DEFAULT_WEIGHTS_DIR, register_model
from training.fit_verdict import run as fit_verdict
from training.publish import export_model
from training.real_table import markdown, score_cases

logger = logging.getLogger(__name__)

VERDICT_VAL_PHANTOMS = 8


def fold_registry(work_dir: Path, run: str, n_val: int = VERDICT_VAL_PHANTOMS) -> Path:
    """A scratch registry holding the fold's DeCoVNet, its verdict fitted on val phantoms."""
    registry = work_dir / "registries" / run
    if registry.exists():
        shutil.rmtree(registry)
    shutil.copytree(DEFAULT_WEIGHTS_DIR, registry)
    spec = export_model("decovnet", work_dir, {}, registry_dir=registry, run_name=run)
    register_model(  # name the fold in its version (the export says what it trained on)
        spec.name, spec.architecture, spec.weights_file,
        version=f"{spec.version.split('-')[0]}-{run.replace('_', '-')}",
        class_names=spec.class_names, positive_class=spec.positive_class,
        arch_kwargs=spec.arch_kwargs, input_spec=spec.input_spec, card=spec.card,
        metadata=dict(spec.metadata), registry_dir=registry)
    fit_verdict(work_dir, n_val, real=False, registry_dir=registry, write=True)
    return registry


def score_fold(work_dir: Path, run: str, held_out: list[str]) -> list[dict[str, Any]]:
    registry = None if run == "shipped" else fold_registry(work_dir, run)
    rows = score_cases(registry_dir=registry, names=held_out)
    for row in rows:
        row["run"] = run
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True,
                        help="checkpoint name under <work>/checkpoints, or 'shipped'")
    parser.add_argument("--held-out", action="append", required=True, metavar="NAME")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="JSON rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    rows = score_fold(args.work_dir, args.run, args.held_out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
