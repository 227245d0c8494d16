"""Typed settings, loaded once: embedded defaults -> TOML file -> environment -> CLI.

Every key is documented in ``config/node.toml``. Environment variables override the file:
``DICOMNODE_<SECTION>_<KEY>`` (for example ``DICOMNODE_NODE_PORT=11113``); list values are
comma-separated. Destinations come from the file or from ``DICOMNODE_DESTINATIONS`` as
``name=AET@host:port[;objects=SEG+SR+OVERLAY],...``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dicomnode.errors import ConfigError

ENV_PREFIX = "DICOMNODE_"
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash
RESULT_KINDS = ("SEG", "SR", "OVERLAY")


@dataclass(frozen=True)
class NodeSettings:
    """The receiver: who we are, where we listen, who may talk to us, where data lives."""

    ae_title: str = "CHESTCT"
    host: str = "0.0.0.0"
    port: int = 11112
    data_dir: Path = Path("./data")
    database_url: str = ""  # empty: SQLite file <data_dir>/dicomnode.sqlite
    allowed_calling_aets: tuple[str, ...] = ()  # empty: any calling AE may associate
    require_called_aet: bool = True
    quiet_period_s: float = 30.0
    max_wait_for_missing_s: float = 300.0
    expected_counts_after_s: float = 2.0  # idle time before a [[sources]] PACS is asked for counts
    workers: int = 1
    max_associations: int = 16
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    maximum_pdu_size: int = 0  # 0: 4 MiB (receiving.scp.DEFAULT_MAX_PDU_BYTES)
    min_free_disk_mb: int = 512
    fsync: bool = True
    fsync_directories: bool = False  # also fsync folders: durable on non-journaling filesystems
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # when set, clients must present a certificate signed by it
    log_level: str = "INFO"
    # Receiver limits (issue 9): bounded input, no stalls.
    max_instance_mb: int = 1024  # largest data set accepted (inflated size for deflate)
    association_request_timeout_s: float = 5.0  # TLS handshake + A-ASSOCIATE-RQ must arrive by then
    max_associations_per_peer: int = 8  # established associations from one address
    max_pending_connections: int = 64  # connections still negotiating; more are closed at once
    receiver_processes: int = 1  # processes listening on the DICOM port (receiving.processes)


@dataclass(frozen=True)
class SelectionSettings:
    """Which series of a study is analysed."""

    min_slices: int = 40
    max_slice_thickness_mm: float = 5.0
    spacing_tolerance: float = 0.1  # relative deviation of slice gaps allowed
    exclude_description_words: tuple[str, ...] = (
        "scout", "localizer", "topogram", "surview", "mip", "mpr", "dose", "report",
    )


@dataclass(frozen=True)
class WorkerSettings:
    """Job leases and retries."""

    lease_s: float = 120.0
    heartbeat_s: float = 10.0
    poll_interval_s: float = 0.5
    max_attempts: int = 3
    # A failed attempt is retried after backoff_initial_s * backoff_factor ** (attempt - 1),
    # at most backoff_max_s (a full disk or a busy GPU gets time to recover).
    backoff_initial_s: float = 30.0
    backoff_factor: float = 4.0
    backoff_max_s: float = 1800.0


@dataclass(frozen=True)
class ExportSettings:
    """Delivery of result objects to the destinations."""

    max_attempts: int = 8
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 600.0
    poll_interval_s: float = 0.5
    dimse_timeout_s: float = 30.0
    calling_ae_title: str = ""  # empty: the node's own AE title
    instances_per_association: int = 200  # objects sent before an association is renewed
    confirm_after_s: float = 1.0  # delay between sending and asking the PACS to confirm
    commitment_timeout_s: float = 30.0  # wait for N-EVENT-REPORT, then read back by query
    max_confirm_attempts: int = 5  # confirmations that cannot be had before 'failed'
    verify_interval_s: float = 3600.0  # committed objects are checked again this often (0: never)
    verify_for_s: float = 86400.0  # ... for this long after they were committed


@dataclass(frozen=True)
class PipelineSettings:
    """The processor the worker runs and the options it receives."""

    processor: str = "pipeline.processor:ChestCTProcessor"
    classifier: str = "decovnet"  # "decovnet", "cnn-bert" or "none"
    lung_segmentation: str = "unet"  # "unet" or "morphological"
    localize_lesions: bool = True
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    threads: int = 0  # torch intra-op threads; 0: library default
    overlay: bool = True
    # A registry model ("NAME@VERSION") run beside the primary classifier on every job; its
    # answer is stored in the job's summary, shown to operators, never exported. Empty: none.
    shadow_classifier: str = ""
    # Writes a radiologist's verdict as a Comprehensive 3D SR (reached by name, like processor).
    verdict_writer: str = "pipeline.writers.verdict_sr:write_verdict_file"


@dataclass(frozen=True)
class WebSettings:
    """The operators' web app and DICOMweb endpoints (started by ``dicomnode serve``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    auth: str = "token"  # "users", "token", "basic" or "none"
    token: str = ""
    username: str = ""
    password: str = ""
    ohif_dir: Path = Path("vendor/ohif/dist")  # prebuilt OHIF viewer, fetched by deploy/setup
    dicomweb: str = "local"  # "local": the node's own QIDO/WADO-RS; "proxy": pass to pacs_url
    pacs_dicomweb_url: str = ""  # e.g. http://pacs:8042/dicom-web (used when dicomweb = proxy)
    # How clients reach this web app (e.g. https://node.example.org): the root of every URL the
    # node writes into its answers (WADO RetrieveURL). Empty: http://<host>:<port>.
    base_url: str = ""


