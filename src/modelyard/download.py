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

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from modelyard.errors import DownloadError

CHUNK_SIZE = 1 << 20
TIMEOUT_S = 60


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_source(source: str):
    """Return (readable stream, total size or None) for a path, file:// or http(s):// source."""
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
    if len(parsed.scheme) > 1 and parsed.scheme != "file":  # one letter: a Windows drive
        raise DownloadError(f"source {source}: unsupported scheme {parsed.scheme}:// (use a path, file:// or http(s)://)")
    path = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(source).expanduser()
    if path.is_dir():
        raise DownloadError(f"source {source} is a folder; pass the archive file inside it")
    if not path.is_file():
        raise DownloadError(f"source {source} not found (no such file: {path})")
    return open(path, "rb"), path.stat().st_size


def fetch(source: str, dest: str | Path, sha256: str | None = None, show_progress: bool = True) -> Path:
    """Copy `source` to `dest` unless `dest` already exists, verifying `sha256` when given.

    The bytes go to a temporary name beside `dest` and are renamed into place only once complete and
    verified, so an interrupted or corrupt download never leaves a file that looks finished.
    """
    if sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise DownloadError(f"--sha256 {sha256!r} is not a SHA-256 (64 hexadecimal digits)")
    dest = Path(dest)
    if dest.exists():
        if sha256 and sha256_file(dest) != sha256.lower():
            raise DownloadError(f"{dest} is already in the volume but its SHA-256 differs from {sha256}; delete it to download again")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    stream, total = _open_source(source)
    digest = hashlib.sha256()
    try:
        with stream, open(tmp, "wb") as out, Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
            disable=not show_progress, transient=True,
        ) as progress:
            task = progress.add_task(f"download {dest.name}", total=total)
            for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
                out.write(chunk)
                digest.update(chunk)
                progress.advance(task, len(chunk))
        if total is not None and tmp.stat().st_size != total:
            raise DownloadError(f"download of {source} is truncated: {tmp.stat().st_size} of {total} bytes")
        actual = digest.hexdigest()
        if sha256 and actual != sha256.lower():
            raise DownloadError(f"checksum mismatch for {source}: expected SHA-256 {sha256.lower()}, got {actual}")
        os.replace(tmp, dest)
    except OSError as e:
        raise DownloadError(f"download of {source} failed: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
