"""Data-quality checks of a YOLO detection dataset in the volume (no ultralytics needed).

Every image needs a label file (an empty one marks a background image); every label line is
``class x_center y_center width height``: 5 numbers, an integer class id within the class list,
coordinates normalised to [0, 1]; every image opens and verifies with PIL. Failures name the file
and the line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.detection.data import CLASSES_FILE, SPLITS, iter_images, parse_class_names
from modelyard.quality import QualityReport

COORDS = ("x_center", "y_center", "width", "height")


@dataclass
class LabelProblems:
    malformed: list[str] = field(default_factory=list)
    bad_class: list[str] = field(default_factory=list)
    bad_coord: list[str] = field(default_factory=list)
    n_boxes: int = 0
    per_class: dict[int, int] = field(default_factory=dict)


def check_label_text(text: str, where: str, n_classes: int, out: LabelProblems) -> None:
    """Check one label file's text; problems are appended to `out` as `where:line: ...` strings."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            values = None
        if values is None or len(values) != 5 or not all(math.isfinite(v) for v in values):
            out.malformed.append(f"{where}:{lineno}: {line.strip()[:60]!r} (expected 5 numbers: class x_center y_center width height)")
            continue
        cls = values[0]
        ok = True
        if cls != int(cls) or not 0 <= int(cls) < n_classes:
            out.bad_class.append(f"{where}:{lineno}: class id {tokens[0]} (valid: 0..{n_classes - 1})")
            ok = False
        bad = [f"{name} {tok}" for name, tok, v in zip(COORDS, tokens[1:], values[1:]) if not 0.0 <= v <= 1.0]
        if bad:
            out.bad_coord.append(f"{where}:{lineno}: {', '.join(bad)} outside [0, 1]")
            ok = False
        if ok:
            out.n_boxes += 1
            out.per_class[int(cls)] = out.per_class.get(int(cls), 0) + 1


def image_problem(path: Path) -> str | None:
    """None when PIL can open and verify the image, else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except ImportError:
        # Once ultralytics is imported, Image.open retries an unidentified file with the optional HEIF
        # plugin and raises ImportError when that is not installed: the file is still not an image.
        return "UnidentifiedImageError: not an image format PIL can read"
    except Exception as e:  # PIL raises many types for a broken file
        return f"{type(e).__name__}: {e}"


def check_dataset(dataset_dir: str | Path) -> tuple[QualityReport, dict]:
    """Run every check; returns the report and counts (n_images, n_boxes, per split, per class)."""
    dataset_dir = Path(dataset_dir)
    names = parse_class_names(dataset_dir / CLASSES_FILE)
    report = QualityReport(f"detection dataset {dataset_dir.name}")
    problems = LabelProblems()
    missing_label, unreadable = [], []
    per_split = {part: 0 for part in ("", *SPLITS)}
    label_files = set()
    n_images = n_background = 0
    for part, image, label in iter_images(dataset_dir):
        n_images += 1
        per_split[part] = per_split.get(part, 0) + 1
        rel_image = image.relative_to(dataset_dir).as_posix()
        reason = image_problem(image)
        if reason:
            unreadable.append(f"{rel_image}: {reason}")
        if not label.is_file():
            missing_label.append(f"{rel_image} (no {label.relative_to(dataset_dir).as_posix()})")
            continue
        label_files.add(label.resolve())
        before = problems.n_boxes
        try:
            text = label.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            problems.malformed.append(f"{label.relative_to(dataset_dir).as_posix()}: unreadable ({e})")
            continue
        check_label_text(text, label.relative_to(dataset_dir).as_posix(), len(names), problems)
        n_background += problems.n_boxes == before and not text.strip()
    orphans = sorted(p.relative_to(dataset_dir).as_posix() for p in (dataset_dir / "labels").rglob("*.txt") if p.resolve() not in label_files)

    report.add("dataset has images", 0 if n_images else 1, [] if n_images else [f"{dataset_dir / 'images'} is empty"])
    report.add("every image has a label file", len(missing_label), missing_label, detail="an empty label file marks a background image")
    report.add("label lines have 5 numbers", len(problems.malformed), problems.malformed)
    report.add("class ids within the class list", len(problems.bad_class), problems.bad_class, detail=f"{len(names)} classes: {', '.join(names)}")
    report.add("coordinates within [0, 1]", len(problems.bad_coord), problems.bad_coord)
    report.add("images readable", len(unreadable), unreadable)
    report.add("every label file has an image", len(orphans), orphans, severity="warning")
    if per_split[""] and not any(per_split[p] for p in SPLITS):
        report.add("dataset is split", 1, ["images/ is not split into train/val/test yet"], severity="warning")
    elif any(per_split[p] for p in SPLITS):
        empty = [f"images/{p} is empty" for p in ("train", "val") if not per_split[p]]
        if per_split[""]:
            empty.append(f"{per_split['']} image(s) directly in images/, outside the split folders")
        report.add("train and val splits are not empty", len(empty), empty)
    counts = {
        "n_images": n_images,
        "n_boxes": problems.n_boxes,
        "n_background": int(n_background),
        **{f"n_{p}": per_split[p] for p in SPLITS},
        "boxes_per_class": {names[c] if c < len(names) else str(c): n for c, n in sorted(problems.per_class.items())},
    }
    return report, counts
