"""Seconds from the last instance sent to the SR stored in the PACS, stage by stage.

Orthanc is the PACS: it receives the results. The study is sent to the node with storescu;
the stages come from the node's own job log (job created = study complete, started, finished,
each export's time) and the pipeline's per-stage timings stored with the job.

    python -m benchmarks.study_latency [--repeats 3] [--quiet-period 2] [--pipeline default]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import SHARED_DATA_DIR, format_table, machine_line
from tests.integration.node_process import NodeProcess
from tests.peers.dcmtk import storescu
from tests.peers.orthanc import OrthancPeer
from tests.peers.studies import prepare_series

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
PIPELINES = {
    # what the node runs by default: U-Net lungs, DeCoVNet, CAM lesions
    "default": {"lung_segmentation": "unet", "classifier": "decovnet", "localize_lesions": True},
    "morphological": {"lung_segmentation": "morphological", "classifier": "none",
                      "localize_lesions": False},
}


def utc(value: str | None) -> float:
    """Seconds since the epoch of a naive-UTC timestamp from the node's database."""
    if not value:
        return float("nan")
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp()


def one_run(series_dir: Path, work: Path, quiet_s: float, pipeline: dict[str, object]
            ) -> dict[str, float]:
    with OrthancPeer(work_dir=work / "orthanc", stop_grace_s=1.0) as pacs:
        node = NodeProcess(
            work / "node",
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": pacs.host,
                           "port": pacs.dicom_port}],
            sections={"node": {"quiet_period_s": quiet_s}, "pipeline": pipeline},
        )
        with node:
            sent = storescu(series_dir, node.host, node.port, node.ae_title)
            last_sent = time.time()
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stderr[-1000:]}")
            study_uid = node.wait_for(
                lambda: node.query("select study_instance_uid from studies"), 30, "study row"
            )[0][0]

            def sr_in_pacs() -> float | None:
                found = any(i.sop_class_uid == SR_CLASS for i in pacs.instances_of_study(study_uid))
                return time.time() if found else None

            sr_stored = node.wait_for(sr_in_pacs, 600, "SR in the PACS")
            ((created, started, finished, summary),) = node.query(
                "select created_at, started_at, finished_at, summary from jobs"
            )
            exports = node.query(
                "select r.kind, e.sent_at from exports e join result_objects r "
                "on e.result_object_id = r.id"
            )
    stages = {
        "quiet period + completion check": utc(created) - last_sent,
        "queue wait (worker pick-up)": utc(started) - utc(created),
        "processing (worker)": utc(finished) - utc(started),
        "export until SR stored": sr_stored - utc(finished),
        "total: last instance -> SR in PACS": sr_stored - last_sent,
    }
    timings = (json.loads(summary) if isinstance(summary, str) else summary or {}).get(
        "timings_s", {})
    for name, seconds in timings.items():
        stages[f"  pipeline: {name}"] = float(seconds)
    stages["  objects already delivered when the SR was stored"] = float(
        len([1 for _k, at in exports if at])
    )
    return stages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet-period", type=float, default=2.0)
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="default")
    parser.add_argument("--source", type=Path,
                        default=SHARED_DATA_DIR / "covid-ct-md" / "series" / "COVID-19" / "P002")
    args = parser.parse_args(argv)
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="study-latency-") as tmp:
        series = prepare_series(args.source, Path(tmp) / "series")
        for i in range(args.repeats):
            runs.append(one_run(series.directory, Path(tmp) / f"run{i}", args.quiet_period,
                                PIPELINES[args.pipeline]))
    print(machine_line())
    print(f"study: {args.source.name}, {len(series)} slices; quiet period {args.quiet_period} s; "
          f"pipeline {args.pipeline}; {args.repeats} runs\n")
    names = list(runs[0])
    rows = [[name, f"{statistics.median(r[name] for r in runs):.2f}",
             f"{min(r[name] for r in runs):.2f}", f"{max(r[name] for r in runs):.2f}"]
            for name in names]
    print(format_table(["stage", "median s", "min s", "max s"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
