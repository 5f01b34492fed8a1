"""The artifact store (``--artifacts``): a folder, or S3 on a real S3-compatible server (moto's
standalone server on loopback, not a mock of boto3)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import torch
from optuna.artifacts import get_all_artifact_meta
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.errors import HpsearchError
from hpsearch.results.model_files import load_model
from hpsearch.search.checkpoints import CheckpointStore
from hpsearch.search.study_file import load_study_file
from hpsearch.storage.artifacts import open_artifact_store
from hpsearch.storage.optuna_internals import study_id
from hpsearch.training.config import TrainState
from tests.servers import Bucket


def _state(epoch: int) -> TrainState:
    torch.manual_seed(epoch)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    return TrainState(
        epoch=epoch,
        train_loss=0.5,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=None,
        generator=torch.Generator().get_state(),
        rng=torch.get_rng_state(),
    )


def test_folder_store_writes_atomically_and_leaves_no_empty_folders(tmp_path: Path) -> None:
    store = CheckpointStore(open_artifact_store(str(tmp_path / "art")), "my study/1")
    store.save(3, _state(2), tag="a")
    store.save(3, _state(4), tag="a")  # replaces the last
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [Path("art/checkpoints/my_study_1/trial-3.pt")]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / files[0]).stat().st_mode & 0o777 == 0o666 & ~umask  # readable by others
    loaded = store.load(3, tag="a")
    assert loaded is not None and loaded.epoch == 4
    assert store.load(3, tag="another trial") is None and store.load(9, tag="a") is None
    # A worker killed mid-write leaves its temporary file; the trial's end removes it too.
    (tmp_path / "art/checkpoints/my_study_1/trial-3.pt.abc123.tmp").write_bytes(b"half")
    store.delete(3)
    store.delete(3)  # already gone: no error
    assert list(tmp_path.iterdir()) == []  # not even the store's empty folder


def test_s3_store_round_trip_under_a_prefix(s3_bucket: Bucket) -> None:
    store = CheckpointStore(open_artifact_store(s3_bucket.url("team/run1")), "usps")
    assert store.load(0, tag="t") is None
    store.save(0, _state(1), tag="t")
    store.save(0, _state(5), tag="t")
    assert s3_bucket.keys() == ["team/run1/checkpoints/usps/trial-0.pt"]  # the latest only
    loaded = store.load(0, tag="t")
    assert loaded is not None and loaded.epoch == 5
    assert torch.equal(loaded.model["weight"], _state(5).model["weight"])
    store.delete(0)
    assert s3_bucket.keys() == []


def test_bad_artifact_urls_fail_in_one_line(
    s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(HpsearchError, match="unknown scheme gs://"):
        open_artifact_store("gs://bucket/x")
    with pytest.raises(HpsearchError, match="no bucket name"):
        open_artifact_store("s3:///x")
    with pytest.raises(HpsearchError, match="bucket 'nope-nope' does not exist"):
        open_artifact_store("s3://nope-nope/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(HpsearchError, match="Could not connect") as caught:
        open_artifact_store(s3_bucket.url())
    assert caught.value.exit_code == 75  # may pass: worth retrying


def test_run_with_a_missing_bucket_writes_nothing(
    tiny_usps_file: Path, sqlite_url: str, s3_bucket: Bucket
) -> None:
    result = CliRunner().invoke(
        app,
        ["run", str(tiny_usps_file), "--storage", sqlite_url, "--artifacts", "s3://missing/x"],
    )
    assert result.exit_code == 2 and "bucket 'missing' does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_without_boto3_s3_asks_for_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['boto3'] = None\n"
        "from hpsearch.storage.artifacts import open_artifact_store\n"
        "open_artifact_store('s3://bucket/x')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'hpsearch[s3]'" in result.stderr


def _dashboard_get(storage: str, store: object, path: str) -> tuple[str, bytes]:
    """GET ``path`` from optuna-dashboard's WSGI app serving ``store``."""
    import optuna_dashboard

    wsgi = optuna_dashboard.wsgi(storage, artifact_store=store)  # type: ignore[arg-type]
    environ: dict = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    answer: list[str] = []
    body = b"".join(wsgi(environ, lambda status, headers, *_: answer.append(status)))  # type: ignore[arg-type]
    return answer[0], body


@pytest.mark.slow
def test_finalize_uploads_to_s3_and_load_model_reads_either(
    tiny_usps_file: Path, sqlite_url: str, s3_bucket: Bucket
) -> None:
    runner = CliRunner()
    url = s3_bucket.url("models")
    run = ["run", str(tiny_usps_file), "--trials", "2", "--storage", sqlite_url]
    assert runner.invoke(app, [*run, "--artifacts", url]).exit_code == 0
    assert s3_bucket.keys() == []  # finished trials leave no checkpoint behind
    # The study named by its file, as a cluster's settings do.
    finalize = ["finalize", str(tiny_usps_file), "--storage", sqlite_url, "--top-k", "1"]
    result = runner.invoke(app, [*finalize, "--seeds", "2", "--artifacts", url])
    assert result.exit_code == 0, result.output
    assert f"artifact store {url}" in result.output

    study = optuna.load_study(study_name="tiny-usps", storage=sqlite_url)
    assert study.user_attrs["finalize"]["artifact_store"] == url
    ids = study.user_attrs["finalize"]["artifacts"]
    assert sorted(ids) == ["ensemble.pt", "finalize.json", "model.pt"]
    # Beside the files, the retrains' models, kept for a finalize run again or joined.
    retrained = [key for key in s3_bucket.keys() if key.startswith("models/retrains/")]
    assert len(retrained) == 2 and all(key.endswith(".pt") for key in retrained)
    kept = sorted(set(s3_bucket.keys()) - set(retrained))
    assert kept == sorted(f"models/{i}" for i in ids.values())
    names = {meta.filename: meta.artifact_id for meta in get_all_artifact_meta(study)}
    assert names == ids  # Optuna's own listing, which the dashboard reads

    config = load_study_file(tiny_usps_file)
    x = config.problem.load_data(None, **config.data).x_test[:50]
    local, record = load_model("final-tiny-usps")
    # The store finalize used is recorded on the study: no --artifacts needed to read it.
    remote, remote_record = load_model(study="tiny-usps", storage=sqlite_url)
    assert remote_record == record
    assert torch.equal(local(x), remote(x))
    both, _ = load_model(study="tiny-usps", storage=sqlite_url, artifacts=url, ensemble=True)
    assert torch.equal(load_model("final-tiny-usps", ensemble=True)[0](x), both(x))

    # optuna-dashboard serves the finalized model from the store.
    store, path = open_artifact_store(url), f"/artifacts/{study_id(study)}"
    status, body = _dashboard_get(sqlite_url, store, f"{path}/{ids['finalize.json']}")
    assert status.startswith("200") and json.loads(body)["study"] == "tiny-usps"
    status, body = _dashboard_get(sqlite_url, store, f"{path}/{ids['model.pt']}")
    state = torch.load(io.BytesIO(body), weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in local.state_dict().items())


def test_load_model_of_a_study_not_finalized_into_a_store(
    tiny_usps_file: Path, sqlite_url: str
) -> None:
    result = CliRunner().invoke(app, ["create", str(tiny_usps_file), "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    with pytest.raises(HpsearchError, match="not finalized into an artifact store"):
        load_model(study="tiny-usps", storage=sqlite_url, artifacts="art")
    with pytest.raises(TypeError):
        load_model()
