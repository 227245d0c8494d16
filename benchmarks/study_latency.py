"""Seconds from the last instance received to the SR, the last overlay object and the last
commitment in the PACS, stage by stage.

Orthanc is the PACS: by default it sends the study to the node (C-STORE, as a routing rule
would) and is configured as a [[sources]] entry, so the node completes the study as soon as the
instance counts Orthanc reports match; ``--sender storescu`` sends with dcmtk instead (no
source: the quiet period decides). The stages come from the node's own job log (last instance
received, job created = study complete, started, finished) and the pipeline's per-stage timings.

    python -m benchmarks.study_latency [--repeats 3] [--quiet-period 30] [--sender orthanc]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import SHARED_DATA_DIR, format_table, machine_line
from tests.integration.node_process import NodeProcess
from tests.peers.dcmtk import storescu
from tests.peers.orthanc import OrthancPeer
from tests.peers.studies import prepare_series

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
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


def _send(sender: str, series_dir: Path, pacs: OrthancPeer, node: NodeProcess) -> None:
    if sender == "storescu":
        sent = storescu(series_dir, node.host, node.port, node.ae_title)
        if sent.returncode != 0:
            raise RuntimeError(f"storescu failed: {sent.stderr[-1000:]}")
        return
    pacs.upload(series_dir)
    (study_id,) = pacs.studies()
    pacs.store_to_modality("node", [study_id])  # C-STORE from Orthanc, as a PACS routes


def one_run(series_dir: Path, work: Path, quiet_s: float, pipeline: dict[str, object],
            sender: str) -> dict[str, float]:
    with OrthancPeer(work_dir=work / "orthanc", stop_grace_s=1.0) as pacs:
        node = NodeProcess(
            work / "node",
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": pacs.host,
                           "port": pacs.dicom_port}],
            sources=[{"name": "pacs", "ae_title": pacs.aet, "host": pacs.host,
                      "port": pacs.dicom_port}] if sender == "orthanc" else [],
            sections={"node": {"quiet_period_s": quiet_s}, "pipeline": pipeline},
        )
        with node:
            # The worker loads its models first; a study sent earlier would wait for that.
            node.wait_for(lambda: b"waiting for jobs" in node.log_path.read_bytes(), 300,
                          "worker ready")
            pacs.add_modality("node", node.ae_title, node.host, node.port)
            _send(sender, series_dir, pacs, node)
            node.wait_for(lambda: node.query("select 1 from jobs where state = 'done'"), 900,
                          "job done")
            # Every object sent and confirmed; the C-STORE responses and the commitments
            # carry the times (polling Orthanc's REST API for 130 objects would add seconds).
            node.wait_for(lambda: not node.query(
                "select 1 from exports where state != 'committed'"), 300, "all committed")
            times = dict(node.query(
                "select r.kind, max(e.sent_at) from exports e join result_objects r "
                "on e.result_object_id = r.id group by r.kind"))
            ((committed,),) = node.query("select max(committed_at) from exports")
            overlays = node.query(
                "select count(*) from result_objects where kind = 'OVERLAY'")[0][0]
            study_uid = node.query("select study_instance_uid from studies")[0][0]
            in_pacs = pacs.instance_count()
            ((last_instance,),) = node.query("select max(received_at) from instances")
            ((created, started, finished, summary),) = node.query(
                "select created_at, started_at, finished_at, summary from jobs"
            )
            completion = [m for (m,) in node.query(
                "select kind from events where kind in ('counts-matched', 'study-complete')")]
    expected_in_pacs = len(list(series_dir.iterdir())) * (sender == "orthanc") + overlays + 1
    if in_pacs < expected_in_pacs:
        raise RuntimeError(f"study {study_uid}: Orthanc holds {in_pacs} instances, "
                           f"expected at least {expected_in_pacs}")
    sr_stored, overlay_stored = utc(times["SR"]), utc(times["OVERLAY"])
    last = utc(last_instance)
    stages = {
        "completion (counts or quiet period)": utc(created) - last,
        "queue wait (worker pick-up)": utc(started) - utc(created),
        "processing (worker)": utc(finished) - utc(started),
        "export until SR stored": sr_stored - utc(finished),
        "total: last instance -> SR in PACS": sr_stored - last,
        "total: last instance -> last overlay in PACS": overlay_stored - last,
        "total: last instance -> all committed": utc(committed) - last,
        "SR minus processing (goal <= 5 s)": sr_stored - last - (utc(finished) - utc(started)),
        "completed by expected counts (1 = yes)": float("counts-matched" in completion),
        "overlay objects": float(overlays),
    }
    timings = (json.loads(summary) if isinstance(summary, str) else summary or {}).get(
        "timings_s", {})
    for name, seconds in timings.items():
        stages[f"  pipeline: {name}"] = float(seconds)
    return stages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet-period", type=float, default=30.0)
    parser.add_argument("--sender", choices=("orthanc", "storescu"), default="orthanc",
                        help="orthanc: the PACS sends the study and is a [[sources]] entry")
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="default")
    parser.add_argument("--source", type=Path,
                        default=SHARED_DATA_DIR / "covid-ct-md" / "series" / "COVID-19" / "P002")
    args = parser.parse_args(argv)
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="study-latency-") as tmp:
        series = prepare_series(args.source, Path(tmp) / "series")
        for i in range(args.repeats):
            runs.append(one_run(series.directory, Path(tmp) / f"run{i}", args.quiet_period,
                                PIPELINES[args.pipeline], args.sender))
    print(machine_line())
    print(f"study: {args.source.name}, {len(series)} slices, sent by {args.sender}; quiet period "
          f"{args.quiet_period} s; pipeline {args.pipeline}; {args.repeats} runs\n")
    names = list(runs[0])
    rows = [[name, f"{statistics.median(r[name] for r in runs):.2f}",
             f"{min(r[name] for r in runs):.2f}", f"{max(r[name] for r in runs):.2f}"]
            for name in names]
    print(format_table(["stage", "median s", "min s", "max s"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
