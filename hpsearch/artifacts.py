"""The artifact store (``--artifacts``): where training checkpoints and finalized models live,
a folder or ``s3://bucket/prefix``, through Optuna's artifact stores.

Optuna's stores are used as they are, so optuna-dashboard serves a study's finalized model
from the same store. Two small additions, each for one reason: folder writes are atomic (a
worker killed mid-write must not tear the checkpoint its retry resumes from), and an S3 store
may live under a key prefix (Optuna's writes at the bucket's root).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from hpsearch.errors import HpsearchError, Unavailable

__all__ = ["ArtifactNotFound", "ArtifactStore", "open_artifact_store"]


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

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self._get_filepath(artifact_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as tmp:
                while chunk := content_body.read(1 << 20):
                    tmp.write(chunk)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def remove(self, artifact_id: str) -> None:
        path = self._get_filepath(artifact_id)
        super().remove(artifact_id)
        base = self.base_path.resolve()
        for folder in path.resolve().parents:  # up to the store's own folder, included
            if folder != base and base not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:  # not empty: other trials' or other studies' artifacts
                break


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
        import botocore.exceptions
        from optuna.artifacts import Boto3ArtifactStore
    except ImportError:
        raise HpsearchError(
            "s3:// artifact stores need boto3: pip install 'hpsearch[s3]'"
        ) from None
    client = boto3.client("s3")
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason = "does not exist" if status == 404 else f"is not accessible ({status})"
        raise HpsearchError(f"--artifacts {url}: bucket {bucket!r} {reason}") from None
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ReadTimeoutError,
    ) as error:
        raise Unavailable(f"--artifacts {url}: {error}") from None
    except botocore.exceptions.BotoCoreError as error:  # no credentials, a bad endpoint URL
        raise HpsearchError(f"--artifacts {url}: {error}") from None
    store: ArtifactStore = Boto3ArtifactStore(bucket, client)
    return PrefixedArtifactStore(store, prefix) if prefix.strip("/") else store
