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


def test_plain_tar_cut_at_a_member_boundary(factory, tmp_path, volume):
    import gzip
    import tarfile

    archive, classes = factory.make_archive(tmp_path)
    plain = tmp_path / "shapes.tar"
    plain.write_bytes(gzip.decompress(archive.read_bytes()))
    with tarfile.open(plain) as tf:
        cut = tf.getmembers()[10]
    plain.write_bytes(plain.read_bytes()[:cut.offset])  # a well-formed but shorter archive, no end marker
    with pytest.raises(DownloadError, match=r"shapes.tar is truncated: it ends after member .* without tar's end-of-archive marker"):
        steps.download(volume=str(volume), source=str(plain), classes=str(classes))
    _nothing_left(volume)


def test_the_digest_ignores_ultralytics_label_caches(factory, tmp_path, volume):
    archive, classes = factory.make_archive(tmp_path)
    out = steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    steps.split(volume=str(volume))
    before = ddata.content_digest(out["dataset_dir"])
    (Path(out["dataset_dir"]) / "labels" / "train.cache").write_bytes(b"written by ultralytics")
    assert ddata.content_digest(out["dataset_dir"]) == before
    (next((Path(out["dataset_dir"]) / "labels" / "train").glob("*.txt"))).write_text("1 0.5 0.5 0.1 0.1\n")
    assert ddata.content_digest(out["dataset_dir"]) != before


def test_another_source_of_the_same_name_is_reused_and_said(factory, tmp_path, volume, capsys):
    archive, classes = factory.make_archive(tmp_path / "a")
    steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    capsys.readouterr()
    assert steps.download(volume=str(volume), source=f"file://{archive}")["reused"]  # the same file, spelled otherwise
    assert "reusing it" not in capsys.readouterr().err
    other, _ = factory.make_archive(tmp_path / "b", n=30)
    again = steps.download(volume=str(volume), source=str(other))
    said = " ".join(capsys.readouterr().err.split())
    assert again["reused"] and again["n_images"] == 24
    assert f"dataset shapes is already in the volume, from {archive}: reusing it, not {other}" in said


def test_an_archive_rebuilt_at_the_same_path_is_extracted_and_split_again(factory, tmp_path, volume, capsys):
    archive, classes = factory.make_archive(tmp_path)
    steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    steps.split(volume=str(volume))
    rebuilt, _ = factory.make_archive(tmp_path / "fixed", n=30)
    archive.write_bytes(rebuilt.read_bytes())  # the user fixed the data and packed it again, same file name
    capsys.readouterr()
    again = steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    said = " ".join(capsys.readouterr().err.split())
    assert not again["reused"] and again["n_images"] == 30
    assert f"{archive} changed since dataset shapes was extracted from it" in said
    split = steps.split(volume=str(volume))
    assert not split["reused"] and split["n_train"] + split["n_val"] + split["n_test"] == 30
    assert not list(ddata.datasets_root(volume).glob(".shapes*"))  # the old copy is gone
    assert steps.download(volume=str(volume), source=str(archive))["reused"]  # and now it is the one in the volume


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


def test_split_never_overwrites_a_split_file(factory, tmp_path, volume):
    archive, classes = factory.make_archive(tmp_path)
    out = steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    steps.split(volume=str(volume))
    dataset_dir = Path(out["dataset_dir"])
    image = next((dataset_dir / "images" / "val").iterdir())
    before = image.read_bytes()
    (dataset_dir / "images" / image.name).write_bytes(b"another file of the same name")
    with pytest.raises(DataError, match=f"both images/{image.name} and images/val/{image.name} exist"):
        steps.split(volume=str(volume))
    assert image.read_bytes() == before


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


def _layout(dataset_dir: Path) -> dict[str, int]:
    """Every image and label (relative path) with its modification time: a split left alone keeps both."""
    return {str(p.relative_to(dataset_dir)): p.stat().st_mtime_ns
            for sub in ("images", "labels") for p in (dataset_dir / sub).rglob("*") if p.is_file()}


