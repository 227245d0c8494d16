"""Ingest speed: one 300-slice CT series sent with dcmtk ``storescu`` to three receivers.

(a) the node (``dicomnode serve`` with ``workers = 0`` and a long quiet period, so only the
receiver runs), (b) dcmtk ``storescp`` writing to disk, (c) Orthanc. Every sender and receiver
runs with ``TCP_NODELAY=1``. Each repetition starts from an empty receiver (a fresh node data
folder, Orthanc emptied, storescp's folder cleared), so every run stores 300 new instances.
Prints instances/s (median of the repetitions) and the ratios node/Orthanc, node/storescp.

    .venv/bin/python -m benchmarks.ingest [--repeats 3] [--slices 300] [--targets ...]
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks._common import (
    Measurement,
    machine_line,
    rate_table,
    ratio_line,
    timed,
)
from tests.integration.node_process import NodeProcess
from tests.peers.dcmtk import StorescpPeer, storescu
from tests.peers.orthanc import OrthancPeer
from tests.peers.processes import MissingPeerError, find_tool
from tests.peers.studies import COVID_SERIES_DIR, LARGE_SERIES_SLICES, make_large_series

logger = logging.getLogger(__name__)

TARGETS = ("node", "storescp", "orthanc")
DEFAULT_REPEATS = 3
NODE_AET = "BENCHNODE"
SENDER_AET = "BENCHSCU"
NODE_QUIET_PERIOD_S = 3600.0  # no series is ever "complete" during the benchmark
ARRIVAL_TIMEOUT_S = 60.0


class TargetUnavailableError(RuntimeError):
    """A receiver could not be started; the message says why and how to fix it."""


def _send(series_dir: Path, host: str, port: int, called_aet: str) -> None:
    result = storescu(series_dir, host, port, called_aet, SENDER_AET)
    output = result.stderr + result.stdout
    failures = [line for line in output.splitlines() if line.startswith(("E:", "F:"))]
    if result.returncode != 0 or failures:
        raise RuntimeError(
            f"storescu to {called_aet} exited {result.returncode}: "
            f"{' | '.join(failures[-5:]) or output[-500:] or '(no output)'}"
        )


def _measure(
    name: str, items: int, repeats: int, prepare: Callable[[], None], run: Callable[[], None],
    verify: Callable[[], None],
) -> Measurement:
    measurement = Measurement(name, items)
    for _ in range(repeats):
        prepare()
        measurement.seconds.append(timed(run))
        verify()
    return measurement


# ------------------------------------------------------------------ (a) the node
def bench_node(series_dir: Path, items: int, repeats: int, work_dir: Path) -> Measurement:
    """Each repetition: a fresh node process and data folder; time the storescu transfer."""
    measurement = Measurement("node", items)
    for run in range(repeats):
        node = NodeProcess(
            work_dir / f"node-run{run}", ae_title=NODE_AET,
            sections={"node": {"workers": 0, "quiet_period_s": NODE_QUIET_PERIOD_S}},
        )
        with node:
            send = functools.partial(_send, series_dir, node.host, node.port, NODE_AET)
            measurement.seconds.append(timed(send))
            stored = node.query("select count(*) from instances")[0][0]
            if stored != items:
                raise RuntimeError(f"node recorded {stored} of {items} instances")
    return measurement


# ------------------------------------------------------------------ (b) storescp, (c) Orthanc
def bench_storescp(series_dir: Path, items: int, repeats: int, work_dir: Path) -> Measurement:
    with StorescpPeer(out_dir=work_dir / "storescp" / "received") as scp:

        def verify() -> None:
            scp.wait_for_files(items, ARRIVAL_TIMEOUT_S)

        return _measure(
            "storescp", items, repeats, scp.clear,
            lambda: _send(series_dir, scp.host, scp.port, scp.aet), verify,
        )


def bench_orthanc(series_dir: Path, items: int, repeats: int, work_dir: Path) -> Measurement:
    orthanc_dir = work_dir / "orthanc"
    orthanc_dir.mkdir()
    with OrthancPeer(work_dir=orthanc_dir) as orthanc:

        def verify() -> None:
            orthanc.wait_for(lambda: orthanc.instance_count() == items, ARRIVAL_TIMEOUT_S,
                             what=f"{items} instances in Orthanc")

        return _measure(
            "orthanc", items, repeats, orthanc.delete_all,
            lambda: _send(series_dir, orthanc.host, orthanc.dicom_port, orthanc.aet), verify,
        )


BENCHES: dict[str, Callable[[Path, int, int, Path], Measurement]] = {
    "node": bench_node,
    "storescp": bench_storescp,
    "orthanc": bench_orthanc,
}


def run(targets: Sequence[str], slices: int, repeats: int, source: Path, work_dir: Path) -> int:
    """Build the series, measure each target, print the table; 1 if a target failed."""
    find_tool("storescu")
    series_dir = work_dir / "series"
    files = make_large_series(source, series_dir, n=slices)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"series: {len(files)} CT slices, {size_mb:.1f} MB, JPEG Lossless SV1, from {source}")
    print(f"machine: {machine_line()}")
    measurements = []
    for name in targets:
        target_dir = work_dir / name
        target_dir.mkdir()
        try:
            measurements.append(BENCHES[name](series_dir, len(files), repeats, target_dir))
        except (TargetUnavailableError, MissingPeerError, RuntimeError, TimeoutError) as exc:
            print(f"\n{name}: NOT MEASURED: {exc}", file=sys.stderr)
            measurements.append(Measurement(name, len(files), error=str(exc)))
    print()
    print(rate_table(measurements))
    by_name = {m.name: m for m in measurements}
    if "node" in by_name:
        for other in ("orthanc", "storescp"):
            if other in by_name:
                print(ratio_line(by_name["node"], by_name[other]))
    return 0 if all(m.ok for m in measurements) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--slices", type=int, default=LARGE_SERIES_SLICES)
    parser.add_argument(
        "--targets", default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    parser.add_argument("--source", type=Path, default=COVID_SERIES_DIR,
                        help="series whose slices are reused (default: COVID-CT-MD P002)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the series and receivers' files go (default: a temp dir)")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    if args.repeats < 1 or args.slices < 2:
        parser.error("--repeats must be >= 1 and --slices >= 2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        work = tempfile.mkdtemp(prefix="ingest-", dir=args.work_dir)
        return run(targets, args.slices, args.repeats, args.source, Path(work))
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        return run(targets, args.slices, args.repeats, args.source, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
