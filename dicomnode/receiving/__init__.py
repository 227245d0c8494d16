"""Receiving studies: the DICOM listener, its handlers, durable spool storage, start-up recovery."""
