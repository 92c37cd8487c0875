"""The data lake: Parquet tables in a local folder or under an `s3://bucket/prefix` (S3, MinIO)."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from modelyard.errors import DataError, ModelyardError
from modelyard.settings import check_lake_uri, s3_endpoint


NO_KEYS = "no AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment: the bucket was read anonymously"


def _s3_filesystem() -> pafs.S3FileSystem:
    """Credentials from the standard AWS environment variables only, handed to pyarrow explicitly: its
    default chain would also read ~/.aws, AWS_PROFILE and instance metadata. None set: anonymous access."""
    kwargs = {"region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"}
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if bool(key) != bool(secret):
        raise ModelyardError(f"{'AWS_SECRET_ACCESS_KEY' if key else 'AWS_ACCESS_KEY_ID'} is not set: an s3:// lake "
                             "needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (anonymous access)")
    if key:
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN") or None)
    else:
        kwargs["anonymous"] = True
    endpoint = s3_endpoint()
    if endpoint:
        if "://" not in endpoint:  # "minio:9000": urlparse would read "minio" as the scheme
            endpoint = f"https://{endpoint}"
        parsed = urllib.parse.urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


class Lake:
    """Named tables (`ml-latest-small/ratings`) stored as `<uri>/<name>.parquet`.

    Writes are all-or-nothing: locally a temporary file renamed into place, on S3 a single PUT.
    """

    def __init__(self, uri: str):
        check_lake_uri(uri)
        self.uri = uri.rstrip("/")
        if self.uri.startswith("s3://"):
            self.fs = _s3_filesystem()
            self.root = self.uri[len("s3://"):]
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(self.uri).expanduser().resolve())

    @property
    def is_remote(self) -> bool:
        return self.uri.startswith("s3://")

    def _hint(self) -> str:
        return f" ({NO_KEYS})" if self.is_remote and not os.environ.get("AWS_ACCESS_KEY_ID") else ""

    def _path(self, name: str, suffix: str = ".parquet") -> str:
        return f"{self.root}/{name}{suffix}"

    def uri_of(self, name: str) -> str:
        return f"{self.uri}/{name}.parquet"

    def _write_bytes(self, path: str, data: bytes) -> None:
        try:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            if self.is_remote:
                with self.fs.open_output_stream(path) as out:
                    out.write(data)
            else:
                tmp = f"{path}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as out:
                    out.write(data)
                os.replace(tmp, path)
        except (OSError, pa.ArrowInvalid) as e:
            raise ModelyardError(f"cannot write {path} to the lake {self.uri}: {e}{self._hint()}") from None

    def write_table(self, name: str, df: pd.DataFrame) -> str:
        """Write `df` as table `name`; returns the SHA-256 of the Parquet bytes (the table's version)."""
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        self._write_bytes(self._path(name), data)
        return hashlib.sha256(data).hexdigest()

    def read_table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        path = self._path(name)
        if not self.exists(name):
            raise DataError(f"table {name} not found in the lake {self.uri} (expected {self.uri_of(name)}); run the ingest step first")
        try:
            return pq.read_table(path, columns=columns, filesystem=self.fs).to_pandas()
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"cannot read {self.uri_of(name)}: {e}{self._hint()}") from None

    def exists(self, name: str, suffix: str = ".parquet") -> bool:
        try:
            return self.fs.get_file_info(self._path(name, suffix)).type == pafs.FileType.File
        except (OSError, pa.ArrowInvalid) as e:
            raise ModelyardError(f"cannot reach the lake {self.uri}: {e}{self._hint()}") from None

    def write_json(self, name: str, obj) -> None:
        self._write_bytes(self._path(name, ".json"), json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, name: str):
        if not self.exists(name, ".json"):
            return None
        with self.fs.open_input_stream(self._path(name, ".json")) as f:
            return json.loads(f.read())
