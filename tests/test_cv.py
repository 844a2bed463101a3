"""k-fold cross-validation: the folds against scikit-learn's StratifiedKFold, `dltrain cv` end to
end (sequential and with launcher=joblib), its summary files, and bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

from dltrain.data import DATASETS
from dltrain.data.base import fold_split, quantile_bins
from tests.conftest import assert_one_line_exit_2
from tests.test_cli import dltrain
from tests.test_sweep import in_process

TINY = ("trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.threads=1", "trainer.progress=none")


def raw(x: torch.Tensor, mean, std) -> np.ndarray:
    return (x.double() * torch.tensor(std, dtype=torch.float64) + torch.tensor(mean, dtype=torch.float64)).numpy()


@pytest.mark.parametrize(("name", "k"), [("digits", 5), ("wine", 3), ("diabetes", 4)])
def test_folds_are_scikit_learns_stratified_k_fold_of_train_and_val_and_the_test_split_stays_out(name, k):
    data = DATASETS.build({"name": name}, key="data")
    pool_x = np.concatenate([raw(data.train.x, data.x_mean, data.x_std), raw(data.val.x, data.x_mean, data.x_std)])
    pool_y = torch.cat([data.train.y, data.val.y]).numpy()
    regression = data.y_mean is not None
    if regression:
        pool_y = pool_y * np.asarray(data.y_std) + np.asarray(data.y_mean)
    strata = quantile_bins(pool_y) if regression else pool_y
    expected = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=0).split(pool_x, strata))
    seen = []
    for fold in range(k):
        f = fold_split(data, k, fold, seed=0)
        train_idx, val_idx = expected[fold]
        np.testing.assert_allclose(raw(f.val.x, f.x_mean, f.x_std), pool_x[val_idx], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(raw(f.train.x, f.x_mean, f.x_std), pool_x[train_idx], rtol=1e-5, atol=1e-4)
        got_y = f.val.y.numpy() * np.asarray(f.y_std) + np.asarray(f.y_mean) if regression else f.val.y.numpy()
        np.testing.assert_allclose(got_y, pool_y[val_idx], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(raw(f.test.x, f.x_mean, f.x_std), raw(data.test.x, data.x_mean, data.x_std), rtol=1e-5, atol=1e-4)  # same test examples
        axis = 0 if data.kind == "table" else None  # standardised on the fold's own training part, as the builder does
        assert np.allclose(f.train.x.double().numpy().mean(axis), 0, atol=1e-4) and np.allclose(f.train.x.double().numpy().std(axis), 1, atol=1e-3)
        seen.append(val_idx)
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(pool_y)))  # every example validates exactly once


def test_bad_cross_validation_settings_are_one_line_exit_2(capsys, tmp_path):
    run = f"hydra.run.dir={tmp_path / 'run'}"
    assert_one_line_exit_2(in_process(capsys, "cv.k=1", run), "cv.k=1", "2 and more")
    assert_one_line_exit_2(in_process(capsys, "cv.k=3", "cv.fold=3", run), "cv.fold=3", "0 to 2")
    assert_one_line_exit_2(in_process(capsys, "cv.fold=1", run), "cv.fold=1", "cv.k=0")
    assert_one_line_exit_2(in_process(capsys, "cv.k=3", "data=sine", run), "cv.k=3", "future into its past")
    assert_one_line_exit_2(in_process(capsys, "cv.k=50", "data=iris", run), "cv.k=50", "smallest class", "2 to ")
    assert_one_line_exit_2(in_process(capsys, "cv", "k=1"), "k=1", "2 or more")
    assert_one_line_exit_2(in_process(capsys, "cv", "k=five"), "k=five")
    assert_one_line_exit_2(in_process(capsys, "cv", "optim.lr=0.1,0.01"), "optim.lr=0.1,0.01", "not a grid")
    assert_one_line_exit_2(in_process(capsys, "cv", "cv.fold=2"), "cv.fold=2", "every fold")
    assert_one_line_exit_2(in_process(capsys, "cv", "summarize", str(tmp_path)), "holds no cross-validation folds")
    assert_one_line_exit_2(in_process(capsys, "sweep.objective=cv_val_accuracy", run), "sweep.objective='cv_val_accuracy'", "needs cv.k=K")
    assert not (tmp_path / "run").exists()


def folds_of(cv_dir) -> list[dict]:
    return [json.loads((cv_dir / str(i) / "summary.json").read_text()) for i in range(len(list(cv_dir.glob("[0-9]*"))))]


def test_dltrain_cv_trains_every_fold_and_summarises_them(tmp_path):
    result = dltrain("cv", "k=3", *TINY, "hydra.sweep.dir=out", cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    cv_dir = tmp_path / "out"
    assert {p.name for p in cv_dir.iterdir()} >= {"0", "1", "2", "cv.csv", "cv.json", "cv.png"}
    summaries = folds_of(cv_dir)
    assert [s["cv"] for s in summaries] == [{"k": 3, "fold": i} for i in range(3)]
    report = json.loads((cv_dir / "cv.json").read_text())
    assert report["k"] == 3 and report["completed"] == 3 and [f["fold"] for f in report["folds"]] == [0, 1, 2]
    for metric in ("val_loss", "val_accuracy"):
        values = [s["best"][metric] for s in summaries]
        assert report["mean"][metric] == pytest.approx(np.mean(values)) and report["std"][metric] == pytest.approx(np.std(values))
    assert report["mean"]["test_accuracy"] == pytest.approx(np.mean([s["test"]["accuracy"] for s in summaries]))
    table = list(csv.DictReader((cv_dir / "cv.csv").open()))
    assert [r["fold"] for r in table] == ["0", "1", "2", "mean", "std"] and float(table[3]["val_loss"]) == pytest.approx(report["mean"]["val_loss"])
    assert "3-fold cross-validation: 3 of 3 folds finished" in result.stderr and "cv.csv, cv.json, cv.png" in result.stderr
    configs = [(cv_dir / str(i) / "config.yaml").read_text() for i in range(3)]
    assert all(f"fold: {i}" in c and "k: 3" in c for i, c in enumerate(configs))
    # the same held-out test split in every fold; validation splits that differ
    assert {s["dataset"]["sizes"]["test"] for s in summaries} == {360} and sum(s["dataset"]["sizes"]["val"] for s in summaries) == 1437
    assert len({s["best"]["val_loss"] for s in summaries}) == 3

    (cv_dir / "cv.json").unlink()
    code = dltrain("cv", "summarize", "out", cwd=tmp_path)
    assert code.returncode == 0, code.stderr
    assert json.loads((cv_dir / "cv.json").read_text()) == report


@pytest.mark.slow
def test_cv_with_the_joblib_launcher_trains_the_same_folds_in_parallel(tmp_path):
    one = dltrain("cv", "k=3", *TINY, "hydra.sweep.dir=seq", cwd=tmp_path)
    par = dltrain("cv", "k=3", "launcher=joblib", *TINY, "hydra.sweep.dir=par", cwd=tmp_path)
    assert one.returncode == 0 and par.returncode == 0, one.stderr + par.stderr
    seq, joblib = folds_of(tmp_path / "seq"), folds_of(tmp_path / "par")
    assert [s["weights_sha256"] for s in seq] == [s["weights_sha256"] for s in joblib]
    assert json.loads((tmp_path / "par" / "cv.json").read_text())["mean"] == json.loads((tmp_path / "seq" / "cv.json").read_text())["mean"]


@pytest.mark.slow
def test_a_sweep_can_optimise_the_mean_over_folds(tmp_path):
    """sweep.objective=cv_val_accuracy with cv.k=3: each job trains 3 folds; the sweep ranks jobs by their mean."""
    result = dltrain("-m", "optim.lr=0.001,0.01", "cv.k=3", "sweep.objective=cv_val_accuracy", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert [r["status"] for r in table] == ["completed", "completed"] and {"cv_val_accuracy", "cv_val_loss"} <= set(table[0])
    for row in table:
        job = tmp_path / row["run_dir"]
        folds = [json.loads((job / f"fold-{i}" / "summary.json").read_text()) for i in range(3)]
        assert float(row["cv_val_accuracy"]) == pytest.approx(np.mean([f["best"]["val_accuracy"] for f in folds]), abs=1e-6)
        assert json.loads((job / "cv.json").read_text())["completed"] == 3
    assert float(table[0]["cv_val_accuracy"]) >= float(table[1]["cv_val_accuracy"])
    assert yaml_value(tmp_path / "sweep" / "best.yaml", "objective") == "cv_val_accuracy"


def yaml_value(path, key):
    import yaml

    return yaml.safe_load(path.read_text())[key]
