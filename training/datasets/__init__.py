"""Readers for public chest CT datasets (MosMedData, COV19-CT-DB, labelled folders)."""
