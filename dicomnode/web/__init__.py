"""The node's web app: operators' pages, JSON API, /healthz, /metrics, DICOMweb and the OHIF
viewer. ``dicomnode.web.app.create_app`` builds it; ``dicomnode.web.server`` runs it in
``dicomnode serve`` when ``[web] enabled = true``. Imported only then: the receiver does not
need FastAPI to run."""
