"""The artifact store (``--artifacts``): where training checkpoints and finalized models live,
a folder or ``s3://bucket/prefix``, through Optuna's artifact stores.

Optuna's stores are used as they are, so optuna-dashboard serves a study's finalized model
from the same store. Three small additions, each for one reason: folder writes are atomic (a
worker killed mid-write must not tear the checkpoint its retry resumes from), an S3 store may
live under a key prefix (Optuna's writes at the bucket's root), and S3 calls time out in
seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from hpsearch.errors import HpsearchError, Unavailable

__all__ = [
    "ArtifactNotFound",
    "ArtifactStore",
    "open_artifact_store",
    "read_artifact",
    "store_errors",
    "upload_files",
]


class ArtifactStore(Protocol):
    """What Optuna's artifact stores implement (its own protocol class is private)."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...

    def remove(self, artifact_id: str) -> None: ...


class FolderArtifactStore(FileSystemArtifactStore):
    """Optuna's folder store, writing each artifact atomically (temporary file, then rename)
    and leaving no empty folder behind after a removal (a run whose trials all finished
    leaves no trace)."""

    def __init__(self, base_path: str | Path) -> None:
        super().__init__(base_path)
        self.base_path = Path(base_path)

    def _path(self, artifact_id: str) -> Path:
        path = (self.base_path / artifact_id).resolve()
        if self.base_path.resolve() not in path.parents:
            raise ValueError(f"invalid artifact id {artifact_id!r}")
        return path

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self._path(artifact_id)
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                prefix = path.name + "."  # remove() finds what a killed write left
                handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
                break
            except FileNotFoundError:  # another worker's remove() took the empty folder
                if attempt == 2:
                    raise
        try:
            os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 would hide it from others
            with os.fdopen(handle, "wb") as tmp:
                while chunk := content_body.read(1 << 20):
                    tmp.write(chunk)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def remove(self, artifact_id: str) -> None:
        path = self._path(artifact_id)
        for leftover in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
            leftover.unlink(missing_ok=True)  # of a write killed halfway
        try:
            path.unlink()
        except FileNotFoundError:
            raise ArtifactNotFound(artifact_id) from None
        base = self.base_path.resolve()
        for folder in path.parents:  # up to the store's own folder, included
            if folder != base and base not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:  # not empty: other trials' or other studies' artifacts
                break


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class PrefixedArtifactStore:
    """Another store's artifacts under ``prefix/`` (an S3 bucket shared with other data)."""

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self.store, self.prefix = store, prefix.strip("/") + "/"

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def open_artifact_store(url: str) -> ArtifactStore:
    """The store of ``url``: ``s3://bucket[/prefix]`` or a folder (made on first write).

    S3's endpoint and credentials come from boto3's standard sources (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ..., ``~/.aws``), so MinIO or any S3-compatible store works. The
    bucket is checked here, so a wrong name or endpoint fails before anything is trained.

    Raises:
        HpsearchError: an unknown scheme, boto3 missing, or a bucket that cannot be reached.
    """
    if url.startswith("s3://"):
        return _open_s3(url)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise HpsearchError(f"--artifacts: unknown scheme {scheme}://; use a folder or s3://")
    return FolderArtifactStore(url)


def _open_s3(url: str) -> ArtifactStore:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise HpsearchError(f"--artifacts {url}: no bucket name (s3://bucket/prefix)")
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
        from optuna.artifacts import Boto3ArtifactStore
    except ImportError:
        raise HpsearchError(
            "s3:// artifact stores need boto3: pip install 'hpsearch[s3]'"
        ) from None
    # boto3's 60 s timeouts would stall every checkpoint for minutes while S3 is away;
    # a checkpoint given up on costs only a retry's head start.
    config = botocore.config.Config(connect_timeout=5, read_timeout=30)
    client = boto3.client("s3", config=config)
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as error:
        raise describe_error(error, f"--artifacts {url}", bucket) from None
    store: ArtifactStore = Boto3ArtifactStore(bucket, client)
    return PrefixedArtifactStore(store, prefix) if prefix.strip("/") else store


def store_errors() -> tuple[type[Exception], ...]:
    """What a store's reads and writes raise when its disk or its endpoint fails."""
    try:
        import botocore.exceptions
    except ImportError:
        return (OSError,)
    return (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


def describe_error(error: Exception, what: str, bucket: str = "") -> HpsearchError:
    """``error`` of an S3 call as one line: ``Unavailable`` (exit 75) when the endpoint
    could not be reached or failed (5xx), a plain error (bad input) otherwise."""
    import botocore.exceptions

    if isinstance(error, botocore.exceptions.ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status == 404 and bucket:
            return HpsearchError(f"{what}: bucket {bucket!r} does not exist")
        kind = Unavailable if status >= 500 else HpsearchError
        return kind(f"{what}: {error}")
    if isinstance(
        error, botocore.exceptions.ConnectionError | botocore.exceptions.ReadTimeoutError
    ):
        return Unavailable(f"{what}: {error}")
    if isinstance(error, botocore.exceptions.BotoCoreError):  # no credentials, a bad URL
        return HpsearchError(f"{what}: {error}")
    raise error


def upload_files(study: optuna.Study, store: ArtifactStore, paths: list[Path]) -> dict[str, str]:
    """Upload ``paths`` to ``store`` as ``study``'s artifacts (Optuna's ``upload_artifact``:
    optuna-dashboard lists them on the study's page); their ids by file name."""
    ids = {}
    for path in paths:
        try:
            ids[path.name] = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=study
            )
        except store_errors() as error:
            if isinstance(error, OSError):
                raise HpsearchError(f"cannot upload {path.name}: {error}") from None
            raise describe_error(error, f"cannot upload {path.name}") from None
    return ids


def read_artifact(store: ArtifactStore, artifact_id: str) -> bytes:
    with contextlib.closing(store.open_reader(artifact_id)) as reader:
        return reader.read()
