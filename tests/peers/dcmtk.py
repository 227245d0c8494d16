"""dcmtk as the real sender and receiver: ``storescu``, ``echoscu`` and ``storescp``.

All of them run with ``TCP_NODELAY=1``. ``storescu`` proposes a separate presentation context
per transfer syntax (its default), so a peer that accepts a compressed syntax in its own context
receives the file's bytes as they are.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import pydicom
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from tests.peers.ports import LOOPBACK_HOST, free_port
from tests.peers.processes import find_tool, log_tail, peer_env, stop_process

logger = logging.getLogger(__name__)

STORESCU_TIMEOUT_S = 600.0
ECHOSCU_TIMEOUT_S = 15.0
STORESCP_START_TIMEOUT_S = 20.0
TRANSCODE_TIMEOUT_S = 120.0
DEFAULT_STORESCP_AET = "STORESCP"

# storescu option that proposes a transfer syntax (with the uncompressed ones as fallback).
STORESCU_PROPOSE_FLAG: dict[str, str] = {
    JPEGLosslessSV1: "-xs",
    JPEGBaseline8Bit: "-xy",
    JPEGExtended12Bit: "-xx",
    JPEG2000Lossless: "-xv",
    JPEG2000: "-xw",
    JPEGLSLossless: "-xt",
    JPEGLSNearLossless: "-xu",
    RLELossless: "-xr",
    DeflatedExplicitVRLittleEndian: "-xd",
    ExplicitVRLittleEndian: "-xe",
    ImplicitVRLittleEndian: "-xi",
}

# dcmtk tools that decode a transfer syntax to explicit VR little endian.
_DECODER_OF: dict[str, str] = {
    JPEGLosslessSV1: "dcmdjpeg",
    JPEGLossless: "dcmdjpeg",
    JPEGBaseline8Bit: "dcmdjpeg",
    JPEGExtended12Bit: "dcmdjpeg",
    JPEGLSLossless: "dcmdjpls",
    JPEGLSNearLossless: "dcmdjpls",
    RLELossless: "dcmdrle",
}
# dcmtk tool and options that encode explicit VR little endian into a transfer syntax.
_ENCODER_OF: dict[str, tuple[str, ...]] = {
    JPEGLosslessSV1: ("dcmcjpeg", "+e1"),
    JPEGLossless: ("dcmcjpeg", "+el"),
    JPEGLSLossless: ("dcmcjpls", "+el"),
    RLELossless: ("dcmcrle",),
    DeflatedExplicitVRLittleEndian: ("dcmconv", "+td"),
    ExplicitVRLittleEndian: ("dcmconv", "+te"),
    ImplicitVRLittleEndian: ("dcmconv", "+ti"),
}


class DcmtkError(RuntimeError):
    """A dcmtk tool failed or a dcmtk peer did not start."""


def _run(args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    logger.debug("running %s", " ".join(args))
    return subprocess.run(
        list(args), capture_output=True, text=True, env=peer_env(), timeout=timeout_s,
        check=False,
    )


def _file_transfer_syntax(path: Path) -> str:
    meta = pydicom.filereader.read_file_meta_info(path)
    return str(meta.TransferSyntaxUID)


def _first_file(items: Sequence[Path]) -> Path | None:
    for item in items:
        if item.is_file():
            return item
        if item.is_dir():
            for found in sorted(item.rglob("*")):
                if found.is_file():
                    return found
    return None


def storescu(
    paths_or_dir: Path | Iterable[Path],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "STORESCU",
    extra_args: Sequence[str] = (),
    *,
    transfer_syntax: str | None = "auto",
    required_only: bool = True,
    timeout_s: float = STORESCU_TIMEOUT_S,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Send files (folders are scanned recursively) with dcmtk ``storescu``; one association.

    ``transfer_syntax``: ``"auto"`` proposes the first file's transfer syntax (``-xs``,
    ``-xt``, ...) with the uncompressed ones as fallback; a UID proposes that syntax; None
    keeps storescu's default. ``required_only`` adds ``-R`` (propose only the SOP classes in
    the files), which is what lets storescu offer Comprehensive 3D SR and SEG. With ``check``
    a non-zero exit raises :class:`DcmtkError`.
    """
    items = [paths_or_dir] if isinstance(paths_or_dir, Path) else [Path(p) for p in paths_or_dir]
    if not items:
        raise ValueError("nothing to send")
    args = [str(find_tool("storescu")), "-aet", calling_aet, "-aec", called_aet]
    if any(item.is_dir() for item in items):
        args += ["+sd", "+r"]
    if required_only:
        args.append("-R")
    if transfer_syntax == "auto":
        first = _first_file(items)
        transfer_syntax = _file_transfer_syntax(first) if first is not None else None
    if transfer_syntax is not None:
        flag = STORESCU_PROPOSE_FLAG.get(transfer_syntax)
        if flag is not None:
            args.append(flag)
    args += list(extra_args)
    args += [host, str(port)]
    args += [str(item) for item in items]
    result = _run(args, timeout_s)
    if check and result.returncode != 0:
        raise DcmtkError(
            f"storescu exited {result.returncode}: {result.stderr[-3000:] or result.stdout[-3000:]}"
        )
    return result


