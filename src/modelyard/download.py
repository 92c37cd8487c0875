"""Fetch a file once into the volume: local path, file:// or http(s):// URL, streamed and verified."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from modelyard.errors import DownloadError

CHUNK_SIZE = 1 << 20
TIMEOUT_S = 60
SOURCE_SUFFIX = ".source"  # beside a download: the source it came from


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_source(source: str, what: str = "source"):
    """Return (readable stream, total size or None) for a path, file:// or http(s):// source.

    `what` names the source in the errors of a local one (e.g. "classes file").
    """
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        try:
            response = urllib.request.urlopen(urllib.request.Request(source, headers={"User-Agent": "modelyard"}), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"download of {source} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"download of {source} failed: {getattr(e, 'reason', e)} "
                                "(no network? pass a local copy or a mirror with --source)") from None
        length = response.headers.get("Content-Length")
        return response, int(length) if length else None
    path = local_path(source, what)
    if path.is_dir():
        raise DownloadError(f"{what} {source} is a folder; pass the archive file inside it")
    if not path.is_file():
        raise DownloadError(f"{what} {source} not found (no such file: {path})")
    return open(path, "rb"), path.stat().st_size


def local_path(source: str, what: str = "source") -> Path | None:
    """The file a path or file:// source names; None for http(s) sources."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return None
    if len(parsed.scheme) > 1 and parsed.scheme != "file":  # one letter: a Windows drive
        raise DownloadError(f"{what} {source}: unsupported scheme {parsed.scheme}:// (use a path, file:// or http(s)://)")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):  # file://data/x.zip reads "data" as a host name
            raise DownloadError(f"{what} {source}: a file URL takes an absolute path, file:///path/to/file "
                                f"(here {parsed.netloc!r} would be a host name)")
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(source).expanduser()


def source_record(dest: str | Path) -> Path:
    """The file beside `dest` naming the source it was downloaded from: `<dest>.source`."""
    dest = Path(dest)
    return dest.with_name(dest.name + SOURCE_SUFFIX)


def is_cached(dest: str | Path, source: str) -> bool:
    """Whether `dest` is in the volume and its source record names `source` (so `fetch` reuses it); a
    local source must also still hold the same bytes (an archive rebuilt at the same path is fetched again)."""
    dest, record = Path(dest), source_record(dest)
    if not (dest.is_file() and record.is_file() and record.read_text().strip() == source):
        return False
    try:
        local = local_path(source)
    except DownloadError:
        return True
    if local is None or not local.is_file():  # a URL, or a local copy since removed: the volume's copy stands
        return True
    return local.stat().st_size == dest.stat().st_size and sha256_file(local) == sha256_file(dest)


def discard(dest: str | Path) -> None:
    """Remove a downloaded file and its source record, e.g. an archive its reader rejected."""
    Path(dest).unlink(missing_ok=True)
    source_record(dest).unlink(missing_ok=True)


def _download(source: str, tmp: Path, label: str, sha256: str | None, show_progress: bool, what: str) -> None:
    """Stream `source` into `tmp`, checking its length and `sha256` (DownloadError when either is off)."""
    stream, total = _open_source(source, what)
    digest = hashlib.sha256()
    with stream, open(tmp, "wb") as out, Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        disable=not show_progress, transient=True,
    ) as progress:
        task = progress.add_task(f"download {label}", total=total)
        for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
            out.write(chunk)
            digest.update(chunk)
            progress.advance(task, len(chunk))
    if total is not None and tmp.stat().st_size != total:
        raise DownloadError(f"download of {source} is truncated: {tmp.stat().st_size} of {total} bytes")
    actual = digest.hexdigest()
    if sha256 and actual != sha256.lower():
        raise DownloadError(f"checksum mismatch for {source}: expected SHA-256 {sha256.lower()}, got {actual}")


def fetch(source: str, dest: str | Path, sha256: str | None = None, show_progress: bool = True,
          verify: Callable[[Path], object] | None = None, track_source: bool = False, what: str = "source") -> Path:
    """Copy `source` to `dest` unless `dest` already exists, verifying `sha256` when given.

    The bytes go to a temporary file (same name, in a hidden folder beside `dest`) that replaces `dest` only
    once complete, checked against `sha256` and accepted by `verify` (called with its path; it raises to
    reject it), so an interrupted, corrupt or rejected download never leaves a file that looks finished.
    `track_source`: record the source in `<dest>.source` and reuse `dest` only when it came from the same
    source; another source is downloaded again and replaces it once verified; on failure the cached file and
    its record stay as they were. `what` names the source in errors ("classes file").
    """
    if sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise DownloadError(f"--sha256 {sha256!r} is not a SHA-256 (64 hexadecimal digits)")
    dest = Path(dest)
    if dest.exists() and (not track_source or is_cached(dest, source)):
        if sha256 and sha256_file(dest) != sha256.lower():
            raise DownloadError(f"{dest} is already in the volume but its SHA-256 differs from {sha256}; delete it to download again")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    tmp = work / dest.name
    try:
        _remove(work)  # left by a killed download of a process with the same id
        work.mkdir()
        _download(source, tmp, dest.name, sha256, show_progress, what)
        if verify is not None:
            verify(tmp)
        record = source_record(dest)
        if track_source:
            record.unlink(missing_ok=True)  # never a record naming one source beside the file of another
        os.replace(tmp, dest)
        if track_source:
            record_tmp = work / record.name
            record_tmp.write_text(source + "\n")
            os.replace(record_tmp, record)
    except OSError as e:
        raise DownloadError(f"download of {source} failed: {e}") from None
    finally:
        _remove(work)
    return dest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
