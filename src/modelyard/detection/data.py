"""YOLO-format detection datasets: safe extraction, layout, split plans and the ``data.yaml`` ultralytics reads.

Pure file logic (no ultralytics, no MLflow). A dataset in the volume looks like::

    <volume>/raw/detection/<name>/<archive>           the downloaded archive (kept, never re-downloaded)
    <volume>/raw/detection/<name>/<archive>.source    where it came from (another source is downloaded again)
    <volume>/datasets/detection/<name>/
        images/{train,val,test}/*.jpg                  after `split` (flat `images/*.jpg` before)
        labels/{train,val,test}/*.txt                  one YOLO label file per image (empty = background)
        classes.txt                                    class names, one a line, line number = class id
        dataset.json                                   source, archive SHA-256, content digest, counts
        split.json                                     the split plan (written before any file moves)
        data.yaml                                      absolute `path`, train/val/test folders, names
    <volume>/datasets/detection/latest                 name of the dataset downloaded last
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import tarfile
import urllib.parse
import uuid
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import yaml

from modelyard.errors import DataError, DownloadError

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
DATASET_INFO = "dataset.json"
SPLIT_PLAN = "split.json"
DATA_YAML = "data.yaml"
CLASSES_FILE = "classes.txt"
_JUNK = ("__MACOSX",)


# ----------------------------------------------------------------------------------------------- volume paths

def datasets_root(volume: str | Path) -> Path:
    return Path(volume) / "datasets" / "detection"


def raw_root(volume: str | Path) -> Path:
    return Path(volume) / "raw" / "detection"


def dataset_name(source: str) -> str:
    """`bccd` for `.../bccd.tar.gz`, `file:///x/bccd.zip` or `https://host/bccd.tgz?x=1`."""
    path = urllib.parse.urlparse(source).path if "://" in source else source
    name = PurePosixPath(path.replace("\\", "/")).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "dataset"
    return Path(name).stem or "dataset"


def archive_filename(source: str) -> str:
    path = urllib.parse.urlparse(source).path if "://" in source else source
    return PurePosixPath(urllib.parse.unquote(path).replace("\\", "/")).name or "archive"


def resolve_dataset_dir(volume: str | Path, dataset: str = "") -> Path:
    """The folder of `dataset` in the volume; empty: the one `download` wrote last."""
    root = datasets_root(volume)
    if not dataset:
        latest = root / "latest"
        if not latest.is_file():
            raise DataError(f"no detection dataset in the volume {volume}: run the download step first")
        dataset = latest.read_text().strip()
    folder = root / dataset
    if not (folder / DATASET_INFO).is_file():
        known = sorted(p.name for p in root.iterdir() if (p / DATASET_INFO).is_file()) if root.is_dir() else []
        raise DataError(f"no detection dataset {dataset!r} in {root} (found: {', '.join(known) or 'none'})")
    return folder


def read_info(dataset_dir: str | Path) -> dict:
    return json.loads((Path(dataset_dir) / DATASET_INFO).read_text())


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- safe extraction

def _unsafe_reason(name: str) -> str | None:
    """Why an archive member name would land outside the target folder, or None when it is safe."""
    if not name or "\x00" in name:
        return "an empty or NUL-containing name"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "a '..' path component"
    return None


def _archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, zlib.error):
        pass
    raise DownloadError(f"{path.name} is neither a tar (.tar.gz, .tgz, .tar) nor a zip archive, or it is corrupt")


def _check_members_tar(tf: tarfile.TarFile, archive: str) -> list[tarfile.TarInfo]:
    members = tf.getmembers()  # reads the whole archive: a truncated one fails here, before anything is written
    # a plain .tar cut at a member boundary reads as a shorter archive: only the end-of-archive marker tells
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(1024) != bytes(1024):
        last = f" after member {members[-1].name!r}" if members else ""
        raise DownloadError(f"{archive} is truncated: it ends{last} without tar's end-of-archive marker; nothing was extracted")
    for m in members:
        reason = _unsafe_reason(m.name)
        if reason is None and (m.issym() or m.islnk()):
            reason = f"a {'symbolic' if m.issym() else 'hard'} link to {m.linkname!r}"
        if reason is None and not (m.isfile() or m.isdir()):
            reason = "a device, FIFO or other special file"
        if reason:
            raise DownloadError(f"refusing to extract {archive}: member {m.name!r} is {reason}, which could write outside the target folder; nothing was extracted")
    return members


def _check_members_zip(zf: zipfile.ZipFile, archive: str) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for m in members:
        reason = _unsafe_reason(m.filename)
        mode = m.external_attr >> 16
        if reason is None and stat.S_ISLNK(mode):
            reason = "a symbolic link"
        if reason:
            raise DownloadError(f"refusing to extract {archive}: member {m.filename!r} is {reason}, which could write outside the target folder; nothing was extracted")
    return members


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a tar(.gz/.bz2/.xz) or zip archive into the new folder `dest`, member by member.

    Every member is checked first: an absolute name, a `..` component, a link or a special file aborts
    with a DownloadError naming the member before anything is written. Only regular files and folders are
    created, always below `dest`. A truncated or corrupt archive raises DownloadError too; the caller
    extracts into a temporary folder and removes it on failure.
    """
    archive, dest = Path(archive), Path(dest)
    kind = _archive_kind(archive)
    dest.mkdir(parents=True, exist_ok=False)
    root = dest.resolve()

    def target(name: str) -> Path:
        out = (root / name.replace("\\", "/")).resolve()
        if out != root and root not in out.parents:  # belt and braces after the name checks
            raise DownloadError(f"refusing to extract {archive.name}: member {name!r} resolves outside the target folder")
        return out

    try:
        if kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                for m in _check_members_tar(tf, archive.name):
                    out = target(m.name)
                    if m.isdir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    with src, open(out, "wb") as f:
                        shutil.copyfileobj(src, f, 1 << 20)
        else:
            with zipfile.ZipFile(archive) as zf:
                for m in _check_members_zip(zf, archive.name):
                    out = target(m.filename)
                    if m.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as src, open(out, "wb") as f:
                        shutil.copyfileobj(src, f, 1 << 20)
    except DownloadError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError, NotImplementedError) as e:
        raise DownloadError(f"{archive.name} is truncated or corrupt and could not be extracted ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------------------------- YOLO layout

def _is_junk(path: Path, root: Path) -> bool:
    rel = path.relative_to(root).parts
    return any(p in _JUNK or p.startswith(".") for p in rel)


def find_yolo_folders(root: str | Path) -> tuple[Path, Path]:
    """The one `images/` folder with a sibling `labels/` folder anywhere below `root`."""
    root = Path(root)
    candidates = sorted(
        d for d in root.rglob("*")
        if d.is_dir() and d.name.lower() == "images" and not _is_junk(d, root)
        and any(s.is_dir() and s.name.lower() == "labels" for s in d.parent.iterdir())
    )
    if not candidates:
        raise DownloadError("the archive holds no YOLO dataset: expected an images/ folder beside a labels/ folder (at any depth)")
    if len(candidates) > 1:
        listed = ", ".join(str(c.relative_to(root)) for c in candidates)
        raise DownloadError(f"the archive holds several images/ + labels/ folder pairs ({listed}); pack one dataset per archive")
    images = candidates[0]
    labels = next(s for s in images.parent.iterdir() if s.is_dir() and s.name.lower() == "labels")
    return images, labels


def parse_class_names(path: str | Path, label: str = "") -> list[str]:
    """Class names from a text file (one a line, blank lines skipped) or a YOLO `data.yaml` (`names`).

    `label` names the file in errors (default: its name).
    """
    path = Path(path)
    label = label or path.name
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise DataError(f"{label} is not valid YAML: {e}") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                keys = sorted(int(k) for k in names)
            except ValueError:
                raise DataError(f"{label}: `names` keys must be class ids 0..n-1") from None
            if keys != list(range(len(keys))):
                raise DataError(f"{label}: `names` keys must be the class ids 0..{len(keys) - 1} without gaps")
            names = [names[k] if k in names else names[str(k)] for k in keys]
        if not isinstance(names, list) or not names:
            raise DataError(f"{label} has no `names` list of class names")
        return [str(n).strip() for n in names]
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not names:
        raise DataError(f"{label} holds no class names (expected one a line)")
    if len(set(names)) != len(names):
        raise DataError(f"{label} lists a class name twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return names


def find_class_file(root: str | Path) -> Path | None:
    """A `data.yaml` (with names) or a `classes.txt` / `classes.names` / `obj.names` anywhere in the archive."""
    root = Path(root)
    files = sorted((p for p in root.rglob("*") if p.is_file() and not _is_junk(p, root)), key=lambda p: (len(p.parts), str(p)))
    for p in files:
        if p.name.lower() in ("data.yaml", "data.yml", "dataset.yaml"):
            try:
                data = yaml.safe_load(p.read_text())
            except (yaml.YAMLError, UnicodeDecodeError):
                continue
            if isinstance(data, dict) and data.get("names"):
                return p
    for p in files:
        if p.name.lower() in ("classes.txt", "classes.names", "obj.names"):
            return p
    return None


def _collect(folder: Path, suffixes: frozenset[str] | None, what: str) -> dict[str, Path]:
    """Files below `folder` (any depth, e.g. already split) by file name; two with one name are an error."""
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or _is_junk(p, folder):
            continue
        if suffixes is not None and p.suffix.lower() not in suffixes:
            continue
        if p.name in found:
            raise DataError(f"two {what} files are named {p.name} ({found[p.name].relative_to(folder)} and {p.relative_to(folder)}); file names must be unique")
        found[p.name] = p
    return found


def content_digest(dataset_dir: str | Path) -> str:
    """SHA-256 over class names and every image and label (by file name), independent of the split folders."""
    dataset_dir = Path(dataset_dir)
    digest = hashlib.sha256()
    digest.update((dataset_dir / CLASSES_FILE).read_bytes())
    for sub in ("images", "labels"):
        for p in sorted((dataset_dir / sub).rglob("*"), key=lambda p: p.name):
            if p.is_file() and p.suffix != ".cache":  # ultralytics writes labels/<split>.cache when it trains
                h = hashlib.sha256(p.read_bytes()).hexdigest()
                digest.update(f"{sub}/{p.name}:{h}\n".encode())
    return digest.hexdigest()


def build_dataset(archive: str | Path, target: str | Path, classes_file: str | Path | None = None, info: dict | None = None) -> dict:
    """Extract `archive` and lay it out as `target` (images/, labels/, classes.txt, dataset.json), all or nothing.

    Everything happens in a temporary sibling folder that is renamed to `target` only when complete; on any
    error the temporary folder is removed and `target` does not exist.
    """
    archive, target = Path(archive), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.extract-{uuid.uuid4().hex[:8]}"
    try:
        extracted = work / "archive"
        safe_extract(archive, extracted)
        images_dir, labels_dir = find_yolo_folders(extracted)
        class_source = Path(classes_file) if classes_file else find_class_file(extracted)
        if class_source is None:
            raise DownloadError(f"{archive.name} has no data.yaml or classes.txt with the class names: pass `classes` (a file of class names, one a line)")
        names = parse_class_names(class_source)
        images = _collect(images_dir, IMAGE_SUFFIXES, "image")
        if not images:
            raise DownloadError(f"{archive.name}: {images_dir.relative_to(extracted)} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        labels = {n: p for n, p in _collect(labels_dir, frozenset({".txt"}), "label").items() if n.lower() != CLASSES_FILE}
        stems = {}
        for name in images:
            stem = Path(name).stem
            if stem in stems:
                raise DataError(f"images {stems[stem]} and {name} share the label file {stem}.txt; image names must differ in more than the extension")
            stems[stem] = name
        out = work / "dataset"
        (out / "images").mkdir(parents=True)
        (out / "labels").mkdir()
        for name, p in images.items():
            os.replace(p, out / "images" / name)
        for name, p in labels.items():
            os.replace(p, out / "labels" / name)
        (out / CLASSES_FILE).write_text("".join(f"{n}\n" for n in names))
        meta = dict(info or {})
        meta.update(
            name=target.name,
            classes=names,
            n_images=len(images),
            n_labels=len(labels),
            digest=content_digest(out),
        )
        write_json_atomic(out / DATASET_INFO, meta)
        os.replace(out, target)
        return meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


def set_class_names(dataset_dir: str | Path, names: list[str], classes_source: str = "") -> tuple[dict, list[str] | None]:
    """Give a dataset in the volume new class names, leaving its images, labels and split as they are.

    Rewrites classes.txt, then dataset.json (names, `classes_source`, content digest) and data.yaml when
    it was written; returns (the dataset info, the previous names or None when they were already `names`).
    """
    dataset_dir = Path(dataset_dir)
    info = read_info(dataset_dir)
    stored = parse_class_names(dataset_dir / CLASSES_FILE)
    previous = info.get("classes") or stored
    if names == stored and names == previous:
        return info, None
    write_text_atomic(dataset_dir / CLASSES_FILE, "".join(f"{n}\n" for n in names))
    info = {**info, "classes": list(names), "classes_source": classes_source, "digest": content_digest(dataset_dir)}
    write_json_atomic(dataset_dir / DATASET_INFO, info)
    if (dataset_dir / DATA_YAML).is_file():
        write_data_yaml(dataset_dir)
    return info, list(previous)


# ----------------------------------------------------------------------------------------------- split

def plan_split(names: list[str], val_size: float = 0.15, test_size: float = 0.10, random_state: int = 42) -> dict[str, str]:
    """Assign each image file name to train/val/test: a seeded shuffle of the sorted names.

    val gets round(n * val_size) images, test round(n * test_size), train the rest (at least one).
    """
    if not (0 <= val_size < 1 and 0 <= test_size < 1 and val_size + test_size < 1):
        raise DataError(f"val_size ({val_size}) and test_size ({test_size}) must be in [0, 1) and leave room for train")
    ordered = sorted(names)
    random.Random(random_state).shuffle(ordered)
    n = len(ordered)
    n_test = int(round(n * test_size))
    n_val = int(round(n * val_size))
    if n - n_val - n_test < 1:
        raise DataError(f"{n} images are too few for val_size={val_size}, test_size={test_size}: no image left to train on")
    plan = {}
    for i, name in enumerate(ordered):
        plan[name] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return dict(sorted(plan.items()))


def split_counts(plan: dict[str, str]) -> dict[str, int]:
    return {part: sum(1 for p in plan.values() if p == part) for part in SPLITS}


def apply_split(dataset_dir: str | Path, plan: dict[str, str]) -> int:
    """Move every image (and its label, when there is one) into its split folder; return how many moved.

    Idempotent and crash-safe: a file already in its split folder is left alone, one still in the flat
    folder is moved with an atomic rename, so running it again after a crash finishes the job. An image
    found in neither place raises DataError instead of being silently dropped.
    """
    dataset_dir = Path(dataset_dir)
    moved = 0
    for part in SPLITS:
        (dataset_dir / "images" / part).mkdir(parents=True, exist_ok=True)
        (dataset_dir / "labels" / part).mkdir(parents=True, exist_ok=True)
    for name, part in plan.items():
        label = Path(name).stem + ".txt"
        for sub, fname, required in (("labels", label, False), ("images", name, True)):
            flat, dest = dataset_dir / sub / fname, dataset_dir / sub / part / fname
            if flat.is_file() and dest.is_file():  # never overwrite: which one is right is the user's call
                raise DataError(f"both {sub}/{fname} and {sub}/{part}/{fname} exist in {dataset_dir}; remove one and run again")
            if flat.is_file():
                os.replace(flat, dest)
                moved += 1
            elif required and not dest.is_file():
                raise DataError(f"{sub}/{fname} of the split plan is neither in {sub}/ nor in {sub}/{part}/ of {dataset_dir}")
    return moved


def split_dataset(dataset_dir: str | Path, val_size: float = 0.15, test_size: float = 0.10, random_state: int = 42) -> tuple[dict, bool]:
    """Plan (once) and apply the split; returns (the plan record, whether an existing plan was reused)."""
    dataset_dir = Path(dataset_dir)
    plan_path = dataset_dir / SPLIT_PLAN
    reused = plan_path.is_file()
    if reused:
        record = json.loads(plan_path.read_text())
    else:
        images = sorted(p.name for p in (dataset_dir / "images").iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{dataset_dir / 'images'} holds no images to split")
        plan = plan_split(images, val_size, test_size, random_state)
        record = {"val_size": val_size, "test_size": test_size, "random_state": random_state,
                  "counts": split_counts(plan), "assignments": plan}
        write_json_atomic(plan_path, record)  # the plan is on disk before the first file moves
    moved = apply_split(dataset_dir, record["assignments"])
    record["moved"] = moved
    stray = sorted(p.name for p in (dataset_dir / "images").iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if stray:
        raise DataError(f"{len(stray)} image(s) in {dataset_dir / 'images'} are not in the split plan (e.g. {', '.join(stray[:3])}); "
                        f"remove {plan_path.name} and the split folders to split again")
    return record, reused and moved == 0


def write_data_yaml(dataset_dir: str | Path) -> Path:
    """The `data.yaml` ultralytics reads: absolute `path`, split folders, class names."""
    dataset_dir = Path(dataset_dir).resolve()
    names = parse_class_names(dataset_dir / CLASSES_FILE)
    data = {"path": str(dataset_dir), "train": "images/train", "val": "images/val"}
    test = dataset_dir / "images" / "test"
    if test.is_dir() and any(test.iterdir()):
        data["test"] = "images/test"
    data["nc"] = len(names)
    data["names"] = dict(enumerate(names))
    path = dataset_dir / DATA_YAML
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def iter_images(dataset_dir: str | Path):
    """(split or "", image path, label path) for every image, split or not yet split."""
    dataset_dir = Path(dataset_dir)
    images = dataset_dir / "images"
    for p in sorted(images.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            rel = p.relative_to(images)
            part = rel.parts[0] if len(rel.parts) > 1 else ""
            yield part, p, dataset_dir / "labels" / rel.parent / (p.stem + ".txt")
