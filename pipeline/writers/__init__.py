"""DICOM result objects of a study result, all built with highdicom.

``seg``: the Segmentation (lungs and lesions, non-overlapping segments); ``sr``: the TID 1500
Comprehensive 3D SR referencing the SEG's segments; ``codes``: every coded concept both use;
``uids``: deterministic UIDs derived from a job's ``uid_root``; ``overlay``: burned-in
Secondary Capture images for viewers without SEG support.
"""
