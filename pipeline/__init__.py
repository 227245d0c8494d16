"""Chest-CT analysis: DICOM series to CT volume, lung masks, classification, lesions, DICOM results.

This package knows nothing of networking or the job database; the node reaches it through the
processor named in its configuration (``pipeline.processor:ChestCTProcessor``).
"""

__version__ = "0.1.0"
