"""modelyard.download.fetch from a path, a file:// URL and HTTP; checksums; no half-written files."""

from __future__ import annotations

import hashlib

import pytest

from modelyard.download import discard, fetch, is_cached, sha256_file, source_record
from modelyard.errors import DownloadError

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "ml-test.zip"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_from_a_path(tmp_path, source):
    dest = tmp_path / "volume" / "raw" / "ml-test.zip"
    assert fetch(str(source), dest, sha256=PAYLOAD_SHA, show_progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["ml-test.zip"]


def test_fetch_from_a_file_url(tmp_path, source):
    dest = tmp_path / "raw" / "ml-test.zip"
    fetch(source.as_uri(), dest, sha256=PAYLOAD_SHA.upper(), show_progress=False)
    assert sha256_file(dest) == PAYLOAD_SHA


def test_fetch_over_http(tmp_path, http_server, http_served_dir):
    (http_served_dir / "ml-test.zip").write_bytes(PAYLOAD)
    dest = tmp_path / "raw" / "ml-test.zip"
    fetch(f"{http_server}/ml-test.zip", dest, sha256=PAYLOAD_SHA)  # with the progress bar
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["ml-test.zip"]


@pytest.mark.parametrize("via", ["path", "http"])
def test_checksum_mismatch_leaves_no_file(tmp_path, source, via, http_server, http_served_dir):
    (http_served_dir / "ml-test.zip").write_bytes(PAYLOAD)
    url = str(source) if via == "path" else f"{http_server}/ml-test.zip"
    dest = tmp_path / "raw" / "ml-test.zip"
    with pytest.raises(DownloadError, match="checksum mismatch.*expected SHA-256 0{64}, got " + PAYLOAD_SHA):
        fetch(url, dest, sha256="0" * 64, show_progress=False)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []  # no temporary .part file either


def test_existing_dest_is_not_fetched_again(tmp_path, http_server, http_served_dir):
    served = http_served_dir / "ml-test.zip"
    served.write_bytes(PAYLOAD)
    dest = tmp_path / "raw" / "ml-test.zip"
    fetch(f"{http_server}/ml-test.zip", dest, sha256=PAYLOAD_SHA, show_progress=False)
    served.unlink()  # the source is gone: a second download would be a 404
    before = dest.stat().st_mtime_ns
    assert fetch(f"{http_server}/ml-test.zip", dest, sha256=PAYLOAD_SHA, show_progress=False) == dest
    assert fetch(f"{http_server}/ml-test.zip", dest, show_progress=False) == dest
    assert dest.stat().st_mtime_ns == before and dest.read_bytes() == PAYLOAD


def test_existing_dest_with_another_checksum_is_an_error(tmp_path, source):
    dest = tmp_path / "ml-test.zip"
    dest.write_bytes(b"something else")
    with pytest.raises(DownloadError, match="already in the volume but its SHA-256 differs"):
        fetch(str(source), dest, sha256=PAYLOAD_SHA, show_progress=False)
    assert dest.read_bytes() == b"something else"  # never overwritten silently


def test_http_404_is_a_clear_download_error(tmp_path, http_server):
    dest = tmp_path / "raw" / "missing.zip"
    with pytest.raises(DownloadError, match=r"download of http://127\.0\.0\.1:\d+/missing\.zip failed: HTTP 404"):
        fetch(f"{http_server}/missing.zip", dest, show_progress=False)
    assert _leftovers(dest.parent) == []


def test_missing_local_source_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError, match="not found"):
        fetch(str(tmp_path / "nope.zip"), tmp_path / "dest.zip", show_progress=False)
    with pytest.raises(DownloadError, match="not found"):
        fetch((tmp_path / "nope.zip").as_uri(), tmp_path / "dest.zip", show_progress=False)


def test_a_folder_or_an_unsupported_scheme_is_named_as_such(tmp_path):
    with pytest.raises(DownloadError, match="is a folder; pass the archive file inside it"):
        fetch(str(tmp_path), tmp_path / "dest.zip", show_progress=False)
    with pytest.raises(DownloadError, match=r"unsupported scheme ftp:// \(use a path, file:// or http\(s\)://\)"):
        fetch("ftp://127.0.0.1/x.zip", tmp_path / "dest.zip", show_progress=False)
    assert not (tmp_path / "dest.zip").exists()


