"""Download, safe extraction and split of YOLO archives (no ultralytics needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from modelyard.detection import data as ddata
from modelyard.detection import steps
from modelyard.errors import DataError, DownloadError


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file()}


def _nothing_left(volume: Path, name: str = "shapes") -> None:
    root = ddata.datasets_root(volume)
    assert not (root / name).exists()
    assert not list(root.glob(f".{name}*")) if root.exists() else True
    assert not list((ddata.raw_root(volume) / name).glob("*")) if (ddata.raw_root(volume) / name).exists() else True


@pytest.mark.parametrize("prefix", ["bccd", "DATASET/DATA"])
def test_download_extracts_nested_tar_gz(factory, tmp_path, volume, prefix):
    archive, classes = factory.make_archive(tmp_path, prefix=prefix)
    out = steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    target = volume / "datasets" / "detection" / "shapes"
    assert out["dataset"] == "shapes" and out["dataset_dir"] == str(target)
    assert out["n_images"] == 24 and out["n_classes"] == 2 and not out["reused"]
    assert len(out["digest"]) == 64
    assert len(list((target / "images").iterdir())) == 24
    assert len(list((target / "labels").iterdir())) == 24
    assert (target / "classes.txt").read_text().split() == factory.CLASSES
    assert (volume / "raw" / "detection" / "shapes" / "shapes.tar.gz").is_file()
    assert (ddata.datasets_root(volume) / "latest").read_text().strip() == "shapes"


def test_download_again_is_a_no_op(factory, tmp_path, volume):
    archive, classes = factory.make_archive(tmp_path)
    first = steps.download(volume=str(volume), source=archive.as_uri(), classes=str(classes))
    marker = Path(first["dataset_dir"]) / "images" / "img_000.jpg"
    mtime = marker.stat().st_mtime_ns
    archive.unlink()  # the source is gone: nothing may be fetched again
    again = steps.download(volume=str(volume), source=archive.as_uri(), classes=str(classes))
    assert again["reused"] and again["digest"] == first["digest"]
    assert marker.stat().st_mtime_ns == mtime


def test_zip_with_data_yaml_over_http(factory, tmp_path, volume, http_server, http_served_dir):
    archive, classes = factory.make_archive(tmp_path, kind="zip", classes="yaml", prefix="export/v1")
    assert classes is None
    shutil.copy(archive, http_served_dir / archive.name)
    out = steps.download(volume=str(volume), source=f"{http_server}/{archive.name}")
    assert out["n_images"] == 24 and out["n_classes"] == 2
    assert (Path(out["dataset_dir"]) / "classes.txt").read_text().split() == factory.CLASSES


def test_wrong_sha256_keeps_nothing(factory, tmp_path, volume):
    archive, classes = factory.make_archive(tmp_path)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        steps.download(volume=str(volume), source=str(archive), classes=str(classes), sha256="0" * 64)
    _nothing_left(volume)


@pytest.mark.parametrize("member, expected", [
    ("../evil.txt", "'..' path component"),
    ("bccd/../../evil.txt", "'..' path component"),
    ("/tmp/modelyard-evil.txt", "absolute path"),
])
def test_path_traversal_member_aborts(factory, tmp_path, volume, member, expected):
    src = factory.make_dataset(tmp_path / "src")
    archive = factory.pack_tar_gz(src, tmp_path / "shapes.tar.gz", extra=[factory.file_member(member, b"pwned")])
    with pytest.raises(DownloadError, match=expected) as info:
        steps.download(volume=str(volume), source=str(archive))
    assert repr(member) in str(info.value)
    _nothing_left(volume)
    assert not (volume / "datasets" / "evil.txt").exists() and not (volume / "evil.txt").exists()
    assert not Path("/tmp/modelyard-evil.txt").exists()


@pytest.mark.parametrize("hard", [False, True])
def test_link_member_aborts(factory, tmp_path, volume, hard):
    src = factory.make_dataset(tmp_path / "src")
    archive = factory.pack_tar_gz(src, tmp_path / "shapes.tar.gz", extra=[factory.link_member("bccd/images/link.png", "/etc/passwd", hard)])
    with pytest.raises(DownloadError, match="link") as info:
        steps.download(volume=str(volume), source=str(archive))
    assert "bccd/images/link.png" in str(info.value)
    _nothing_left(volume)


def test_zip_traversal_aborts(factory, tmp_path, volume):
    src = factory.make_dataset(tmp_path / "src")
    archive = factory.pack_zip(src, tmp_path / "shapes.zip", extra={"../../zip-evil.txt": b"pwned"})
    with pytest.raises(DownloadError, match="zip-evil"):
        steps.download(volume=str(volume), source=str(archive))
    _nothing_left(volume)
    assert not (tmp_path / "zip-evil.txt").exists()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_truncated_archive(factory, tmp_path, volume, kind):
    archive, classes = factory.make_archive(tmp_path, kind=kind)
    factory.truncate(archive, 0.6)
    with pytest.raises(DownloadError, match="truncated or corrupt|neither a tar"):
        steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    _nothing_left(volume)


def test_archive_without_yolo_folders(factory, tmp_path, volume):
    src = tmp_path / "src"
    (src / "pictures").mkdir(parents=True)
    (src / "pictures" / "a.png").write_bytes(b"x")
    archive = factory.pack_tar_gz(src, tmp_path / "shapes.tar.gz")
    with pytest.raises(DownloadError, match="images/ folder beside a labels/"):
        steps.download(volume=str(volume), source=str(archive))


def test_missing_class_names(factory, tmp_path, volume):
    archive, _ = factory.make_archive(tmp_path, classes="")
    with pytest.raises(DownloadError, match="pass `classes`"):
        steps.download(volume=str(volume), source=str(archive))
    _nothing_left(volume)


def test_dataset_name():
    assert ddata.dataset_name("/x/bccd.tar.gz") == "bccd"
    assert ddata.dataset_name("https://h/p/coco8.zip?dl=1") == "coco8"
    assert ddata.dataset_name("file:///d/ds.tgz") == "ds"


def test_plan_split_is_seeded_and_75_15_10():
    names = [f"{i}.png" for i in range(100)]
    plan = ddata.plan_split(names, 0.15, 0.10, 42)
    assert ddata.split_counts(plan) == {"train": 75, "val": 15, "test": 10}
    assert plan == ddata.plan_split(list(reversed(names)), 0.15, 0.10, 42)
    assert plan != ddata.plan_split(names, 0.15, 0.10, 7)
    with pytest.raises(DataError):
        ddata.plan_split(["a.png"], 0.5, 0.5, 0)


def _download(factory, tmp_path, volume, n=24):
    archive, classes = factory.make_archive(tmp_path, n=n)
    return steps.download(volume=str(volume), source=str(archive), classes=str(classes))


def test_split_moves_files_without_loss_and_again_is_a_no_op(factory, tmp_path, volume):
    dataset_dir = Path(_download(factory, tmp_path, volume)["dataset_dir"])
    before = _files(dataset_dir / "images") | _files(dataset_dir / "labels")
    out = steps.split(volume=str(volume))
    assert (out["n_train"], out["n_val"], out["n_test"]) == (18, 4, 2)
    assert out["moved"] == 48 and not out["reused"]
    for part, n in (("train", 18), ("val", 4), ("test", 2)):
        images = {p.stem for p in (dataset_dir / "images" / part).iterdir()}
        labels = {p.stem for p in (dataset_dir / "labels" / part).iterdir()}
        assert len(images) == n and images == labels
    assert not [p for p in (dataset_dir / "images").iterdir() if p.is_file()]
    assert _files(dataset_dir / "images") | _files(dataset_dir / "labels") == before
    data = yaml.safe_load((dataset_dir / "data.yaml").read_text())
    assert data["path"] == str(dataset_dir.resolve()) and Path(data["path"]).is_absolute()
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    assert data["names"] == {0: "box", 1: "disc"}

    layout = sorted(str(p.relative_to(dataset_dir)) for p in dataset_dir.rglob("*"))
    again = steps.split(volume=str(volume), val_size=0.3, random_state=1)  # other params: still a no-op
    assert again["reused"] and again["moved"] == 0
    assert (again["n_train"], again["n_val"], again["n_test"]) == (18, 4, 2)
    assert sorted(str(p.relative_to(dataset_dir)) for p in dataset_dir.rglob("*")) == layout


def test_split_resumes_after_a_crash(factory, tmp_path, volume):
    dataset_dir = Path(_download(factory, tmp_path, volume)["dataset_dir"])
    before = _files(dataset_dir / "images") | _files(dataset_dir / "labels")
    record, _ = ddata.split_dataset(dataset_dir)  # a full split gives the plan...
    plan = record["assignments"]
    # ...now put half the files back, as if the first run had been killed half-way through its moves
    for i, (name, part) in enumerate(sorted(plan.items())):
        if i % 2:
            (dataset_dir / "images" / part / name).replace(dataset_dir / "images" / name)
            label = Path(name).stem + ".txt"
            (dataset_dir / "labels" / part / label).replace(dataset_dir / "labels" / label)
    out = steps.split(volume=str(volume))
    assert out["moved"] == 24 and not out["reused"]
    assert json.loads((dataset_dir / "split.json").read_text())["assignments"] == plan
    assert _files(dataset_dir / "images") | _files(dataset_dir / "labels") == before
    assert not [p for p in (dataset_dir / "images").iterdir() if p.is_file()]


def test_split_refuses_to_lose_a_planned_image(factory, tmp_path, volume):
    dataset_dir = Path(_download(factory, tmp_path, volume)["dataset_dir"])
    steps.split(volume=str(volume))
    victim = next((dataset_dir / "images" / "val").iterdir())
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        steps.split(volume=str(volume))
