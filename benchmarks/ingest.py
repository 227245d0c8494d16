"""Ingest speed: 300-slice CT series sent with dcmtk ``storescu`` to three receivers.

(a) the node (``dicomnode serve`` with ``workers = 0`` and a long quiet period, so only the
receiver runs), (b) dcmtk ``storescp`` writing to disk, (c) Orthanc. Every sender and receiver
runs with ``TCP_NODELAY=1``. Each repetition starts from an empty receiver (a fresh node data
folder, Orthanc emptied, storescp's folder cleared), so every run stores new instances.
Two modes, both measured in the same run (``--associations 1,4``): one association sending one
series, and four ``storescu`` processes sending four different series at once (aggregate rate).
Prints instances/s (median of the repetitions) and the ratios node/Orthanc, node/storescp for
each mode.

    .venv/bin/python -m benchmarks.ingest [--repeats 3] [--slices 300] [--targets ...]
        [--associations 1,4] [--receiver-processes 1]
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
ROWS_SETTLE_S = 10.0
RECEIVER_PROCESSES = {"n": 1}  # the node's [node] receiver_processes (--receiver-processes)


class TargetUnavailableError(RuntimeError):
    """A receiver could not be started; the message says why and how to fix it."""


def _send_all(series_dirs: Sequence[Path], host: str, port: int, called_aet: str) -> None:
    """One storescu per series, all at once; returns when every one has finished."""
    if len(series_dirs) == 1:
        _send(series_dirs[0], host, port, called_aet)
        return
    with ThreadPoolExecutor(max_workers=len(series_dirs)) as pool:
        futures = [pool.submit(_send, d, host, port, called_aet) for d in series_dirs]
        for future in futures:
            future.result()


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
def bench_node(
    series: Sequence[Path], items: int, repeats: int, work_dir: Path, name: str = "node"
) -> Measurement:
    """Each repetition: a fresh node process and data folder; time the storescu transfers."""
    measurement = Measurement(name, items)
    for run in range(repeats):
        node = NodeProcess(
            work_dir / f"node-run{run}", ae_title=NODE_AET,
            sections={"node": {"workers": 0, "quiet_period_s": NODE_QUIET_PERIOD_S,
                               "receiver_processes": RECEIVER_PROCESSES["n"]}},
        )
        with node:
            send = functools.partial(_send_all, series, node.host, node.port, NODE_AET)
            measurement.seconds.append(timed(send))
            # acknowledged = synced in the spool; the rows follow in the writer's group commits
            try:
                node.wait_for(
                    lambda node=node: node.query("select count(*) from instances")[0][0] == items,
                    ROWS_SETTLE_S, f"{items} instance rows",
                )
            except TimeoutError:
                stored = node.query("select count(*) from instances")[0][0]
                raise RuntimeError(f"node recorded {stored} of {items} instances") from None
    return measurement


# ------------------------------------------------------------------ (b) storescp, (c) Orthanc
def bench_storescp(
    series: Sequence[Path], items: int, repeats: int, work_dir: Path, name: str = "storescp"
) -> Measurement:
    with StorescpPeer(out_dir=work_dir / "storescp" / "received") as scp:

        def verify() -> None:
            scp.wait_for_files(items, ARRIVAL_TIMEOUT_S)

        return _measure(
            name, items, repeats, scp.clear,
            lambda: _send_all(series, scp.host, scp.port, scp.aet), verify,
        )


def bench_orthanc(
    series: Sequence[Path], items: int, repeats: int, work_dir: Path, name: str = "orthanc"
) -> Measurement:
    orthanc_dir = work_dir / "orthanc"
    orthanc_dir.mkdir()
    with OrthancPeer(work_dir=orthanc_dir) as orthanc:

        def verify() -> None:
            orthanc.wait_for(lambda: orthanc.instance_count() == items, ARRIVAL_TIMEOUT_S,
                             what=f"{items} instances in Orthanc")

        return _measure(
            name, items, repeats, orthanc.delete_all,
            lambda: _send_all(series, orthanc.host, orthanc.dicom_port, orthanc.aet), verify,
        )


BENCHES: dict[str, Callable[..., Measurement]] = {
    "node": bench_node,
    "storescp": bench_storescp,
    "orthanc": bench_orthanc,
}


def _series(source: Path, work_dir: Path, slices: int, count: int) -> list[list[Path]]:
    """``count`` different series (new UIDs each) of ``slices`` slices."""
    return [
        make_large_series(source, work_dir / f"series{i}", n=slices, salt=f"bench-{i}" if i else "")
        for i in range(count)
    ]


def _measure_target(
    name: str, dirs: Sequence[Path], items: int, repeats: int, work_dir: Path, label: str
) -> Measurement:
    target_dir = work_dir / label.replace(" ", "-")
    target_dir.mkdir()
    try:
        return BENCHES[name](dirs, items, repeats, target_dir, name=label)
    except (TargetUnavailableError, MissingPeerError, RuntimeError, TimeoutError) as exc:
        print(f"\n{label}: NOT MEASURED: {exc}", file=sys.stderr)
        return Measurement(label, items, error=str(exc))


def run(
    targets: Sequence[str], slices: int, repeats: int, source: Path, work_dir: Path,
    associations: Sequence[int] = (1,),
) -> int:
    """Build the series, measure each target in each mode, print the table; 1 if one failed."""
    find_tool("storescu")
    all_series = _series(source, work_dir, slices, max(associations))
    files = all_series[0]
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"series: {len(files)} CT slices, {size_mb:.1f} MB per series, JPEG Lossless SV1, "
          f"from {source}")
    print(f"modes: {', '.join(f'{n} association(s) at once' for n in associations)}")
    print(f"machine: {machine_line()}")
    measurements: list[Measurement] = []
    for count in associations:
        dirs = [work_dir / f"series{i}" for i in range(count)]
        for name in targets:
            label = name if count == 1 else f"{name} x{count}"
            measurements.append(
                _measure_target(name, dirs, len(files) * count, repeats, work_dir, label)
            )
    print()
    print(rate_table(measurements))
    by_name = {m.name: m for m in measurements}
    for count in associations:
        suffix = "" if count == 1 else f" x{count}"
        if f"node{suffix}" in by_name:
            for other in ("orthanc", "storescp"):
                if f"{other}{suffix}" in by_name:
                    print(ratio_line(by_name[f"node{suffix}"], by_name[f"{other}{suffix}"]))
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
    parser.add_argument("--associations", default="1,4",
                        help="comma-separated modes: series sent at once on as many associations")
    parser.add_argument("--receiver-processes", type=int, default=1,
                        help="[node] receiver_processes of the node measured (default 1)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the series and receivers' files go (default: a temp dir)")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    RECEIVER_PROCESSES["n"] = args.receiver_processes
    print(f"node: [node] receiver_processes = {args.receiver_processes}")
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    if args.repeats < 1 or args.slices < 2:
        parser.error("--repeats must be >= 1 and --slices >= 2")
    try:
        associations = sorted({int(n) for n in args.associations.split(",") if n.strip()})
    except ValueError:
        parser.error("--associations takes numbers, e.g. 1,4")
    if not associations or min(associations) < 1 or max(associations) > 16:
        parser.error("--associations must be between 1 and 16")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        work = tempfile.mkdtemp(prefix="ingest-", dir=args.work_dir)
        return run(targets, args.slices, args.repeats, args.source, Path(work), associations)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        return run(targets, args.slices, args.repeats, args.source, Path(tmp), associations)


if __name__ == "__main__":
    sys.exit(main())
