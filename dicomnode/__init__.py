"""The chest-CT DICOM node: receiver, durable storage, job queue, worker, exporter, CLI.

This package never imports torch; it reaches the analysis through the processor interface in
``dicomnode.jobs.processing``.
"""

__version__ = "0.1.0"