@dataclass(frozen=True)
class Destination:
    """A peer that receives result objects: by C-STORE (type "dicom") or STOW-RS ("stow")."""

    name: str
    ae_title: str
    host: str
    port: int
    objects: tuple[str, ...] = RESULT_KINDS
    type: str = "dicom"  # "dicom" (C-STORE) or "stow" (STOW-RS to url)
    url: str = ""  # stow: the DICOMweb root, e.g. http://pacs:8042/dicom-web
    max_associations: int = 2  # parallel associations (stow: parallel requests)
    tls: bool = False  # DICOM TLS for outgoing associations
    tls_cert: Path | None = None  # our client certificate, when the peer asks for one
    tls_key: Path | None = None
    tls_ca: Path | None = None  # CA that signed the peer's certificate; None: system CAs
    confirm: str = "auto"  # "auto", "commitment", "query" or "none" (see config/node.toml)


@dataclass(frozen=True)
class Source:
    """A PACS that sends studies to the node: its calling AE title and its query SCP."""

    name: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    web: WebSettings = field(default_factory=WebSettings)
    destinations: tuple[Destination, ...] = ()
    sources: tuple[Source, ...] = ()

    @property
    def database_url(self) -> str:
        if self.node.database_url:
            return self.node.database_url
        return f"sqlite:///{(self.node.data_dir / 'dicomnode.sqlite').resolve()}"

    @property
    def calling_ae_title(self) -> str:
        return self.export.calling_ae_title or self.node.ae_title


_SECTIONS: dict[str, type] = {
    "node": NodeSettings,
    "selection": SelectionSettings,
    "worker": WorkerSettings,
    "export": ExportSettings,
    "pipeline": PipelineSettings,
    "web": WebSettings,
}


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    text_type = str(annotation)
    try:
        if text_type in ("bool",):
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if text_type == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if text_type == "float":
            return float(value)
        if text_type == "str":
            return str(value)
        if text_type == "Path":
            return Path(value)
        if text_type == "Path | None":
            return Path(value) if value not in (None, "") else None
        if text_type.startswith("tuple[str"):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot read {value!r} as {text_type}") from exc
    raise ConfigError(f"{name}: unsupported setting type {text_type}")


