"""Series choice from header values: every rejected series gets a reason."""

from __future__ import annotations

from dicomnode.config import SelectionSettings
from dicomnode.jobs.selection import (
    CT_IMAGE_STORAGE,
    InstanceGeometry,
    SeriesCandidate,
    choose_series,
)

RULES = SelectionSettings(min_slices=10)


def geometry(n: int, spacing: float = 2.0, *, normal_z: bool = True, start: int = 1,
             thickness: float | None = None, image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
             gaps: dict[int, float] | None = None) -> tuple[InstanceGeometry, ...]:
    out = []
    z = 0.0
    for i in range(n):
        z -= (gaps or {}).get(i, spacing) if i else 0.0
        orientation = "1\\0\\0\\0\\1\\0" if normal_z else "1\\0\\0\\0\\0\\-1"
        position = f"-100\\-100\\{z}" if normal_z else f"-100\\{z}\\100"
        out.append(InstanceGeometry(
            CT_IMAGE_STORAGE, start + i, image_type, 512, 512, position, orientation,
            "0.7\\0.7", thickness if thickness is not None else spacing,
        ))
    return tuple(out)


def cand(uid: str, insts: tuple[InstanceGeometry, ...], modality: str = "CT",
         description: str = "Chest") -> SeriesCandidate:
    return SeriesCandidate(uid, modality, description, insts)


def test_prefers_full_coverage_then_thin_slices() -> None:
    thick = cand("1.1", geometry(60, 5.0))  # 300 mm
    thin_full = cand("1.2", geometry(250, 1.25))  # 312 mm
    thin_partial = cand("1.3", geometry(100, 1.0))  # 100 mm
    sel = choose_series([thick, thin_partial, thin_full], RULES)
    assert sel.chosen is not None and sel.chosen.series_instance_uid == "1.2"
    reasons = {s.series_instance_uid: s.reason for s in sel.skipped}
    assert set(reasons) == {"1.1", "1.3"}
    assert all("another series preferred" in r for r in reasons.values())


def test_every_kind_of_unusable_series_is_named() -> None:
    candidates = [
        cand("2.1", geometry(3), description="Topogram"),
        cand("2.2", geometry(60, image_type="ORIGINAL\\PRIMARY\\LOCALIZER"), description="x"),
        cand("2.3", geometry(5)),
        cand("2.4", geometry(60, normal_z=False)),
        cand("2.5", geometry(60, gaps={30: 6.0})),
        cand("2.6", geometry(60) + geometry(60, start=61)),  # two phases in one series
        cand("2.7", geometry(60), modality="SR"),
        cand("2.8", geometry(60, 8.0)),
        cand("2.9", geometry(60), description="Dose Report"),
    ]
    sel = choose_series(candidates, RULES)
    assert sel.chosen is None
    reasons = {s.series_instance_uid: s.reason for s in sel.skipped}
    assert "topogram" in reasons["2.1"]
    assert "localizer" in reasons["2.2"].lower()
    assert "too few slices" in reasons["2.3"]
    assert "not axial" in reasons["2.4"]
    assert "2 slice(s) missing" in reasons["2.5"]
    assert "duplicate slice positions" in reasons["2.6"]
    assert "not a CT series" in reasons["2.7"]
    assert "too thick" in reasons["2.8"]
    assert "dose" in reasons["2.9"]


def test_missing_instance_numbers_are_reported() -> None:
    insts = geometry(60)
    holes = tuple(i for i in insts if i.instance_number not in (10, 11))
    # keep positions consistent: drop two numbers but recompute a regular geometry
    regular = geometry(58)
    renumbered = tuple(
        InstanceGeometry(g.sop_class_uid, h.instance_number, g.image_type, g.rows, g.columns,
                         g.image_position, g.image_orientation, g.pixel_spacing,
                         g.slice_thickness)
        for g, h in zip(regular, holes, strict=True)
    )
    sel = choose_series([cand("3.1", renumbered)], RULES)
    assert sel.chosen is not None
    assert sel.chosen.missing_instance_numbers == (10, 11)


def test_one_repeated_position_is_dropped_not_refused() -> None:
    sel = choose_series([cand("4.1", geometry(60, gaps={30: 0.0}))], RULES)
    assert sel.chosen is not None and sel.chosen.reason.startswith("59 axial slices")
