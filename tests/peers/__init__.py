"""The real-peer test harness: Orthanc as the PACS, dcmtk as sender and receiver, dicom3tools
as the conformance gate, and the real COVID-CT-MD studies made sendable.

Modules: ``ports`` (free loopback ports), ``processes`` (finding and stopping peer
executables), ``orthanc`` (:class:`~tests.peers.orthanc.OrthancPeer`), ``dcmtk`` (``storescu``,
``echoscu``, :class:`~tests.peers.dcmtk.StorescpPeer`, transcoding), ``dicom3tools``
(``dciodvfy``/``dcentvfy``), ``studies`` (UID rewrite, recompression, large series).
"""
