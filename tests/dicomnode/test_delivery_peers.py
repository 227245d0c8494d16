"""Delivery paths against real peers: STOW-RS and DICOM TLS to Orthanc, and a dcmtk storescp
that refuses SEG and Comprehensive 3D SR (the node sends the overlay series instead)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from dicomnode.config import Destination
from dicomnode.db.models import Event
from tests.peers.certificates import make_certificates
from tests.peers.dcmtk import StorescpPeer
from tests.peers.orthanc import DICOMWEB_ROOT, OrthancPeer

from .results_factory import add_results, deliver
from .test_delivery import exporter_for, states, wait_until

STUDY = "1.2.826.0.1.1"

# A dcmtk association profile for a PACS that stores images but neither SEG nor 3D SR.
LEGACY_PROFILE = """
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[Legacy]
PresentationContext1 = SecondaryCaptureImageStorage\\Uncompressed
PresentationContext2 = CTImageStorage\\Uncompressed
PresentationContext3 = VerificationSOPClass\\Uncompressed

[[Profiles]]
[Legacy]
PresentationContexts = Legacy
"""


@pytest.mark.slow
def test_stow_rs_to_orthanc_confirmed_by_qido(tmp_path, settings, sessions, storage,
                                              queued_job) -> None:
    with OrthancPeer(tmp_path / "orthanc", stop_grace_s=1.0) as orthanc:
        uids = add_results(sessions, storage.root, queued_job, ["SEG", "SR"] + ["OVERLAY"] * 3,
                           ["web"])
        url = orthanc.base_url + DICOMWEB_ROOT.rstrip("/")
        web = Destination("web", "-", "127.0.0.1", 0, type="stow", url=url)
        exporter = exporter_for(settings, sessions, storage, [web], confirm_after_s=0.0)
        assert exporter.run_once() == 2
        assert exporter.run_once() == 3
        wait_until(lambda: exporter.run_once() == 0 and
                   set(states(sessions, "web").values()) == {"committed"}, 10, "committed")
        held = {i.sop_instance_uid for i in orthanc.instances_of_study(STUDY)}
        assert held == set(uids)


@pytest.mark.slow
def test_tls_association_to_orthanc(tmp_path, settings, sessions, storage, queued_job) -> None:
    certs = make_certificates(tmp_path / "certs")
    tls = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(certs.server_cert),
        "DicomTlsPrivateKey": str(certs.server_key),
        "DicomTlsTrustedCertificates": str(certs.ca_cert),
        "DicomTlsRemoteCertificateRequired": True,
    }
    # Orthanc answers C-FIND (the read-back) only for AE titles it knows.
    node = {"node": ("CHESTCT", "127.0.0.1", settings.node.port)}
    with OrthancPeer(tmp_path / "orthanc", extra_config=tls, modalities=node,
                     stop_grace_s=1.0) as orthanc:
        uids = add_results(sessions, storage.root, queued_job, ["SEG", "OVERLAY"], ["tls", "plain"])
        secure = Destination("tls", orthanc.aet, orthanc.host, orthanc.dicom_port, tls=True,
                             tls_ca=certs.ca_cert, tls_cert=certs.server_cert,
                             tls_key=certs.server_key, confirm="query")
        plain = Destination("plain", orthanc.aet, orthanc.host, orthanc.dicom_port,
                            confirm="none")
        exporter = exporter_for(settings, sessions, storage, [secure, plain], max_attempts=1,
                                confirm_after_s=0.0)
        for _ in range(3):
            exporter.run_once()
        assert set(states(sessions, "tls").values()) == {"committed"}  # sent and read back
        assert set(states(sessions, "plain").values()) == {"failed"}  # Orthanc speaks only TLS
        assert {i.sop_instance_uid for i in orthanc.instances_of_study(STUDY)} == set(uids)


@pytest.mark.slow
def test_destination_refusing_seg_and_sr_gets_the_overlay(tmp_path, settings, sessions,
                                                          storage, queued_job) -> None:
    profile = tmp_path / "legacy.cfg"
    profile.write_text(LEGACY_PROFILE)
    peer = StorescpPeer(tmp_path / "received", aet="LEGACY",
                        profile=(profile, "Legacy"))
    with peer:
        # This destination asked for SEG and SR only; its overlay rows are made on refusal.
        add_results(sessions, storage.root, queued_job, ["SEG", "SR"], ["legacy"])
        add_results(sessions, storage.root, queued_job, ["OVERLAY", "OVERLAY"], [])
        legacy = Destination("legacy", "LEGACY", peer.host, peer.port, objects=("SEG", "SR"),
                             confirm="none")
        exporter = exporter_for(settings, sessions, storage, [legacy])
        assert exporter.run_once() == 0
        assert deliver(exporter, 2) == 2
        assert sorted(states(sessions, "legacy").values()) == [
            "refused", "refused", "sent", "sent"]
        assert len(peer.wait_for_files(2, 10)) == 2
        with sessions() as session:
            choices = session.scalars(select(Event.message)
                                      .where(Event.kind == "output-choice")).all()
        assert len(choices) == 2 and all("overlay" in m for m in choices)
    # The study page's result groups list each refused object with the reason.
    from dicomnode.db.queries.jobs import job_detail
    from dicomnode.web.resultgroups import group_results

    with sessions() as session:
        job = job_detail(session, queued_job)
    assert job is not None
    tallies = [d for g in group_results(job.results) for d in g.destinations if g.kind == "SEG"]
    assert tallies and dict(tallies[0].counts) == {"refused": 1}
    ((_obj, export),) = tallies[0].attention
    assert "not accepted" in export.last_error and "overlay series" in export.last_error
