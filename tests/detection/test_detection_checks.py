"""Data-quality checks of a detection dataset: each bad input is reported with its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.detection import steps
from modelyard.detection.checks import LabelProblems, check_label_text
from modelyard.errors import QualityError


@pytest.fixture
def split_dataset(factory, tmp_path, volume) -> Path:
    archive, classes = factory.make_archive(tmp_path)
    out = steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    steps.split(volume=str(volume))
    return Path(out["dataset_dir"])


def _a_label(dataset_dir: Path, part: str = "train") -> Path:
    return next(p for p in sorted((dataset_dir / "labels" / part).iterdir()) if p.read_text().strip())


def test_clean_dataset_passes(split_dataset, volume):
    out = steps.check(volume=str(volume))
    assert out["n_images"] == 24 and out["n_boxes"] > 24 and out["n_background"] == 1
    report = json.loads((split_dataset / "quality.json").read_text())
    assert report["passed"] and report["counts"]["n_train"] == 18


def test_class_id_out_of_range(split_dataset, volume):
    label = _a_label(split_dataset)
    label.write_text(label.read_text() + "7 0.5 0.5 0.2 0.2\n")
    n = len(label.read_text().splitlines())
    with pytest.raises(QualityError) as info:
        steps.check(volume=str(volume))
    text = str(info.value)
    assert f"labels/train/{label.name}:{n}: class id 7 (valid: 0..1)" in text
    failed = {c.name for c in info.value.report.failures}
    assert failed == {"class ids within the class list"}


def test_coordinate_outside_unit_interval(split_dataset, volume):
    label = _a_label(split_dataset, "val")
    label.write_text("0 1.7 0.5 0.2 0.2\n" + label.read_text())
    with pytest.raises(QualityError) as info:
        steps.check(volume=str(volume))
    assert f"labels/val/{label.name}:1: x_center 1.7 outside [0, 1]" in str(info.value)
    assert {c.name for c in info.value.report.failures} == {"coordinates within [0, 1]"}


def test_every_failure_is_in_quality_json_and_five_are_printed(split_dataset, volume):
    labels = sorted(p for p in (split_dataset / "labels" / "train").iterdir() if p.read_text().strip())[:8]
    for label in labels:
        label.write_text("0 0.5 0.5 0.2 9.0\n")
    with pytest.raises(QualityError) as info:
        steps.check(volume=str(volume))
    text = " ".join(str(info.value).split())
    assert "coordinates within [0, 1]: 8 failing" in text and "3 more listed in the JSON report" in text
    check = next(c for c in json.loads((split_dataset / "quality.json").read_text())["checks"] if c["name"] == "coordinates within [0, 1]")
    assert check["n_failed"] == 8 and sorted(check["examples"]) == sorted(f"labels/train/{p.name}:1: height 9.0 outside [0, 1]" for p in labels)


def test_image_without_label(split_dataset, volume):
    label = _a_label(split_dataset, "test")
    label.unlink()
    with pytest.raises(QualityError) as info:
        steps.check(volume=str(volume))
    assert f"images/test/{label.stem}" in str(info.value)
    assert {c.name for c in info.value.report.failures} == {"every image has a label file"}


def test_malformed_line_and_unreadable_image(split_dataset, volume):
    label = _a_label(split_dataset)
    label.write_text("0 0.5 0.5 0.2\n")
    image = next((split_dataset / "images" / "val").iterdir())
    image.write_bytes(b"not an image")
    with pytest.raises(QualityError) as info:
        steps.check(volume=str(volume))
    text = str(info.value)
    assert f"labels/train/{label.name}:1:" in text and "expected 5 numbers" in text
    assert f"images/val/{image.name}" in text
    assert {c.name for c in info.value.report.failures} == {"label lines have 5 numbers", "images readable"}


def test_label_parser():
    out = LabelProblems()
    check_label_text("0 0.5 0.5 0.1 0.1\n\n1 0 1 1 0\n1.0 0.2 0.2 0.1 0.1\n0.5 0.2 0.2 0.1 0.1\n0 nan 0.2 0.1 0.1\n-1 0.2 0.2 0.1 0.1\n", "f.txt", 2, out)
    assert out.n_boxes == 3
    assert out.bad_class == ["f.txt:5: class id 0.5 (valid: 0..1)", "f.txt:7: class id -1 (valid: 0..1)"]
    assert out.malformed and out.malformed[0].startswith("f.txt:6:")
