"""``[node] receiver_processes``: several processes on one DICOM port, one durable result."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import Dataset

from dicomnode.receiving.processes import CommitmentRelay, relay_handler
from tests.peers.dcmtk import storescu
from tests.peers.studies import make_large_series

from .node_process import NodeProcess

SERIES = 4
SLICES = 25


def _receiver_pids(node: NodeProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"dicomnode receive --config {node.config_path}"],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.integration
@pytest.mark.slow
def test_three_processes_share_the_port_and_lose_nothing(covid_study, tmp_path) -> None:
    series = [make_large_series(covid_study.directory, tmp_path / f"s{i}", n=SLICES,
                                salt=f"rp-{i}") for i in range(SERIES)]
    node = NodeProcess(tmp_path / "node", sections={"node": {"workers": 0,
                                                             "receiver_processes": 3}})
    with node:
        children = _receiver_pids(node)
        assert len(children) == 2, node.log_tail()
        results: list[int] = []

        def send(files: list[Path]) -> None:
            results.append(storescu(files, node.host, node.port, node.ae_title).returncode)

        threads = [threading.Thread(target=send, args=(s,)) for s in series]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert results == [0] * SERIES
        node.wait_for(lambda: node.query("select count(*) from instances")[0][0]
                      == SERIES * SLICES, 20, "every row")
        assert node.query("select count(*) from series")[0][0] == SERIES
        assert node.query("select sum(instance_count) from series")[0][0] == SERIES * SLICES
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


def test_commitment_reports_are_relayed_to_the_node_process(tmp_path) -> None:
    got: list[tuple[str, list[str], list[str]]] = []
    arrived = threading.Event()

    def apply(transaction: str, committed: list[str], failed: list[str]) -> None:
        got.append((transaction, committed, failed))
        arrived.set()

    relay = CommitmentRelay(tmp_path / "relay.sock", apply)
    try:
        info = Dataset()
        info.TransactionUID = "1.2.3.4"
        ok, bad = Dataset(), Dataset()
        ok.ReferencedSOPInstanceUID, bad.ReferencedSOPInstanceUID = "1.2.3.5", "1.2.3.6"
        info.ReferencedSOPSequence = [ok]
        info.FailedSOPSequence = [bad]
        handle = relay_handler(tmp_path / "relay.sock")
        assert handle(SimpleNamespace(event_information=info)) == (0x0000, None)
        assert arrived.wait(5)
        assert got == [("1.2.3.4", ["1.2.3.5"], ["1.2.3.6"])]

        class Broken:
            @property
            def event_information(self) -> Dataset:
                raise ValueError("undecodable")

        assert handle(Broken()) == (0x0110, None)
    finally:
        relay.close()
    assert handle(SimpleNamespace(event_information=info)) == (0x0110, None)  # node gone