def echoscu(
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "ECHOSCU",
    extra_args: Sequence[str] = (),
    timeout_s: float = ECHOSCU_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """One C-ECHO with dcmtk ``echoscu``; exit code 0 means the peer answered success."""
    args = [
        str(find_tool("echoscu")), "-aet", calling_aet, "-aec", called_aet,
        "-to", str(max(1, int(timeout_s))), *extra_args, host, str(port),
    ]
    return _run(args, timeout_s + 5)


def wait_for_echo(
    host: str, port: int, called_aet: str, timeout_s: float, calling_aet: str = "ECHOSCU"
) -> bool:
    """Repeat C-ECHO until the peer answers success or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if echoscu(host, port, called_aet, calling_aet, timeout_s=2).returncode == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


class StorescpPeer:
    """dcmtk ``storescp`` on a free loopback port, writing what it receives into a folder.

    Bit-preserving (``+B``), files named ``<modality>.<SOPInstanceUID>.dcm``, every transfer
    syntax accepted (``+xa``) and unknown SOP classes too (``-pm``): a permissive fake PACS
    and the baseline receiver of the ingest benchmark.
    """

    def __init__(
        self,
        out_dir: Path | None = None,
        aet: str = DEFAULT_STORESCP_AET,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        bit_preserving: bool = True,
        profile: tuple[Path, str] | None = None,
    ) -> None:
        """``profile``: an association configuration file and profile name (``-xf``) that
        replace the accept-everything defaults, e.g. a PACS refusing some SOP classes."""
        self._profile = profile
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if out_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="storescp-peer-")
            out_dir = Path(self._own_tmp.name) / "received"
        self.out_dir = Path(out_dir)
        self.aet = aet
        self.host = LOOPBACK_HOST
        self.port = port if port is not None else free_port()
        # Next to the output folder, so the folder holds only received objects.
        self.log_path = self.out_dir.parent / f"{self.out_dir.name}.storescp-{self.port}.log"
        self._extra_args = list(extra_args)
        self._bit_preserving = bit_preserving
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StorescpPeer:
        """Start storescp and wait until it answers C-ECHO."""
        if self._proc is not None:
            raise DcmtkError("storescp already started")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(find_tool("storescp")), "-aet", self.aet, "-od", str(self.out_dir),
            "-fe", ".dcm", "-dhl",
        ]
        if self._profile is None:
            args += ["+xa", "-pm"]
        else:
            args += ["-xf", str(self._profile[0]), self._profile[1]]
        if self._bit_preserving:
            args.append("+B")
        args += [*self._extra_args, str(self.port)]
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=peer_env(),
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + STORESCP_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DcmtkError(
                    f"storescp exited with code {self._proc.returncode}; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if echoscu(self.host, self.port, self.aet, timeout_s=2).returncode == 0:
                return self
            time.sleep(0.05)
        self.stop()
        raise DcmtkError(f"storescp on port {self.port} did not answer C-ECHO in time")

    def stop(self) -> None:
        """Stop storescp; remove its folder if this peer created it."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    def __enter__(self) -> StorescpPeer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def received_files(self) -> list[Path]:
        """Files fully written so far (storescp writes into the folder directly)."""
        return sorted(p for p in self.out_dir.glob("*.dcm") if p.is_file())

    def wait_for_files(self, count: int, timeout_s: float) -> list[Path]:
        """Wait until at least ``count`` files arrived; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            files = self.received_files()
            if len(files) >= count:
                return files
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"storescp received {len(files)} of {count} files in {timeout_s} s; "
                    f"log {self.log_path}"
                )
            time.sleep(0.1)

    def clear(self) -> None:
        """Delete the received files (between benchmark repetitions)."""
        for path in self.received_files():
            path.unlink()


def transcode(src: Path, dst: Path, transfer_syntax: str) -> Path:
    """Re-encode one file with dcmtk (decode with dcmdjpeg/dcmdjpls/dcmdrle, then encode).

    An independent encoder next to pydicom's: lossless targets only; dcmtk has no JPEG 2000
    codec, so that target raises ValueError.
    """
    if transfer_syntax not in _ENCODER_OF:
        raise ValueError(f"dcmtk cannot encode {transfer_syntax}")
    source_ts = _file_transfer_syntax(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dcmtk-transcode-") as tmp:
        plain = src
        if source_ts in _DECODER_OF:
            plain = Path(tmp) / "plain.dcm"
            _check_tool_run([_DECODER_OF[source_ts], str(src), str(plain)])
        elif source_ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                               DeflatedExplicitVRLittleEndian):
            raise ValueError(f"dcmtk cannot decode {source_ts}")
        tool, *options = _ENCODER_OF[transfer_syntax]
        _check_tool_run([tool, *options, str(plain), str(dst)])
    return dst


def _check_tool_run(args: list[str]) -> None:
    tool = find_tool(args[0])
    result = _run([str(tool), *args[1:]], TRANSCODE_TIMEOUT_S)
    if result.returncode != 0:
        raise DcmtkError(f"{args[0]} exited {result.returncode}: {result.stderr[-2000:]}")


def dcmdump(path: Path, extra_args: Sequence[str] = ()) -> str:
    """The text dump of one file (``dcmdump``), for failure messages and tag checks."""
    result = _run([str(find_tool("dcmdump")), *extra_args, str(path)], TRANSCODE_TIMEOUT_S)
    if result.returncode != 0:
        raise DcmtkError(f"dcmdump exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def storescp_log(peer: StorescpPeer) -> str:
    """The tail of a storescp peer's log."""
    return log_tail(peer.log_path)
