"""Orthanc as the real PACS peer of the integration tests and benchmarks.

:class:`OrthancPeer` starts the Debian ``Orthanc`` binary as a plain child process with a JSON
configuration generated in a temporary folder (storage, index, log), free loopback ports, the
DICOMweb and GDCM plug-ins, and no authentication (HTTP is refused from other hosts). Orthanc
1.10 cannot bind to one interface, so its DICOM port listens on all of them for the test's
lifetime. REST and DICOMweb helpers use only the standard library.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tests.peers.multipart import payloads
from tests.peers.ports import LOOPBACK_HOST, free_ports
from tests.peers.processes import find_tool, log_tail, peer_env, stop_process

logger = logging.getLogger(__name__)

T = TypeVar("T")

ORTHANC_START_TIMEOUT_S = 60.0
ORTHANC_STOP_GRACE_S = 10.0
HTTP_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.1
DEFAULT_AET = "ORTHANC"

# Where the Debian packages orthanc-dicomweb and orthanc-gdcm install their plug-ins.
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
GDCM_PLUGIN = "libOrthancGdcm.so"
DICOMWEB_ROOT = "/dicom-web/"

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OrthancError(RuntimeError):
    """Orthanc did not start, or answered a request with an error."""


@dataclass(frozen=True)
class StoredInstance:
    """One instance as Orthanc indexes it."""

    orthanc_id: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    modality: str

    # Mapping-style access so tests can write inst["SOPClassUID"] as in DICOM JSON.
    def __getitem__(self, keyword: str) -> str:
        return {
            "ID": self.orthanc_id,
            "SOPClassUID": self.sop_class_uid,
            "SOPInstanceUID": self.sop_instance_uid,
            "SeriesInstanceUID": self.series_instance_uid,
            "Modality": self.modality,
        }[keyword]


def find_plugin(file_name: str) -> Path:
    """Path of an Orthanc plug-in installed by its Debian package; raise if absent."""
    for directory in PLUGIN_DIRS:
        candidate = directory / file_name
        if candidate.exists():
            return candidate
    package = "orthanc-dicomweb" if "DicomWeb" in file_name else "orthanc-gdcm"
    raise OrthancError(
        f"Orthanc plug-in {file_name} not found in {[str(d) for d in PLUGIN_DIRS]}: "
        f"install the Debian package {package} (see .ci/install-system.sh)"
    )


def dicom_files_in(paths: Path | Iterable[Path]) -> list[Path]:
    """The files named by ``paths``; folders are expanded recursively and sorted."""
    items = [paths] if isinstance(paths, Path) else list(paths)
    files: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file()))
        else:
            files.append(item)
    return files


class OrthancPeer:
    """A private Orthanc instance on free loopback ports, started and stopped as a context."""

    def __init__(
        self,
        work_dir: Path | None = None,
        aet: str = DEFAULT_AET,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        verbose: bool = False,
        stop_grace_s: float = ORTHANC_STOP_GRACE_S,
    ) -> None:
        """Prepare (not start) an Orthanc in ``work_dir`` (a temporary folder if None).

        ``modalities`` maps a name to ``(aet, host, port)``; ``extra_config`` overrides keys
        of :meth:`config`; ``stop_grace_s`` is how long a SIGTERM may take before SIGKILL
        (Orthanc needs about 3 s to stop cleanly; a throw-away test instance may be killed).
        """
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if work_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="orthanc-peer-")
            work_dir = Path(self._own_tmp.name)
        self.work_dir = Path(work_dir)
        self.aet = aet
        self.host = LOOPBACK_HOST
        self.dicom_port, self.http_port = free_ports(2)
        self.base_url = f"http://{self.host}:{self.http_port}"
        self.config_path = self.work_dir / "orthanc.json"
        self.log_path = self.work_dir / "orthanc.log"
        self._modalities = dict(modalities or {})
        self._extra_config = dict(extra_config or {})
        self._verbose = verbose
        self.stop_grace_s = stop_grace_s
        self._proc: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- lifecycle
    def config(self) -> dict[str, Any]:
        """The JSON configuration Orthanc is started with."""
        storage = self.work_dir / "storage"
        cfg: dict[str, Any] = {
            "Name": f"test-{self.aet}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "TemporaryDirectory": str(self.work_dir / "tmp"),
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomTlsEnabled": False,
            # Accept any calling AE and any called AE, as a permissive PACS would.
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self._modalities.items()
            },
            "DicomModalitiesInDatabase": False,
            "DicomScuTimeout": 30,
            "DicomAssociationCloseDelay": 0,
            "Plugins": [str(find_plugin(DICOMWEB_PLUGIN)), str(find_plugin(GDCM_PLUGIN))],
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT},
            "Gdcm": {"Enable": True},
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "SaveJobs": False,
            "StableAge": 2,
            "MetricsEnabled": False,
            "HttpCompressionEnabled": False,
            "DeidentifyLogs": False,
        }
        cfg.update(self._extra_config)
        return cfg

    def start(self) -> OrthancPeer:
        """Write the configuration, start Orthanc and wait until ``/system`` answers."""
        if self._proc is not None:
            raise OrthancError("Orthanc already started")
        binary = find_tool("Orthanc")
        (self.work_dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        args = [str(binary)]
        if self._verbose:
            args.append("--verbose")
        args.append(str(self.config_path))
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=peer_env(),
                cwd=self.work_dir, start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + ORTHANC_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with code {self._proc.returncode} while starting; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                self.system()
            except (OSError, OrthancError):
                time.sleep(POLL_INTERVAL_S)
                continue
            logger.info(
                "Orthanc %s up: DICOM %s:%d, HTTP %s", self.aet, self.host, self.dicom_port,
                self.base_url,
            )
            return self
        self.stop()
        raise OrthancError(
            f"Orthanc did not answer /system within {ORTHANC_START_TIMEOUT_S} s; "
            f"log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Stop Orthanc (terminate, then kill) and remove its folder if this peer made it."""
        if self._proc is not None:
            stop_process(self._proc, grace_s=self.stop_grace_s)
            self._proc = None
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> OrthancPeer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def describe(self) -> str:
        """A line for failure messages: ports and the log file to read."""
        return (
            f"Orthanc AET {self.aet} DICOM {self.host}:{self.dicom_port} HTTP {self.base_url} "
            f"log {self.log_path}"
        )

    # ---------------------------------------------------------------- HTTP plumbing
    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | Mapping[str, Any] | Sequence[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> tuple[bytes, Mapping[str, str]]:
        """Send one HTTP request to Orthanc; return the body and headers, raise on HTTP errors."""
        data: bytes | None
        all_headers = dict(headers or {})
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = json.dumps(body).encode("utf-8")
            all_headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=all_headers
        )
        try:
            with _NO_PROXY.open(req, timeout=timeout_s) as resp:
                return resp.read(), dict(resp.headers.items())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:2000]
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}: {detail}") from exc

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path)[0] or b"null")

    def get_text(self, path: str) -> str:
        """A plain-text answer, such as ``/instances/{id}/metadata/TransferSyntax``."""
        return self.request("GET", path)[0].decode("utf-8")

    def post_json(self, path: str, body: Any) -> Any:
        return json.loads(self.request("POST", path, body)[0] or b"null")

    # ---------------------------------------------------------------- REST helpers
    def system(self) -> dict[str, Any]:
        """``GET /system``: version, AET, ports."""
        result: dict[str, Any] = self.get_json("/system")
        return result

    def plugins(self) -> list[str]:
        """Names of the loaded plug-ins (``dicom-web``, ``gdcm``)."""
        result: list[str] = self.get_json("/plugins")
        return result

    def upload(self, paths: Path | Iterable[Path]) -> list[dict[str, Any]]:
        """``POST /instances`` each file (folders expanded); return Orthanc's answers.

        Each answer has ``ID``, ``ParentStudy`` and ``Status`` (``Success`` or ``AlreadyStored``).
        """
        answers = []
        for path in dicom_files_in(paths):
            body, _ = self.request(
                "POST", "/instances", path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            answers.append(json.loads(body))
        return answers

    def studies(self) -> list[str]:
        """Orthanc IDs of all studies."""
        result: list[str] = self.get_json("/studies")
        return result

    def study(self, study_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(f"/studies/{study_id}")
        return result

    def series_of(self, study_id: str) -> list[dict[str, Any]]:
        """The series of an Orthanc study, expanded (``MainDicomTags``, ``Instances``)."""
        result: list[dict[str, Any]] = self.get_json(f"/studies/{study_id}/series")
        return result

    def find_by_study_uid(self, study_uid: str) -> str | None:
        """Orthanc ID of the study with this StudyInstanceUID, or None."""
        for hit in self.post_json("/tools/lookup", study_uid) or []:
            if hit.get("Type") == "Study":
                return str(hit["ID"])
        return None

    def instances_of_study(self, study_uid: str) -> list[StoredInstance]:
        """Every instance of the study with SOP class, SOP instance UID, series and modality."""
        study_id = self.find_by_study_uid(study_uid)
        if study_id is None:
            return []
        instances = []
        for series in self.series_of(study_id):
            tags = series.get("MainDicomTags", {})
            for instance_id in series.get("Instances", []):
                instances.append(self._stored_instance(instance_id, tags))
        return instances

    def _stored_instance(self, instance_id: str, series_tags: Mapping[str, str]) -> StoredInstance:
        metadata = self.get_json(f"/instances/{instance_id}/metadata?expand")
        # Orthanc 1.10 records the SOP class as instance metadata; read the file otherwise.
        sop_class = metadata.get("SopClassUid")
        main = self.get_json(f"/instances/{instance_id}").get("MainDicomTags", {})
        if not sop_class:
            sop_class = self.get_json(f"/instances/{instance_id}/simplified-tags")["SOPClassUID"]
        return StoredInstance(
            orthanc_id=instance_id,
            sop_class_uid=str(sop_class),
            sop_instance_uid=str(main.get("SOPInstanceUID", "")),
            series_instance_uid=str(series_tags.get("SeriesInstanceUID", "")),
            modality=str(series_tags.get("Modality", "")),
        )

    def simplified_tags(self, instance_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(f"/instances/{instance_id}/simplified-tags")
        return result

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register (or replace) a DICOM modality Orthanc may send to (``PUT /modalities``)."""
        self.request(
            "PUT", f"/modalities/{urllib.parse.quote(name)}",
            {"AET": aet, "Host": host, "Port": int(port)},
        )

    def echo_modality(self, name: str) -> bool:
        """C-ECHO from Orthanc to a registered modality."""
        try:
            self.request("POST", f"/modalities/{urllib.parse.quote(name)}/echo", {})
        except OrthancError:
            return False
        return True

    def store_to_modality(
        self, name: str, resources: Sequence[str], synchronous: bool = True
    ) -> dict[str, Any]:
        """C-STORE Orthanc resources (IDs of patients/studies/series/instances) to a modality.

        Synchronous: returns the job's result and raises if the store failed. Asynchronous:
        returns ``{"ID": job_id, ...}``; follow it with :meth:`job`.
        """
        result: dict[str, Any] = self.post_json(
            f"/modalities/{urllib.parse.quote(name)}/store",
            {"Resources": list(resources), "Synchronous": synchronous},
        )
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(f"/jobs/{job_id}")
        return result

    def get_file(self, instance_id: str) -> bytes:
        """The DICOM file of an instance, as stored."""
        return self.request("GET", f"/instances/{instance_id}/file")[0]

    def delete_all(self) -> None:
        """Delete every patient (and so every study, series and instance)."""
        for patient_id in self.get_json("/patients"):
            self.request("DELETE", f"/patients/{patient_id}")

    def instance_count(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout_s: float,
        interval_s: float = 0.2,
        what: str = "condition",
    ) -> T:
        """Poll ``predicate`` until it returns something truthy (returned); else TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} not met within {timeout_s} s; {self.describe()}")
            time.sleep(interval_s)

    # ---------------------------------------------------------------- DICOMweb helpers
    def qido_studies(self, **query: str) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies`` with DICOM-keyword filters, e.g. ``StudyInstanceUID=...``."""
        return self._qido("studies", query)

    def qido_series(self, study_uid: str, **query: str) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies/{study}/series``."""
        return self._qido(f"studies/{study_uid}/series", query)

    def qido_instances(self, study_uid: str, series_uid: str, **query: str) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies/{study}/series/{series}/instances``."""
        return self._qido(f"studies/{study_uid}/series/{series_uid}/instances", query)

    def _qido(self, path: str, query: Mapping[str, str]) -> list[dict[str, Any]]:
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        body, _ = self.request(
            "GET", f"{DICOMWEB_ROOT}{path}{suffix}", headers={"Accept": "application/dicom+json"}
        )
        result: list[dict[str, Any]] = json.loads(body or b"[]")
        return result

    def wado_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """WADO-RS retrieve of one instance in its stored transfer syntax; the DICOM bytes."""
        body, headers = self.request(
            "GET",
            f"{DICOMWEB_ROOT}studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        parts = payloads(body, content_type)
        if len(parts) != 1:
            raise OrthancError(f"WADO-RS returned {len(parts)} parts, expected 1")
        return parts[0]


def dicom_json_value(item: Mapping[str, Any], tag: str) -> Any:
    """First value of ``tag`` (``"0020000D"``) in a DICOM JSON object, or None."""
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None
