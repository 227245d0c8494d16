"""Read queries for the web app and the CLI, one module per subject.

Every function takes the caller's session (one per web request) and only reads. Nothing here
returns patient names: the tables hold none.

- ``views``: the frozen records the queries return (studies, series, jobs, results, exports,
  events).
- ``studies``: study lists, one study's detail and timeline.
- ``jobs``: job lists and one job with its result objects and exports.
- ``exports``: export rows, failed exports grouped by job and destination.
- ``counts``: totals and the figures behind /metrics.
- ``catalog``: the stored files the node serves over DICOMweb.
"""