def _build_section(section: str, cls: type, raw: Mapping[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"unknown setting [{section}] {key}")
        values[key] = _coerce(f"[{section}] {key}", known[key].type, value)
    prefix = f"{ENV_PREFIX}{section.upper()}_"
    for env_key, env_value in os.environ.items():
        if env_key.startswith(prefix):
            key = env_key[len(prefix):].lower()
            if key not in known:
                raise ConfigError(f"unknown setting in environment: {env_key}")
            values[key] = _coerce(env_key, known[key].type, env_value)
    return cls(**values)


_DEST_RE = re.compile(
    r"^(?P<name>[\w.-]+)=(?P<aet>[^@]+)@(?P<host>[^:;]+):(?P<port>\d+)(?:;objects=(?P<obj>[A-Z+]+))?$"
)


def _parse_destinations(raw: Any) -> tuple[Destination, ...]:
    env = os.environ.get(f"{ENV_PREFIX}DESTINATIONS")
    items: list[dict[str, Any]] = []
    if env is not None:
        for part in filter(None, (p.strip() for p in env.split(","))):
            m = _DEST_RE.match(part)
            if not m:
                raise ConfigError(f"{ENV_PREFIX}DESTINATIONS: cannot read {part!r}")
            item: dict[str, Any] = {
                "name": m["name"], "ae_title": m["aet"], "host": m["host"], "port": m["port"],
            }
            if m["obj"]:
                item["objects"] = m["obj"].split("+")
            items.append(item)
    else:
        items = list(raw or [])
    result = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ConfigError("[[destinations]] entries must be tables")
        missing = {"name", "ae_title", "host", "port"} - set(item)
        if missing:
            raise ConfigError(f"[[destinations]] entry lacks {sorted(missing)}")
        objects = tuple(str(o).upper() for o in item.get("objects", RESULT_KINDS))
        bad = set(objects) - set(RESULT_KINDS)
        if bad:
            raise ConfigError(f"destination {item['name']}: unknown objects {sorted(bad)}")
        dest = Destination(
            name=str(item["name"]),
            ae_title=str(item["ae_title"]),
            host=str(item["host"]),
            port=int(item["port"]),
            objects=objects,
            **_destination_options(str(item["name"]), item),
        )
        _check_ae(f"destination {dest.name} ae_title", dest.ae_title)
        result.append(dest)
    names = [d.name for d in result]
    if len(names) != len(set(names)):
        raise ConfigError("destination names must be unique")
    return tuple(result)


_DEST_OPTIONS = {f.name: f for f in fields(Destination)}
_DEST_FIXED = {"name", "ae_title", "host", "port", "objects"}


def _destination_options(name: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """The optional keys of a [[destinations]] table, typed and checked."""
    unknown = set(item) - set(_DEST_OPTIONS)
    if unknown:
        raise ConfigError(f"destination {name}: unknown key(s) {sorted(unknown)}")
    options = {
        key: _coerce(f"destination {name} {key}", _DEST_OPTIONS[key].type, value)
        for key, value in item.items() if key not in _DEST_FIXED
    }
    kind = options.get("type", "dicom")
    if kind not in ("dicom", "stow"):
        raise ConfigError(f"destination {name}: type must be 'dicom' or 'stow'")
    if kind == "stow" and not str(options.get("url", "")).startswith(("http://", "https://")):
        raise ConfigError(f"destination {name}: type 'stow' needs url = 'http(s)://...'")
    if options.get("confirm", "auto") not in ("auto", "commitment", "query", "none"):
        raise ConfigError(f"destination {name}: confirm must be auto, commitment, query or none")
    if not 1 <= options.get("max_associations", 1) <= 16:
        raise ConfigError(f"destination {name}: max_associations must be 1-16")
    if (options.get("tls_cert") is None) != (options.get("tls_key") is None):
        raise ConfigError(f"destination {name}: tls_cert and tls_key must be given together")
    return options


def _parse_sources(raw: Any) -> tuple[Source, ...]:
    result = []
    for item in raw or []:
        if not isinstance(item, Mapping):
            raise ConfigError("[[sources]] entries must be tables")
        missing = {"name", "ae_title", "host", "port"} - set(item)
        if missing or set(item) - {"name", "ae_title", "host", "port"}:
            raise ConfigError("[[sources]] entry needs exactly name, ae_title, host, port")
        source = Source(str(item["name"]), str(item["ae_title"]), str(item["host"]),
                        _coerce(f"source {item['name']} port", "int", item["port"]))
        _check_ae(f"source {source.name} ae_title", source.ae_title)
        result.append(source)
    if len({s.ae_title for s in result}) != len(result):
        raise ConfigError("[[sources]] AE titles must be unique")
    return tuple(result)


def _check_ae(what: str, value: str) -> None:
    if not AE_TITLE_RE.match(value) or not value.strip():
        raise ConfigError(f"{what}: {value!r} is not a valid AE title (1-16 characters)")


def load_settings(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read settings from ``path`` (optional), the environment and ``overrides``.

    ``overrides`` maps ``"section.key"`` to a value, for command-line options.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    unknown = set(raw) - set(_SECTIONS) - {"destinations", "sources"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}")
    merged: dict[str, dict[str, Any]] = {s: dict(raw.get(s, {})) for s in _SECTIONS}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in merged or not key:
            raise ConfigError(f"bad override {dotted!r}")
        merged[section][key] = value
    sections = {name: _build_section(name, cls, merged[name]) for name, cls in _SECTIONS.items()}
    settings = Settings(destinations=_parse_destinations(raw.get("destinations")),
                        sources=_parse_sources(raw.get("sources")), **sections)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    _check_ae("[node] ae_title", s.node.ae_title)
    for aet in s.node.allowed_calling_aets:
        _check_ae("[node] allowed_calling_aets", aet)
    if not 0 < s.node.port < 65536:
        raise ConfigError(f"[node] port {s.node.port} out of range")
    if s.node.workers < 0:
        raise ConfigError("[node] workers must be >= 0")
    if s.node.quiet_period_s <= 0:
        raise ConfigError("[node] quiet_period_s must be > 0")
    if not 1 <= s.node.receiver_processes <= 64:
        raise ConfigError("[node] receiver_processes must be 1-64")
    if s.node.max_instance_mb < 1 or s.node.max_associations_per_peer < 1:
        raise ConfigError("[node] max_instance_mb and max_associations_per_peer must be >= 1")
    if s.node.association_request_timeout_s <= 0 or s.node.max_pending_connections < 1:
        raise ConfigError("[node] association_request_timeout_s and max_pending_connections "
                          "must be > 0")
    if (s.node.tls_cert is None) != (s.node.tls_key is None):
        raise ConfigError("[node] tls_cert and tls_key must be given together")
    if s.pipeline.classifier not in ("decovnet", "cnn-bert", "none"):
        raise ConfigError("[pipeline] classifier must be 'decovnet', 'cnn-bert' or 'none'")
    if s.pipeline.lung_segmentation not in ("unet", "morphological"):
        raise ConfigError("[pipeline] lung_segmentation must be 'unet' or 'morphological'")
    if s.web.auth not in ("users", "token", "basic", "none"):
        raise ConfigError("[web] auth must be 'users', 'token', 'basic' or 'none'")
    if s.web.base_url and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", s.web.base_url):
        raise ConfigError("[web] base_url must look like https://host[:port][/path]")
    if s.web.dicomweb not in ("local", "proxy"):
        raise ConfigError("[web] dicomweb must be 'local' or 'proxy'")
    if s.web.dicomweb == "proxy" and not s.web.pacs_dicomweb_url:
        raise ConfigError("[web] dicomweb = 'proxy' needs pacs_dicomweb_url")
    if s.worker.backoff_initial_s < 0 or s.worker.backoff_factor < 1:
        raise ConfigError("[worker] backoff_initial_s must be >= 0 and backoff_factor >= 1")
    if s.pipeline.shadow_classifier and not re.match(
        r"^[\w.+-]+@[\w.+-]+$", s.pipeline.shadow_classifier
    ):
        raise ConfigError("[pipeline] shadow_classifier must be NAME@VERSION of a registry model")
    if s.worker.lease_s <= s.worker.heartbeat_s:
        raise ConfigError("[worker] lease_s must be longer than heartbeat_s")


def pipeline_options(s: Settings) -> dict[str, Any]:
    """The settings handed to the processor factory (plain values only)."""
    return dataclasses.asdict(s.pipeline)
