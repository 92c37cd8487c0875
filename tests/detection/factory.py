"""Generated YOLO detection data for the tests: coloured shapes on plain backgrounds with known boxes.

Class 0 "box" is a filled rectangle, class 1 "disc" a filled circle. Everything is deterministic (seeded).
"""

from __future__ import annotations

import io
import random
import tarfile
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ["box", "disc"]
_BACKGROUNDS = [(235, 235, 235), (200, 220, 240), (240, 230, 200), (220, 240, 220)]
_COLOURS = {0: (200, 30, 30), 1: (30, 60, 200)}


def make_image(rng: random.Random, size: int = 64, max_objects: int = 2) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    """An image and its YOLO boxes (class, x_center, y_center, width, height, all normalised)."""
    im = Image.new("RGB", (size, size), rng.choice(_BACKGROUNDS))
    draw = ImageDraw.Draw(im)
    boxes = []
    for _ in range(rng.randint(1, max_objects)):
        cls = rng.randint(0, 1)
        w, h = rng.randint(size // 4, size // 2), rng.randint(size // 4, size // 2)
        if cls == 1:
            h = w
        x0, y0 = rng.randint(0, size - w - 1), rng.randint(0, size - h - 1)
        if cls == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=_COLOURS[0])
        else:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=_COLOURS[1])
        boxes.append((cls, (x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size))
    return im, boxes


def label_text(boxes) -> str:
    return "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in boxes)


def make_dataset(root: str | Path, n: int = 24, size: int = 64, prefix: str = "bccd", seed: int = 0,
                 classes: str = "txt", n_background: int = 1) -> Path:
    """Write `<root>/<prefix>/images/*.{png,jpg}` and `<root>/<prefix>/labels/*.txt`; returns the root.

    classes: "txt" writes `<root>/classes.txt`, "yaml" writes `<root>/<prefix>/data.yaml`, "" none.
    The last `n_background` images have no objects and an empty label file.
    """
    root = Path(root)
    images, labels = root / prefix / "images", root / prefix / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        im, boxes = make_image(rng, size)
        if i >= n - n_background:
            im, boxes = Image.new("RGB", (size, size), _BACKGROUNDS[0]), []
        suffix = ".jpg" if i % 3 == 0 else ".png"
        im.save(images / f"img_{i:03d}{suffix}")
        (labels / f"img_{i:03d}.txt").write_text(label_text(boxes))
    if classes == "txt":
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    elif classes == "yaml":
        (root / prefix / "data.yaml").write_text("names:\n" + "".join(f"  {i}: {c}\n" for i, c in enumerate(CLASSES)))
    return root


def pack_tar_gz(src: str | Path, out: str | Path, extra: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = ()) -> Path:
    """Pack the folder `src` (its contents, relative names) as .tar.gz, plus `extra` raw members."""
    src, out = Path(src), Path(out)
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=p.relative_to(src).as_posix(), recursive=False)
        for item in extra:
            info, data = item if isinstance(item, tuple) else (item, None)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def pack_zip(src: str | Path, out: str | Path, extra: dict[str, bytes] | None = None) -> Path:
    src, out = Path(src), Path(out)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


def file_member(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def truncate(path: str | Path, keep: float = 0.5) -> Path:
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_archive(tmp: str | Path, kind: str = "tar.gz", n: int = 24, prefix: str = "bccd", classes: str = "txt",
                 name: str = "shapes", **kwargs) -> tuple[Path, Path | None]:
    """A packed dataset and its classes file (None when the archive carries its own data.yaml)."""
    tmp = Path(tmp)
    src = make_dataset(tmp / f"{name}-src", n=n, prefix=prefix, classes=classes, **kwargs)
    classes_file = None
    if classes == "txt":
        classes_file = tmp / f"{name}-classes.txt"
        (src / "classes.txt").replace(classes_file)
    out = tmp / f"{name}.{kind}"
    return (pack_zip(src, out) if kind == "zip" else pack_tar_gz(src, out)), classes_file
