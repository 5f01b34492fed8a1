"""Per-trial training checkpoints, so a retried trial resumes instead of starting over."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import fields
from pathlib import Path

import torch

from hpsearch.training import TrainState

logger = logging.getLogger(__name__)


class CheckpointStore:
    """One file per trial series (a trial and its retries) under ``folder/<study>/``.

    Writes are atomic (temporary file, then rename), so a worker killed mid-write leaves the
    previous checkpoint intact. Remote workers share checkpoints only through a shared folder;
    elsewhere a retry starts from scratch.
    """

    def __init__(self, folder: str | Path, study_name: str) -> None:
        safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)
        self.folder = Path(folder) / safe_name

    def path(self, series: int) -> Path:
        return self.folder / f"trial-{series}.pt"

    def save(self, series: int, state: TrainState, tag: str = "") -> None:
        """Write ``state``; ``tag`` names what it belongs to (the trial's configuration and
        seed), and ``load`` returns it only for the same tag."""
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {field.name: getattr(state, field.name) for field in fields(state)}
        payload["tag"] = tag
        handle, tmp_name = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as tmp:
                torch.save(payload, tmp)
            os.replace(tmp_name, self.path(series))
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def load(self, series: int, tag: str = "") -> TrainState | None:
        """The checkpoint of ``series`` if there is one and it carries ``tag``: a file left
        by another study of the same name (another database) is ignored, not resumed."""
        path = self.path(series)
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            found = payload.pop("tag", "")
            state = TrainState(**payload)
        except Exception as error:  # a damaged checkpoint costs a restart, not the trial
            logger.warning("ignoring unreadable checkpoint %s: %s", path, error)
            return None
        if found != tag:
            logger.warning("ignoring checkpoint %s: it belongs to another trial", path)
            return None
        return state

    def delete(self, series: int) -> None:
        self.path(series).unlink(missing_ok=True)
        # Leave no empty folders behind once a study's last checkpoint is gone.
        for folder in (self.folder, self.folder.parent):
            try:
                folder.rmdir()
            except OSError:  # not empty (other trials, other studies), or never made
                break