def test_classes_file_updates_the_stored_class_names_without_extracting_again(factory, tmp_path, volume, capsys):
    from modelyard.errors import QualityError

    archive, classes = factory.make_archive(tmp_path)
    too_few = tmp_path / "cls1.txt"
    too_few.write_text("box\n")
    first = steps.download(volume=str(volume), source=str(archive), classes=str(too_few))
    dataset_dir = Path(first["dataset_dir"])
    steps.split(volume=str(volume))
    with pytest.raises(QualityError, match="class"):  # class id 1 is out of range for one class
        steps.check(volume=str(volume))
    layout, plan = _layout(dataset_dir), (dataset_dir / "split.json").read_text()
    archive.unlink()  # the source is gone: nothing may be downloaded or extracted again
    capsys.readouterr()

    again = steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    err = capsys.readouterr().err
    assert again["reused"] and again["n_classes"] == 2 and again["digest"] != first["digest"]
    assert "class names updated" in err and str(classes) in err and "box -> box, disc" in err
    assert "2 classes (box, disc), already in the volume" in " ".join(err.split())
    assert (dataset_dir / "classes.txt").read_text().split() == factory.CLASSES
    info = ddata.read_info(dataset_dir)
    assert info["classes"] == factory.CLASSES and info["classes_source"] == str(classes)
    assert info["digest"] == ddata.content_digest(dataset_dir) == again["digest"]
    data = yaml.safe_load((dataset_dir / "data.yaml").read_text())
    assert data["nc"] == 2 and data["names"] == {0: "box", 1: "disc"}
    assert _layout(dataset_dir) == layout and (dataset_dir / "split.json").read_text() == plan
    assert steps.split(volume=str(volume))["reused"]
    steps.check(volume=str(volume))  # passes now

    same = steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    assert "class names updated" not in capsys.readouterr().err and same["digest"] == again["digest"]
    kept = steps.download(volume=str(volume), source=str(archive))  # no --classes: the stored ones
    assert kept["n_classes"] == 2 and (dataset_dir / "classes.txt").read_text().split() == factory.CLASSES


@pytest.mark.parametrize("in_volume", [False, True])
def test_missing_or_empty_classes_file_is_an_error_naming_it(factory, tmp_path, volume, in_volume):
    archive, classes = factory.make_archive(tmp_path)
    if in_volume:
        steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    missing, empty = tmp_path / "nope.txt", tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DownloadError, match=f"classes file {missing} not found") as info:
        steps.download(volume=str(volume), source=str(archive), classes=str(missing))
    assert "source" not in str(info.value)
    with pytest.raises(DataError, match=f"classes file {empty} holds no class names"):
        steps.download(volume=str(volume), source=str(archive), classes=str(empty))
    if in_volume:
        dataset_dir = ddata.datasets_root(volume) / "shapes"
        assert (dataset_dir / "classes.txt").read_text().split() == factory.CLASSES
        assert ddata.read_info(dataset_dir)["classes"] == factory.CLASSES
    else:
        _nothing_left(volume)


def test_a_bad_archive_from_another_source_keeps_the_cached_one(factory, tmp_path, volume):
    good, classes = factory.make_archive(tmp_path / "good")
    out = steps.download(volume=str(volume), source=str(good), classes=str(classes))
    raw = ddata.raw_root(volume) / "shapes"
    cached, record = raw / "shapes.tar.gz", raw / "shapes.tar.gz.source"
    assert record.read_text().strip() == str(good)
    shutil.rmtree(out["dataset_dir"])  # the dataset is gone, its archive still in the volume
    bad = factory.truncate(factory.make_archive(tmp_path / "bad", n=30)[0], 0.6)
    with pytest.raises(DownloadError, match="truncated or corrupt|neither a tar"):
        steps.download(volume=str(volume), source=str(bad), classes=str(classes))
    assert cached.read_bytes() == good.read_bytes() and record.read_text().strip() == str(good)
    assert sorted(p.name for p in raw.iterdir()) == ["shapes.tar.gz", "shapes.tar.gz.source"]  # no temporary files
    assert not (ddata.datasets_root(volume) / "shapes").exists()
    # another good source with the same archive name is downloaded, not replaced by the cached copy
    other, _ = factory.make_archive(tmp_path / "other", n=30)
    assert steps.download(volume=str(volume), source=str(other), classes=str(classes))["n_images"] == 30
    assert cached.read_bytes() == other.read_bytes() and record.read_text().strip() == str(other)


def test_an_unusable_cached_archive_is_removed_with_its_source_record(factory, tmp_path, volume):
    archive, classes = factory.make_archive(tmp_path)
    out = steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    shutil.rmtree(out["dataset_dir"])
    raw = ddata.raw_root(volume) / "shapes"
    factory.truncate(raw / "shapes.tar.gz", 0.6)  # corrupted in the volume
    # while the source is there, the copy that no longer matches it is fetched again
    assert steps.download(volume=str(volume), source=str(archive), classes=str(classes))["n_images"] == 24
    shutil.rmtree(out["dataset_dir"])
    factory.truncate(raw / "shapes.tar.gz", 0.6)
    archive.unlink()  # the source is gone: only the corrupt copy is left, and it goes too
    with pytest.raises(DownloadError, match="truncated or corrupt|neither a tar"):
        steps.download(volume=str(volume), source=str(archive), classes=str(classes))
    _nothing_left(volume)
