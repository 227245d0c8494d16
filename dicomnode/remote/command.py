"""``dicomnode worker --node-url URL --token TOKEN``: the remote worker's command line.

The processor comes from ``[pipeline]`` of ``--config`` (or the defaults and environment), as
for a local worker; the heartbeat interval from ``[worker] heartbeat_s`` unless
``--heartbeat-s`` says otherwise. Nothing else of the node's configuration is used: no
database, no data directory.
"""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path

from dicomnode.config import Settings, pipeline_options
from dicomnode.errors import ConfigError
from dicomnode.jobs.processing import load_processor
from dicomnode.remote.client import DicomwebClient
from dicomnode.remote.performer import PerformerSettings, RemotePerformer

TOKEN_ENV = "DICOMNODE_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-url", help="run as a remote worker of the node at this URL "
                        "(its web app, e.g. http://node:8080): UPS-RS, WADO-RS, STOW-RS")
    parser.add_argument("--token", help=f"the node's [web] token (default: ${TOKEN_ENV})")
    parser.add_argument("--ups-url", help="another UPS-RS provider's DICOMweb root to pull "
                        "workitems from (default: <node-url>/dicom-web)")
    parser.add_argument("--stow-url", help="where results are stored with STOW-RS "
                        "(default: the UPS-RS root)")
    parser.add_argument("--work-dir", type=Path, help="scratch folder for retrieved series "
                        "(default: the system's temporary folder)")
    parser.add_argument("--heartbeat-s", type=float, help="seconds between lease renewals "
                        "(default: [worker] heartbeat_s)")


def dicomweb_root(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/dicom-web") else f"{url}/dicom-web"


def wants_remote(args: argparse.Namespace) -> bool:
    return bool(args.node_url or args.ups_url)


def run_remote_worker(args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    ups = dicomweb_root(args.ups_url or args.node_url)
    stow = dicomweb_root(args.stow_url) if args.stow_url else ups
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    heartbeat = args.heartbeat_s if args.heartbeat_s is not None else settings.worker.heartbeat_s
    if heartbeat <= 0:
        raise ConfigError("--heartbeat-s must be > 0")
    processor = load_processor(settings.pipeline.processor, pipeline_options(settings))
    client = DicomwebClient(ups, token, stow_base=stow)
    performer = RemotePerformer(
        client, processor,
        PerformerSettings(heartbeat_s=heartbeat, poll_interval_s=settings.worker.poll_interval_s,
                          work_dir=args.work_dir),
    )
    try:
        if args.once:
            performer.run_once()
        else:
            performer.run(stop)
    finally:
        client.close()
    return 0
