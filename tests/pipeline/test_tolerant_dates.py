"""A copied date the analysis does not read, when malformed, is emptied and never logged."""

from __future__ import annotations

import logging

from pydicom import Dataset

from pipeline.series import _blank_malformed_dates


def test_malformed_dates_are_emptied_by_name_only(caplog) -> None:
    ds = Dataset()
    ds.add_new(0x00100030, "DA", "QXZJBADD")  # PatientBirthDate
    ds.add_new(0x00080020, "DA", "20200315")  # StudyDate, valid
    ds.add_new(0x00080030, "TM", "25:99:99")  # StudyTime, out of range
    caplog.clear()  # pydicom's own warning about the test's assignment above
    with caplog.at_level(logging.WARNING):
        _blank_malformed_dates(ds)
    assert ds.PatientBirthDate == "" and ds.StudyTime == "" and ds.StudyDate == "20200315"
    assert "PatientBirthDate" in caplog.text and "StudyTime" in caplog.text
    assert "QXZJ" not in caplog.text and "25:99" not in caplog.text
