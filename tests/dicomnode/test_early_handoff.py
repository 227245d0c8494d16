"""Early hand-off: the worker commits the SEG and SR export rows before the overlay is rendered.

The real worker, job queue and export log on the test's SQLite file; the real pipeline runner
(weight-free lungs on a phantom) with the real SEG, SR and overlay writers. The overlay writer
is wrapped by a probe that reads the database the moment rendering starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Destination
from dicomnode.contracts import ProcessOutcome, ProcessRequest, ResultFile
from dicomnode.db.exports import ExportLog
from dicomnode.db.models import Event, Export, ExportState, Job, JobState, ResultObject
from dicomnode.jobs.worker import Worker
from pipeline.runner import PipelineRunner
from pipeline.stages.lung_morphology import MorphologicalLungSegmenter
from pipeline.types import StudyResult
from pipeline.writers.overlay import SecondaryCaptureOverlay
from tests.pipeline.conftest import make_phantom


@dataclass
class Seen:
    """What the database held when the overlay writer was called."""

    job_state: str = ""
    exports: list[tuple[str, str, str]] = field(default_factory=list)  # kind, destination, state
    due_kinds: list[str] = field(default_factory=list)


class ProbeOverlay:
    """The real overlay writer, after a look at the job's rows; optionally a destination
    refuses the SEG at that moment (as a PACS without the SEG class does)."""

    def __init__(self, sessions: sessionmaker[Session], refuse_seg_for: str = "") -> None:
        self._sessions = sessions
        self._refuse = refuse_seg_for
        self.seen: Seen | None = None

    def write(self, result: StudyResult, out_dir: Path, uid_root: str) -> Sequence[ResultFile]:
        exports = ExportLog(self._sessions)
        with self._sessions() as session:
            rows = session.execute(
                select(ResultObject.kind, Export.destination, Export.state, Export.id)
                .join(Export, Export.result_object_id == ResultObject.id)
                .order_by(Export.id)
            ).all()
            job_state = session.scalars(select(Job.state)).one()
        self.seen = Seen(str(job_state), [(k, d, str(s)) for k, d, s, _ in rows],
                         [t.kind for t in exports.due()])
        for kind, destination, _, export_id in rows:
            if kind == "SEG" and destination == self._refuse:
                exports.refused(export_id, "SOP class not supported")
        return SecondaryCaptureOverlay().write(result, out_dir, uid_root)


class PhantomProcessor:
    """Analyses a small phantom (the job's files are header-only records) through the runner."""

    def __init__(self, overlay: ProbeOverlay) -> None:
        self._runner = PipelineRunner(MorphologicalLungSegmenter(), overlay=overlay)
        self._volume = make_phantom(shape=(16, 128, 128), spacing=(8.0, 1.5, 1.5)).volume

    def process(self, request: ProcessRequest) -> ProcessOutcome:
        result = self._runner.run(self._volume)
        written = self._runner.write_results(result, request.out_dir, request.uid_root,
                                             handoff=request.handoff)
        return ProcessOutcome(tuple(written), {"objects": len(written)})


def _run(settings, sessions, storage, destinations, refuse: str = "") -> ProbeOverlay:
    probe = ProbeOverlay(sessions, refuse)
    s = replace(settings, destinations=destinations)
    assert Worker(s, sessions, storage, PhantomProcessor(probe), owner="t:1").run_once()
    return probe


def test_seg_and_sr_exports_are_committed_before_the_overlay_is_rendered(
    settings, sessions, storage, queued_job
) -> None:
    assert settings.database_url.startswith("sqlite:///")  # a real SQLite file
    probe = _run(settings, sessions, storage, (Destination("pacs", "P", "127.0.0.1", 1),))
    seen = probe.seen
    assert seen is not None and seen.job_state == JobState.RUNNING
    assert sorted(k for k, _, _ in seen.exports) == ["SEG", "SR"]
    assert {(d, s) for _, d, s in seen.exports} == {("pacs", ExportState.PENDING)}
    assert sorted(seen.due_kinds) == ["SEG", "SR"]  # the exporter can send them right now
    with sessions() as session:
        job = session.get_one(Job, queued_job)
        assert job.state == JobState.DONE
        kinds = [o.kind for o in session.scalars(select(ResultObject).order_by(ResultObject.id))]
        assert kinds[:2] == ["SEG", "SR"] and set(kinds[2:]) == {"OVERLAY"} and len(kinds) > 10
        assert session.scalar(select(Export.id).where(Export.state != ExportState.PENDING)) is None
        assert len(session.scalars(select(Export)).all()) == len(kinds)
        events = [e.kind for e in session.scalars(select(Event).order_by(Event.id))]
    assert events.index("results-handed-off") < events.index("job-done")
    # The exporter's order guarantee still holds: structured results before the overlay.
    assert [t.kind for t in ExportLog(sessions).due(limit=2)] in (["SEG", "SR"], ["SR", "SEG"])


def test_a_seg_refused_during_rendering_sends_the_overlay_instead(
    settings, sessions, storage, queued_job
) -> None:
    """A destination that takes no overlay but refused the SEG gets the overlay series, even
    though the refusal came before the overlay objects existed."""
    structured_only = Destination("vna", "V", "127.0.0.1", 1, objects=("SEG", "SR"))
    _run(settings, sessions, storage, (structured_only,), refuse="vna")
    with sessions() as session:
        rows = session.execute(
            select(ResultObject.kind, Export.state)
            .join(Export, Export.result_object_id == ResultObject.id)
        ).all()
    by_kind = {(k, str(s)) for k, s in rows}
    assert ("SEG", ExportState.REFUSED) in by_kind and ("SR", ExportState.PENDING) in by_kind
    assert ("OVERLAY", ExportState.PENDING) in by_kind
