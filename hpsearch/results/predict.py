"""Predictions of a finalized model on new rows of a user's table or new images:
``Predictor`` encodes them as the training data were (the encoding stored in
``finalize.json``) and answers in the target's units and labels; ``hpsearch predict`` writes
them to a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from hpsearch.errors import HpsearchError
from hpsearch.problems import get_problem
from hpsearch.problems.images import decode_images, image_files
from hpsearch.problems.table_encoder import TableEncoder
from hpsearch.problems.tabular import read_table
from hpsearch.results.model_files import MODEL_FILES, RESULT_FILE, load_model
from hpsearch.storage.files import replacing
from hpsearch.training import predict

OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")


class Predictor:
    """A finalized model of a user's table and what it needs to predict on new rows."""

    def __init__(self, model: nn.Module, record: dict[str, Any]) -> None:
        preprocess = _preprocess(record)
        problem = get_problem(record["problem"])
        calibration = record.get("calibration")
        if calibration and problem.calibration is not None:  # the validation-fitted sigma
            model = problem.calibration.apply(model, float(calibration["scale"])).eval()
        self.model, self.record = model, record
        table, images = preprocess.get("table"), preprocess.get("images")
        self.encoder = TableEncoder.from_json(table) if table is not None else None
        self.images: dict[str, Any] | None = images
        self.target: str = preprocess["target"]
        self.classes: list[str] = list(preprocess.get("classes") or [])
        scale = record.get("target") or {}
        self.mean, self.std = float(scale.get("mean", 0.0)), float(scale.get("std", 1.0))

    def predict(self, rows: pd.DataFrame | np.ndarray | torch.Tensor) -> pd.DataFrame:
        """One row of predictions per input row, in its order: ``predicted_<target>`` (the
        class name, or the value in the target's units), ``probability_<class>`` for each
        class, ``predicted_<target>_std`` for a Gaussian regressor. A DataFrame needs the
        training table's feature columns (a target column in it is ignored); an array is
        rows of those columns, in their order; a tensor is rows already encoded.

        Raises:
            HpsearchError: no rows, feature columns missing from ``rows``, or a value a
                column cannot take.
        """
        if isinstance(rows, np.ndarray) and self.encoder is not None:
            columns = self.encoder.columns
            if rows.ndim != 2 or rows.shape[1] != len(columns):
                raise HpsearchError(
                    f"an array of shape {rows.shape} is not rows of the {len(columns)} columns "
                    "the model was trained on; give a DataFrame of them"
                )
            rows = pd.DataFrame(rows, columns=list(columns))
        if not isinstance(rows, pd.DataFrame | torch.Tensor):
            raise HpsearchError(
                f"predict takes a DataFrame of the table's columns, not a {type(rows).__name__}"
            )
        if len(rows) == 0:
            raise HpsearchError("there are no rows to predict")
        if isinstance(rows, pd.DataFrame):
            if self.encoder is None:
                raise HpsearchError("an image model predicts on images: give an image folder")
            missing = [name for name in self.encoder.columns if name not in rows.columns]
            if missing:
                raise HpsearchError(
                    f"the rows lack column(s) {', '.join(map(repr, missing[:10]))} that the "
                    "model was trained on"
                )
            x = self.encoder.transform(rows)
        else:
            x = rows.float()
        return self._decode(predict(self.model, x).double())

    def predict_images(self, folder: str | Path) -> pd.DataFrame:
        """Predictions for every image below ``folder`` (sorted by path, in a ``file``
        column), resized and converted as the training images were.

        Raises:
            HpsearchError: a model of a table, no image in ``folder``, a file not an image.
        """
        if self.images is None:
            raise HpsearchError("a table's model predicts on rows: give a .csv, .parquet or .npz")
        folder = Path(folder)
        files = image_files(folder)
        if not files:
            raise HpsearchError(f"{folder}: no image files")
        spec = self.images
        pixels = decode_images(files, folder, spec["size"], spec["channels"]) / 255.0
        mean = np.array(spec["mean"])[None, :, None, None]
        std = np.array(spec["std"])[None, :, None, None]
        x = torch.tensor((pixels - mean) / std, dtype=torch.float32)
        frame = self._decode(predict(self.model, x).double())
        frame.insert(0, "file", [str(Path(f).relative_to(folder)) for f in files])
        return frame

    def _decode(self, output: torch.Tensor) -> pd.DataFrame:
        """The model's outputs in the target's units and labels."""
        name = f"predicted_{self.target}"
        if self.classes:
            probabilities = torch.softmax(output, dim=-1).numpy()
            frame = pd.DataFrame({name: np.array(self.classes)[probabilities.argmax(axis=1)]})
            for k, label in enumerate(self.classes):
                frame[f"probability_{label}"] = probabilities[:, k]
            return frame
        if output.dim() == 2:  # a Gaussian regressor: mean and log variance
            mean = output[:, 0] * self.std + self.mean
            sigma = torch.exp(0.5 * output[:, 1]) * self.std
            return pd.DataFrame({name: mean.numpy(), f"{name}_std": sigma.numpy()})
        return pd.DataFrame({name: (output * self.std + self.mean).numpy()})


def _preprocess(record: dict[str, Any]) -> dict[str, Any]:
    """The record's ``preprocess``; refused without a table's or images' encoding."""
    preprocess: dict[str, Any] = record.get("preprocess") or {}
    if "table" not in preprocess and "images" not in preprocess:
        raise HpsearchError(
            f"the model of study {record.get('study')!r} ({record.get('problem')}) holds no "
            "table or image encoding: predictions take models finalized from your own data "
            "(--data)"
        )
    return preprocess


def load_predictor(folder: str | Path, *, ensemble: bool = False) -> Predictor:
    """The ``Predictor`` of a ``finalize --out`` folder (``ensemble``: of its ensemble).

    Raises:
        HpsearchError: not a finalize folder, or a model without a table encoding.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HpsearchError(f"model folder {folder} does not exist (finalize --out writes one)")
    result = folder / RESULT_FILE
    if result.is_file():  # checked before the model is rebuilt
        _preprocess(json.loads(result.read_text()))
    model, record = load_model(folder, ensemble=ensemble)
    return Predictor(model, record)


def predict_file(folder: str | Path, rows: str | Path, out: str | Path, *, ensemble: bool) -> int:
    """Predictions of the model in ``folder`` for the table ``rows``, written to ``out``
    (CSV, or Parquet by its suffix); the number of rows.

    Raises:
        HpsearchError: a bad model folder, input table or output path.
    """
    rows, out = Path(rows), Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise HpsearchError(f"--out {out}: write predictions to a .csv or .parquet file")
    inputs = [rows, *(Path(folder) / name for name in MODEL_FILES)]
    if any(out.resolve() == path.resolve() for path in inputs):
        raise HpsearchError(f"--out {out} is one of the inputs; give another file")
    predictor = load_predictor(folder, ensemble=ensemble)
    frame = predictor.predict_images(rows) if rows.is_dir() else predictor.predict(read_table(rows))
    with replacing(out) as partial:
        if suffix == ".csv":
            frame.to_csv(partial, index=False)
        else:
            try:
                frame.to_parquet(partial, index=False)
            except ImportError as error:  # no pyarrow
                raise HpsearchError(f"cannot write {out}: {error}") from None
    return len(frame)
