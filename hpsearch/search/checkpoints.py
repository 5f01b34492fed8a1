"""Per-trial training checkpoints in the artifact store, so a retried trial resumes instead of
starting over, on this machine or another one sharing the store."""

from __future__ import annotations

import io
import logging
import re
from dataclasses import fields

import torch

from hpsearch.storage.artifacts import ArtifactNotFound, ArtifactStore, read_artifact, store_errors
from hpsearch.training import TrainState

logger = logging.getLogger(__name__)


class CheckpointStore:
    """One artifact per trial series (a trial and its retries), ``checkpoints/<study>/
    trial-<series>.pt``: each save replaces the last, and a finished trial removes it.

    A checkpoint that cannot be written or read costs a retry its head start, never the trial:
    errors are logged, not raised.
    """

    def __init__(self, store: ArtifactStore, study_name: str) -> None:
        self.store = store
        self.prefix = "checkpoints/" + re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)

    def key(self, series: int) -> str:
        return f"{self.prefix}/trial-{series}.pt"

    def save(self, series: int, state: TrainState, tag: str = "") -> None:
        """Write ``state``; ``tag`` names what it belongs to (the trial's configuration and
        seed), and ``load`` returns it only for the same tag."""
        payload = {field.name: getattr(state, field.name) for field in fields(state)}
        payload["tag"] = tag
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        buffer.seek(0)
        try:
            self.store.write(self.key(series), buffer)
        except store_errors() as error:  # a full disk, an unreachable S3 endpoint
            logger.warning("could not save checkpoint %s: %s", self.key(series), error)

    def load(self, series: int, tag: str = "") -> TrainState | None:
        """The checkpoint of ``series`` if there is one and it carries ``tag``: one left by
        another study of the same name (another database) is ignored, not resumed."""
        key = self.key(series)
        try:
            data = read_artifact(self.store, key)
        except ArtifactNotFound:
            return None
        except store_errors() as error:
            logger.warning("could not read checkpoint %s: %s", key, error)
            return None
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            found = payload.pop("tag", "")
            state = TrainState(**payload)
        except Exception as error:  # torch.load's errors on a damaged file have many types
            logger.warning("ignoring unreadable checkpoint %s: %s", key, error)
            return None
        if found != tag:
            logger.warning("ignoring checkpoint %s: it belongs to another trial", key)
            return None
        return state

    def delete(self, series: int) -> None:
        try:
            self.store.remove(self.key(series))
        except ArtifactNotFound:
            pass
        except store_errors() as error:
            logger.warning("could not remove checkpoint %s: %s", self.key(series), error)
