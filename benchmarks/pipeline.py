"""Per-stage seconds and peak memory of the whole analysis of a 300-slice chest CT.

The series is the real COVID-CT-MD P002 study stretched to 300 slices (JPEG Lossless, 512x512,
see ``tests.peers.studies.make_large_series``). Each configuration runs in a fresh child
process (models loaded once, as in a worker; then the timed runs), so the peak resident memory
it reports is that configuration's own. The whole analysis is read, segment, classify,
localize, write SEG + SR + viewer SR, hand them off (as the worker does: a callback the node
uses to queue their export), then render the overlay. "SEG+SR handed off" is the time from the
start of the job until the hand-off returned; "total" includes the overlay.

    python -m benchmarks.pipeline [--slices 300] [--repeats 2] [--threads 2] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import SHARED_DATA_DIR, format_table, machine_line

CONFIGS: dict[str, dict[str, Any]] = {
    "default (U-Net, DeCoVNet, CAM lesions)": {
        "lung_segmentation": "unet", "classifier": "decovnet", "localize_lesions": True,
    },
    "CNN-BERT + MLP classifier": {
        "lung_segmentation": "unet", "classifier": "cnn-bert", "localize_lesions": True,
    },
    "weight-free (morphological lungs only)": {
        "lung_segmentation": "morphological", "classifier": "none", "localize_lesions": False,
    },
}


def _child(config_json: str, files_dir: str, repeats: int) -> None:
    """Runs in the child: load once, analyse ``repeats`` times, print JSON timings."""
    from dicomnode.contracts import ProcessRequest
    from pipeline.processor import ChestCTProcessor
    from pipeline.writers.uids import new_uid_root

    settings = json.loads(config_json)
    started = time.perf_counter()
    processor = ChestCTProcessor(settings)
    load_s = time.perf_counter() - started
    files = sorted(Path(files_dir).glob("*.dcm"))
    runs = []
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            handed_off: list[float] = []
            request = ProcessRequest(
                job_id=i, files=tuple(files), out_dir=Path(out), uid_root=new_uid_root(),
                handoff=lambda _objects, seen=handed_off: seen.append(time.perf_counter()),
            )
            t0 = time.perf_counter()
            outcome = processor.process(request)
            wall = time.perf_counter() - t0
        timings = dict(outcome.summary.get("timings_s", {}))
        timings["SEG+SR handed off"] = handed_off[0] - t0 if handed_off else float("nan")
        timings["wall"] = wall
        runs.append(timings)
    device = "cpu"
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() and settings.get("device") != "cpu" else "cpu"
    except ImportError:
        pass
    print(json.dumps({
        "load_s": load_s,
        "runs": runs,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": device,
    }))


def run_config(name: str, settings: dict[str, Any], files_dir: Path, repeats: int,
               threads: int, device: str) -> dict[str, Any]:
    settings = {**settings, "threads": threads, "device": device, "overlay": True}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline", "--child", json.dumps(settings),
         str(files_dir), str(repeats)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        _child(argv[1], argv[2], int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", help="run only configurations whose name contains this")
    args = parser.parse_args(argv)

    from tests.peers.studies import make_large_series, prepare_series

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        src = prepare_series(SHARED_DATA_DIR / "covid-ct-md" / "series" / "COVID-19" / "P002",
                             Path(tmp) / "p002")
        series_dir = Path(tmp) / "series"
        make_large_series(src.directory, series_dir, n=args.slices)
        results = {
            name: run_config(name, cfg, series_dir, args.repeats, args.threads, args.device)
            for name, cfg in CONFIGS.items()
            if not args.only or args.only in name
        }
    print(machine_line())
    print(f"{args.slices}-slice 512x512 JPEG Lossless chest CT; torch threads {args.threads}; "
          f"median of {args.repeats} runs after one model load\n")
    for name, res in results.items():
        print(f"== {name}")
        if "error" in res:
            print(f"   not run: {res['error']}\n")
            continue
        stages = list(res["runs"][0])
        rows = [[stage, f"{statistics.median(r[stage] for r in res['runs']):.2f}"]
                for stage in stages]
        rows.append(["model load (once per worker)", f"{res['load_s']:.2f}"])
        rows.append(["peak resident memory (MB)", f"{res['peak_rss_mb']:.0f}"])
        rows.append(["device", res["device"]])
        print(format_table(["stage", "seconds"], rows))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