def test_a_checksum_that_is_not_a_sha256_is_refused_before_anything(tmp_path):
    source = tmp_path / "a.zip"
    source.write_bytes(b"data")
    with pytest.raises(DownloadError, match=r"--sha256 'deadbeef' is not a SHA-256 \(64 hexadecimal digits\)"):
        fetch(str(source), tmp_path / "dest.zip", sha256="deadbeef", show_progress=False)
    assert not (tmp_path / "dest.zip").exists()


def _reject(path):
    raise DownloadError(f"{path.name} is not an archive")


def test_another_source_replaces_the_cached_file_only_once_verified(tmp_path, source):
    dest = tmp_path / "raw" / "ml-test.zip"
    record = source_record(dest)
    fetch(str(source), dest, sha256=PAYLOAD_SHA, show_progress=False, track_source=True)
    assert record.read_text() == f"{source}\n" and is_cached(dest, str(source))
    bad = tmp_path / "bad" / "ml-test.zip"
    bad.parent.mkdir()
    bad.write_bytes(b"not a zip")
    with pytest.raises(DownloadError, match="ml-test.zip is not an archive"):  # verify sees the file under its own name
        fetch(str(bad), dest, show_progress=False, verify=_reject, track_source=True)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(str(bad), dest, sha256=PAYLOAD_SHA, show_progress=False, track_source=True)
    with pytest.raises(DownloadError, match="not found"):
        fetch(str(tmp_path / "nope.zip"), dest, show_progress=False, track_source=True)
    assert dest.read_bytes() == PAYLOAD and record.read_text() == f"{source}\n"
    assert _leftovers(dest.parent) == ["ml-test.zip", "ml-test.zip.source"]  # no temporary files
    assert not is_cached(dest, str(bad))

    seen = []
    fetch(str(bad), dest, show_progress=False, verify=lambda p: seen.append(p.read_bytes()), track_source=True)
    assert seen == [b"not a zip"] and dest.read_bytes() == b"not a zip" and record.read_text() == f"{bad}\n"
    bad.unlink()  # the same source again: reused, neither downloaded nor verified again
    assert fetch(str(bad), dest, show_progress=False, verify=_reject, track_source=True) == dest
    assert _leftovers(dest.parent) == ["ml-test.zip", "ml-test.zip.source"]


def test_a_cached_file_without_a_source_record_is_downloaded_again(tmp_path, source):
    dest = tmp_path / "ml-test.zip"
    dest.write_bytes(b"of unknown origin")
    fetch(str(source), dest, show_progress=False, track_source=True)
    assert dest.read_bytes() == PAYLOAD and is_cached(dest, str(source))


def test_a_rejected_download_leaves_no_file(tmp_path, source):
    dest = tmp_path / "raw" / "ml-test.zip"
    with pytest.raises(DownloadError, match="not an archive"):
        fetch(str(source), dest, show_progress=False, verify=_reject, track_source=True)
    assert _leftovers(dest.parent) == []


def test_discard_removes_the_file_and_its_source_record(tmp_path, source):
    dest = tmp_path / "raw" / "ml-test.zip"
    fetch(str(source), dest, show_progress=False, track_source=True)
    discard(dest)
    assert _leftovers(dest.parent) == [] and not is_cached(dest, str(source))
    discard(dest)  # nothing left: no error


def test_a_local_source_rebuilt_in_place_is_fetched_again(tmp_path, source):
    dest = tmp_path / "raw" / "ml-test.zip"
    fetch(str(source), dest, show_progress=False, track_source=True)
    assert is_cached(dest, str(source))
    source.write_bytes(PAYLOAD[::-1])  # the same size, other bytes
    assert not is_cached(dest, str(source))
    fetch(str(source), dest, show_progress=False, track_source=True)
    assert dest.read_bytes() == PAYLOAD[::-1] and is_cached(dest, str(source))
    source.unlink()  # a local copy since removed: the volume's copy stands
    assert is_cached(dest, str(source))


def test_a_file_url_with_a_host_name_is_refused(tmp_path):
    with pytest.raises(DownloadError, match=r"file://data/x.zip: a file URL takes an absolute path, file:///path/to/file \(here 'data'"):
        fetch("file://data/x.zip", tmp_path / "x.zip", show_progress=False)
