"""A user's own data: tables (CSV, TSV, Parquet, JSON Lines), NumPy arrays and image folders.

The table preprocessing is checked against scikit-learn's ColumnTransformer on the same rows; the
image folder against the arrays it was written from; every source trains end to end, predicts on
raw files, and refuses bad input with one line and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import own_data
import pandas as pd
import pytest
import torch
from conftest import MNIST_TEST, NO_MNIST

from dltrain.config import validate
from dltrain.data import DATASETS
from dltrain.data.table import apply_prep, fit_prep, target_task
from dltrain.errors import UserError


@pytest.fixture
def cli(capsys):
    """cli(*args) -> (exit code, stdout, stderr) of `dltrain ARGS` run in this process."""
    from dltrain.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_line(result: tuple[int, str, str], *fragments: str) -> None:
    code, _, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def mixed_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Numbers with gaps, strings with gaps and a rare category, a boolean, an id and a date."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "customer": [f"c{i:05d}" for i in range(n)],
        "joined": pd.date_range("2020-01-01", periods=n, freq="D"),
        "age": rng.integers(18, 80, n).astype(float),
        "income": rng.lognormal(10, 0.5, n),
        "city": rng.choice(["paris", "lyon", "nice", "lille"], n, p=[0.5, 0.3, 0.19, 0.01]),
        "member": rng.random(n) > 0.5,
        "country": "fr",
    })
    frame.loc[rng.choice(n, 15, replace=False), "income"] = np.nan
    frame.loc[rng.choice(n, 10, replace=False), "city"] = None
    score = frame["age"] / 10 + np.log(frame["income"].fillna(20000)) + (frame["city"] == "paris") * 2 + frame["member"]
    frame["churned"] = np.where(score > score.median(), "yes", "no")
    frame["spend"] = score * 100 + rng.normal(0, 10, n)
    return frame


# --- preprocessing against scikit-learn -------------------------------------------------------


def test_preprocessing_equals_scikit_learns_column_transformer() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = mixed_frame()
    train, new = frame.iloc[:200], frame.iloc[200:].copy()
    new.loc[new.index[:3], "city"] = "marseille"  # unseen at training time
    numeric, categorical = ["age", "income"], ["city", "member"]
    prep = fit_prep(train, numeric, categorical, max_categories=3)  # city: paris, lyon + the rest grouped
    reference = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=3, sparse_output=False)), categorical),
    ])
    as_sklearn = lambda f: f.assign(city=f["city"].astype(object).where(f["city"].notna(), np.nan), member=f["member"].astype(str))  # noqa: E731
    reference.fit(as_sklearn(train))
    for part in (train, new):
        np.testing.assert_allclose(apply_prep(prep, part), reference.transform(as_sklearn(part)), rtol=1e-5, atol=1e-6)
    assert json.loads(json.dumps(prep)) == prep  # JSON, nothing pickled
    # columns in any order, extra columns ignored
    shuffled = new[list(reversed(new.columns))]
    np.testing.assert_array_equal(apply_prep(prep, shuffled), apply_prep(prep, new))


def test_the_target_decides_the_task() -> None:
    assert target_task(pd.Series(["a", "b", None])) == "classification"
    assert target_task(pd.Series([True, False])) == "classification"
    assert target_task(pd.Series([3, 5, 7, 3])) == "classification"
    assert target_task(pd.Series(np.arange(100))) == "regression"  # many integers: a count
    assert target_task(pd.Series([0.5, 1.5, 2.0])) == "regression"


# --- data=table ---------------------------------------------------------------------------------


def table(path: Path, target: str, **params) -> object:
    return DATASETS.build({"name": "table", "path": str(path), "target": target, **params})


def test_table_reads_csv_tsv_parquet_and_json_lines_alike(tmp_path) -> None:
    frame = mixed_frame().drop(columns=["joined"])
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    built = {s: table(tmp_path / f"t.{s}", "churned") for s in ("csv", "tsv", "parquet", "jsonl")}
    first = built["csv"]
    assert first.task == "classification" and first.class_names == ["no", "yes"]
    assert first.prep["features"][:2] == ["age", "income"] and "city=paris" in first.prep["features"]
    assert "customer (an id: one distinct value per row)" in first.note and "country (one value)" in first.note
    for other in built.values():
        for split in ("train", "val", "test"):
            torch.testing.assert_close(getattr(other, split).x, getattr(first, split).x)
            assert torch.equal(getattr(other, split).y, getattr(first, split).y)


def test_table_regression_and_its_choices(tmp_path) -> None:
    frame = mixed_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = table(tmp_path / "t.csv", "spend", drop=["churned"])
    assert data.task == "regression" and data.y_mean is not None
    gaps = int(frame[["income", "city"]].isna().any(axis=1).sum())
    assert "joined (dates or times)" in data.note and f"{gaps} rows with missing values imputed (25 values)" in data.note
    assert "churned" not in " ".join(data.prep["features"])
    chosen = table(tmp_path / "t.csv", "spend", features=["age", "city"])
    assert chosen.prep["features"][0] == "age" and len(chosen.in_shape) == 1 and chosen.in_shape[0] == 1 + 4
    dropped = table(tmp_path / "t.csv", "spend", drop=["churned"], missing="drop")
    assert sum(map(len, (dropped.train, dropped.val, dropped.test))) == 300 - gaps
    with pytest.raises(UserError, match=r"data.missing='error' is not allowed; .* row \d+ has no (income|city)"):
        table(tmp_path / "t.csv", "spend", drop=["churned"], missing="error")
    # task=regression reads a few integers as values, not classes
    frame.assign(stars=np.arange(300) % 5).to_csv(tmp_path / "stars.csv", index=False)
    assert table(tmp_path / "stars.csv", "stars").task == "classification"
    assert DATASETS.build({"name": "table", "path": str(tmp_path / "stars.csv"), "target": "stars"}, task="regression").task == "regression"


def test_table_trains_predicts_on_raw_rows_and_saves_its_preprocessing(train_run, cli, tmp_path) -> None:
    csv = own_data.iris_csv()
    summary, run = train_run("data=table", f"data.path={csv}", "data.target=species", "trainer.max_epochs=40", "seed=0")
    assert summary["data"] == "table" and summary["task"] == "classification" and summary["test"]["accuracy"] >= 0.9
    prep = json.loads((run / "preprocessing.json").read_text())
    assert prep["classes"] == ["setosa", "versicolor", "virginica"] and prep["target"] == "species"
    # the user's file with its columns shuffled and the target removed
    raw = pd.read_csv(csv)
    raw[["petal width (cm)", "flower_id", "sepal length (cm)", "petal length (cm)", "sepal width (cm)"]].to_csv(tmp_path / "new.csv", index=False)
    code, _, err = cli("predict", str(run), f"input={tmp_path / 'new.csv'}", f"output={tmp_path / 'p.csv'}")
    assert code == 0, err
    predicted = pd.read_csv(tmp_path / "p.csv")["pred"]
    assert (predicted.to_numpy() == raw["species"].to_numpy()).mean() >= 0.9
    one_line(cli("predict", str(run), f"input={tmp_path / 'p.csv'}"), "has no column 'sepal length (cm)'", "the run was trained on columns")
    # eval on a new labelled file: the same accuracy as the predictions above
    assert cli("eval", str(run), f"input={csv}")[0] == 0
    metrics = json.loads((run / "analysis" / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 150 and metrics["input"] == str(csv) and metrics["metrics"]["accuracy"] == pytest.approx((predicted.to_numpy() == raw["species"].to_numpy()).mean())
    raw.assign(species=raw["species"].replace("setosa", "rose")).to_csv(tmp_path / "odd.csv", index=False)
    one_line(cli("eval", str(run), f"input={tmp_path / 'odd.csv'}"), "species='rose' is not a class of this run; its classes: setosa, versicolor, virginica")


def raw_feed(frame: pd.DataFrame, prep: dict) -> tuple[np.ndarray, list[list[str]]]:
    """A user's raw rows as an exported table model takes them: the numeric columns as floats
    (NaN: missing), each categorical value as the string the file holds ("": missing)."""
    numeric = frame[[c["column"] for c in prep["numeric"]]].to_numpy(np.float32)
    rows = [["" if pd.isna(v) else str(v) for v in row] for row in frame[[c["column"] for c in prep["categorical"]]].itertuples(index=False)]
    return numeric, rows


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_table_model_takes_raw_columns_and_predicts_what_predict_does(train_run, cli, tmp_path, fmt) -> None:
    """Missing numbers and strings, a rare and an unseen category, columns in another order: the
    file computes the run's outputs on them, with preprocessing.json (scikit-learn's) inside."""
    frame = mixed_frame(400)
    frame.to_csv(tmp_path / "t.csv", index=False)
    _, run = train_run("data=table", f"data.path={tmp_path / 't.csv'}", "data.target=churned", "trainer.max_epochs=3")
    assert cli("export", str(run), f"format={fmt}")[0] == 0
    prep = json.loads((run / "preprocessing.json").read_text())
    new = mixed_frame(50, seed=1).drop(columns=["churned"]).iloc[:, ::-1]
    new.loc[0, "city"], new.loc[1, "income"], new.loc[2, "city"] = "marseille", np.nan, None  # unseen, missing, missing
    from dltrain.api import load_run

    model = load_run(run).model()
    with torch.no_grad():
        expected = model(torch.from_numpy(apply_prep(prep, new))).numpy()
    numeric, rows = raw_feed(new, prep)
    folder = run / "analysis" / "export"
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        assert sorted(i.name for i in session.get_inputs()) == ["city", "member", "numeric"]
        feed = {"numeric": numeric, **{c["column"]: np.array([r[j] for r in rows], dtype=object) for j, c in enumerate(prep["categorical"])}}
        got = session.run(None, feed)[0]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(folder / "model.pt"))(torch.from_numpy(numeric), rows).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    info = json.loads((folder / f"model.{fmt}.json").read_text())
    assert info["ok"] and info["columns"]["numeric"]["columns"] == ["age", "income", "spend"]
    assert [c["column"] for c in info["columns"]["categorical"]] == ["city", "member"] and "raw columns" in info["inputs"]


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
def test_a_table_of_one_kind_of_column_exports_to_onnx_with_one_input(train_run, cli, tmp_path, kind) -> None:
    frame = mixed_frame(300)[["age", "income", "churned"] if kind == "numeric" else ["city", "member", "churned"]]
    frame.to_csv(tmp_path / "t.csv", index=False)
    _, run = train_run("data=table", f"data.path={tmp_path / 't.csv'}", "data.target=churned", "trainer.max_epochs=2")
    code, out, err = cli("export", str(run), "format=onnx")
    assert code == 0 and "matches PyTorch" in out, err
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(str(run / "analysis" / "export" / "model.onnx"), providers=["CPUExecutionProvider"]).get_inputs()]
    assert names == (["numeric"] if kind == "numeric" else ["city", "member"])


def test_table_regression_trains_with_the_auto_loss(train_run, tmp_path) -> None:
    mixed_frame(600).to_parquet(tmp_path / "t.parquet")
    summary, _ = train_run("data=table", f"data.path={tmp_path / 't.parquet'}", "data.target=spend", "data.drop=[churned]", "trainer.max_epochs=30")
    assert summary["task"] == "regression" and summary["test"]["r2"] > 0.8


def test_loss_auto_follows_the_task(compose, tmp_path) -> None:
    mixed_frame().to_csv(tmp_path / "t.csv", index=False)
    on = lambda target, *more: validate(compose("data=table", f"data.path={tmp_path / 't.csv'}", f"data.target={target}", *more))  # noqa: E731
    assert on("churned").loss["name"] == "cross_entropy" and on("spend").loss["name"] == "mse"
    assert on("spend", "loss=huber").loss["name"] == "huber"
    with pytest.raises(UserError, match="loss=cross_entropy does not apply to task regression"):
        on("spend", "loss=cross_entropy")


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ([], ["data.path=None is not allowed", "give the file to train on"]),
        (["data.path=MISSING.csv", "data.target=y"], ["data.path='MISSING.csv' is not allowed; no such file"]),
        (["data.path=IRIS", "data.target=specis"], ["data.target='specis' is not allowed", "has no such column", "did you mean 'species'?"]),
        (["data.path=IRIS"], ["data.target=None is not allowed; name the column to predict"]),
        (["data.path=IRIS", "data.target=species", "data.features=[petal]"], ["data.features='petal' is not allowed", "has no such column; its columns: flower_id"]),
        (["data.path=ONECLASS", "data.target=y"], ["data.target='y' is not allowed; every labelled row", "one class"]),
        (["data.path=NOTES.txt", "data.target=y"], ["unknown file type '.txt'"]),
    ],
)
def test_table_bad_input_is_one_line(cli, tmp_path, monkeypatch, overrides, fragments) -> None:
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"x": [1.0, 2.0, 3.0] * 20, "y": ["a"] * 60}).to_csv(tmp_path / "one.csv", index=False)
    (tmp_path / "NOTES.txt").write_text("x,y\n")
    names = {"IRIS": str(own_data.iris_csv()), "ONECLASS": str(tmp_path / "one.csv")}
    args = [o.split("=", 1)[0] + "=" + names.get(o.split("=", 1)[1], o.split("=", 1)[1]) for o in overrides]
    one_line(cli("data=table", *args, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"), *fragments)
    assert not (tmp_path / "run").exists()


def test_an_edited_file_is_parsed_again(tmp_path) -> None:
    frame = mixed_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    first = table(tmp_path / "t.csv", "spend", drop=["churned"])
    frame.assign(spend=frame["spend"] * 2).to_csv(tmp_path / "t.csv", index=False)
    second = table(tmp_path / "t.csv", "spend", drop=["churned"])
    assert second.y_std[0] == pytest.approx(2 * first.y_std[0])


# --- data=arrays ------------------------------------------------------------------------------


def test_arrays_shape_decides_the_kind_and_targets_the_task(tmp_path) -> None:
    from sklearn.datasets import load_diabetes, load_digits

    digits = DATASETS.build({"name": "arrays", **own_data.params("arrays")})
    assert (digits.kind, digits.task, digits.in_shape, digits.num_classes) == ("image", "classification", (1, 8, 8), 10)
    reference = DATASETS.build({"name": "digits"})  # the same images, split the same way
    torch.testing.assert_close(digits.test.x, reference.test.x, atol=1e-5, rtol=1e-5)
    d = load_diabetes()
    np.save(tmp_path / "x.npy", d.data)
    np.save(tmp_path / "y.npy", d.target)
    diabetes = DATASETS.build({"name": "arrays", "path": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy")})
    assert (diabetes.kind, diabetes.task, diabetes.in_shape) == ("table", "regression", (10,))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12, 3)).astype(np.float32)
    np.savez(tmp_path / "seq.npz", inputs=x, labels=np.where(x[:, :, 0].sum(1) > 0, "up", "down"))
    seq = DATASETS.build({"name": "arrays", "path": str(tmp_path / "seq.npz"), "x": "inputs", "y": "labels"})
    assert (seq.kind, seq.task, seq.in_shape, seq.class_names) == ("sequence", "classification", (12, 3), ["down", "up"])
    assert DATASETS.build({"name": "arrays", "path": str(tmp_path / "seq.npz"), "x": "inputs", "y": "labels", "kind": "image"}).in_shape == (1, 12, 3)
    assert load_digits().images.shape[1:] == (8, 8)


def test_arrays_train_and_refuse_what_would_need_unpickling(train_run, cli, tmp_path) -> None:
    summary, _ = train_run("data=arrays", *own_data.overrides("arrays"), "model=cnn", "trainer.max_epochs=3")
    assert summary["task"] == "classification" and summary["test"]["accuracy"] > 0.9
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.arange(10))
    one_line(cli("data=arrays", f"data.path={tmp_path / 'objects.npy'}", f"data.y={tmp_path / 'y.npy'}", f"hydra.run.dir={tmp_path / 'r'}"), "nothing is unpickled")
    np.savez(tmp_path / "xy.npz", inputs=np.zeros((10, 3)), y=np.arange(10))
    one_line(cli("data=arrays", f"data.path={tmp_path / 'xy.npz'}", f"hydra.run.dir={tmp_path / 'r'}"), "data.x='x' is not allowed", "its arrays: inputs, y")
    np.savez(tmp_path / "short.npz", x=np.zeros((10, 3)), y=np.arange(9))
    one_line(cli("data=arrays", f"data.path={tmp_path / 'short.npz'}", f"hydra.run.dir={tmp_path / 'r'}"), "9 targets for 10 inputs")
    assert not (tmp_path / "r").exists()


# --- data=image_folder ----------------------------------------------------------------------------


def test_image_folder_reads_what_was_written(tmp_path) -> None:
    data = DATASETS.build({"name": "image_folder", **own_data.params("image_folder")})
    reference = DATASETS.build({"name": "arrays", **own_data.params("arrays")})  # the same uint8 images as an .npz
    assert (data.kind, data.task, data.in_shape, data.class_names) == ("image", "classification", (1, 8, 8), [str(i) for i in range(10)])
    assert sum(map(len, (data.train, data.val, data.test))) == 1797
    raw = lambda d, s: (getattr(d, s).x * d.x_std[0] + d.x_mean[0])  # noqa: E731
    # files are listed class by class, the arrays in their own order: compare the sorted pixels per class
    for c in range(10):
        ours = np.sort(torch.cat([raw(data, s)[getattr(data, s).y == c] for s in ("train", "val", "test")]).reshape(-1, 64).numpy() * 255, axis=0)
        theirs = np.sort(torch.cat([raw(reference, s)[getattr(reference, s).y == c] for s in ("train", "val", "test")]).reshape(-1, 64).numpy(), axis=0)
        np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_image_folder_splits_sizes_and_colour(tmp_path) -> None:
    rng = np.random.default_rng(0)
    grey = (rng.random((60, 10, 12)) * 255).astype(np.uint8)
    for split, rows in (("train", slice(0, 40)), ("test", slice(40, 60))):
        own_data.write_images(tmp_path / "split" / split, grey[rows], np.arange(60)[rows] % 2, names=["cat", "dog"])
    data = DATASETS.build({"name": "image_folder", "root": str(tmp_path / "split"), "val_fraction": 0.25})
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 20) and data.in_shape == (1, 10, 12)
    assert data.class_names == ["cat", "dog"] and "train/, val/ and test/" in data.note
    resized = DATASETS.build({"name": "image_folder", "root": str(tmp_path / "split"), "size": [6, 5], "channels": "3"})
    assert resized.in_shape == (3, 6, 5)
    colour = (rng.random((20, 7, 7, 3)) * 255).astype(np.uint8)
    own_data.write_images(tmp_path / "rgb", colour, np.arange(20) % 2)
    assert DATASETS.build({"name": "image_folder", "root": str(tmp_path / "rgb"), "test_fraction": 0.3, "val_fraction": 0.3}).in_shape == (3, 7, 7)


def test_image_folder_bad_input_is_one_line(cli, tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = (rng.random((20, 8, 8)) * 255).astype(np.uint8)
    own_data.write_images(tmp_path / "ok", images, np.arange(20) % 2)
    run = lambda root, *more: cli("data=image_folder", f"data.root={root}", "model=cnn", *more, f"hydra.run.dir={tmp_path / 'r'}")  # noqa: E731
    one_line(cli("data=image_folder", "model=cnn", f"hydra.run.dir={tmp_path / 'r'}"), "data.root=None is not allowed; give the folder of images")
    one_line(run(tmp_path / "nope"), "no such folder")
    (tmp_path / "ok" / "2").mkdir()
    one_line(run(tmp_path / "ok"), "class folder '2' holds no images")
    (tmp_path / "ok" / "2").rmdir()
    (tmp_path / "ok" / "1" / "broken.png").write_bytes(b"not a png")
    one_line(run(tmp_path / "ok"), "broken.png is not a readable image")
    (tmp_path / "ok" / "1" / "broken.png").unlink()
    own_data.write_images(tmp_path / "ok", (rng.random((1, 9, 8)) * 255).astype(np.uint8), [0], names=["0"])  # overwrites 00000.png in 0/
    one_line(run(tmp_path / "ok"), "images differ in size", "data.size=[H,W]")
    assert not (tmp_path / "r").exists()


def test_image_folder_trains_and_predicts_on_images_of_any_size(train_run, cli, tmp_path) -> None:
    from PIL import Image

    summary, run = train_run("data=image_folder", *own_data.overrides("image_folder"), "model=cnn", "trainer.max_epochs=3")
    assert summary["test"]["accuracy"] > 0.9
    sample = next((own_data.digits_folder() / "7").iterdir())
    Image.open(sample).resize((32, 32)).save(tmp_path / "big7.png")
    code, _, err = cli("predict", str(run), f"input={tmp_path / 'big7.png'}", f"output={tmp_path / 'p.csv'}")
    assert code == 0, err
    assert pd.read_csv(tmp_path / "p.csv")["pred"].tolist() == [7]


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_TEST.is_dir(), reason=NO_MNIST)
def test_mnist_written_as_png_folder_trains_a_cnn_as_well_as_data_mnist(train_run, tmp_path, one_torch_thread) -> None:
    from dltrain.data.mnist import read_idx

    def find(stem: str) -> Path:
        return next(p for p in (MNIST_TEST / f"{stem}.gz", MNIST_TEST / stem) if p.is_file())

    images, labels = read_idx(find("t10k-images-idx3-ubyte")), read_idx(find("t10k-labels-idx1-ubyte"))
    own_data.write_images(tmp_path / "mnist-png", images, labels)
    summary, _ = train_run("data=image_folder", f"data.root={tmp_path / 'mnist-png'}", "model=cnn", "trainer.max_epochs=3", run_dir=tmp_path / "run")
    assert summary["test"]["accuracy"] >= 0.97, summary["test"]


# --- data=series ----------------------------------------------------------------------------------


def test_series_matches_data_sine_when_given_the_same_values(tmp_path) -> None:
    from dltrain.data.sequence import forecasting_bundle, sine_series

    ours = DATASETS.build({"name": "series", **own_data.params("series"), "columns": ["value"], "window": 16})
    reference = forecasting_bundle("sine", sine_series(1200, 0.1, 0), 16, 1, 0.15, 0.15)
    assert ours.note.startswith("sine.csv: 1,200 steps of 1 series (value)")
    for split in ("train", "val", "test"):
        torch.testing.assert_close(getattr(ours, split).x, getattr(reference, split).x, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(getattr(ours, split).y, getattr(reference, split).y, atol=1e-5, rtol=1e-4)
    assert (ours.name, ours.kind, ours.task) == ("series", "sequence", "forecasting")
    both = DATASETS.build({"name": "series", **own_data.params("series"), "window": 16, "horizon": 3})
    assert both.in_shape == (16, 2) and both.train.y.shape[1] == 3 and both.prep["columns"] == ["value", "lagged"]


def test_series_trains_and_forecasts_from_a_raw_file(train_run, cli, tmp_path) -> None:
    summary, run = train_run("data=series", *own_data.overrides("series"), "model=gru", "data.window=16", "trainer.max_epochs=8")
    assert summary["task"] == "forecasting" and summary["test"]["r2"] > 0.8, summary["test"]
    pd.read_csv(own_data.sine_csv()).head(40).to_csv(tmp_path / "recent.csv", index=False)
    code, _, err = cli("predict", str(run), f"input={tmp_path / 'recent.csv'}", f"output={tmp_path / 'p.csv'}")
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "p.csv")
    assert len(rows) == 40 - 16 + 1 and rows["input"].iloc[0] == "after row 16"
    one_line(cli("data=series", f"data.path={own_data.sine_csv()}", "data.columns=[day]", f"hydra.run.dir={tmp_path / 'r'}"), "data.columns=['day'] is not allowed; column 'day'", "holds no numbers")
    assert not (tmp_path / "r").exists()


# --- data=text ------------------------------------------------------------------------------------


def test_text_vocabulary_is_scikit_learns_count_vectorizer_on_the_training_split() -> None:
    from sklearn.feature_extraction.text import CountVectorizer

    from dltrain.data.text import encode

    data = DATASETS.build({"name": "text", **own_data.params("text")})
    texts = pd.read_csv(own_data.reviews_csv())["review"]
    vocab = data.prep["vocab"]
    assert vocab[:2] == ["<pad>", "<unk>"] and data.kind == "text" and data.class_names == ["neg", "pos"]
    # every word of these reviews occurs in the training split: the vocabulary is all of CountVectorizer's
    vectorizer = CountVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b").fit(texts)
    assert set(vectorizer.vocabulary_) == set(vocab[2:])
    ids = encode(["The film was GREAT, really great", ""], vocab, 4)
    assert ids[1].tolist() == [0, 0, 0, 0] and ids[0].tolist() == [vocab.index(w) for w in ("the", "film", "was", "great")]
    small = DATASETS.build({"name": "text", **own_data.params("text"), "vocab_size": 6, "max_len": 5})
    assert len(small.prep["vocab"]) == 6 and small.in_shape == (5,) and int(small.train.x.max()) <= 5
    assert (small.train.x == 1).any()  # words outside the 4 kept are unknown


@pytest.mark.parametrize("model", ["embedding_bag", "lstm"])
def test_text_models_learn_and_predict_raw_texts(train_run, cli, tmp_path, model) -> None:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    summary, run = train_run("data=text", *own_data.overrides("text"), f"model={model}", "trainer.max_epochs=15", "optim.lr=0.01")
    # scikit-learn's bag of words and logistic regression, on the same texts (the run's own split sizes)
    frame = pd.read_csv(own_data.reviews_csv())
    n_test = summary["dataset"]["sizes"]["test"]
    x = CountVectorizer().fit_transform(frame["review"])
    reference = LogisticRegression(max_iter=1000).fit(x[:-n_test], frame["rating"][:-n_test]).score(x[-n_test:], frame["rating"][-n_test:])
    assert summary["test"]["accuracy"] >= min(0.95, reference - 0.05), (summary["test"], reference)
    (tmp_path / "new.txt").write_text("A wonderful film, the cast was superb.\nDull and tedious, the plot was awful.\n")
    code, _, err = cli("predict", str(run), f"input={tmp_path / 'new.txt'}", f"output={tmp_path / 'p.csv'}")
    assert code == 0, err
    assert pd.read_csv(tmp_path / "p.csv")["pred"].tolist() == ["pos", "neg"]
    one_line(cli("data=text", f"data.path={own_data.reviews_csv()}", "data.text=reveiw", "data.target=rating", f"hydra.run.dir={tmp_path / 'r'}"), "data.text='reveiw' is not allowed", "did you mean 'review'?")
    one_line(cli("data=text", f"data.path={own_data.reviews_csv()}", "data.text=review", "data.target=rating", "model=mlp", f"hydra.run.dir={tmp_path / 'r'}"), "model=mlp needs", "text data; models for it: embedding_bag, gru, lstm, rnn")


# --- data.augment ----------------------------------------------------------------------------------


def test_augmentations_change_images_as_described() -> None:
    import torch.nn.functional as F

    from dltrain.engine.loader import augment_images

    torch.manual_seed(0)
    x = torch.randn(400, 1, 8, 8)
    flipped = augment_images(x, ("flip",))
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert 150 < int(mirrored.sum()) < 250 and bool(((flipped == x).flatten(1).all(1) | mirrored).all())
    noisy = augment_images(x, ("noise",)) - x
    assert abs(noisy.std().item() - 0.1) < 0.005
    # rotating by 0 at scale 1 resamples nothing: the affine grid hits every pixel centre
    grid = F.affine_grid(torch.eye(2, 3).expand(400, 2, 3), [400, 1, 8, 8], align_corners=False)
    torch.testing.assert_close(F.grid_sample(x, grid, padding_mode="border", align_corners=False), x)
    moved = augment_images(x, ("rotate", "crop"))
    assert moved.shape == x.shape and not torch.equal(moved, x) and moved.min() >= x.min() and moved.max() <= x.max()
    torch.manual_seed(1)
    a = augment_images(x, ("flip", "rotate", "crop", "noise"))
    torch.manual_seed(1)
    assert torch.equal(a, augment_images(x, ("flip", "rotate", "crop", "noise")))  # from torch's seeded RNG


def test_augmented_training_on_an_image_folder(train_run, compose) -> None:
    summary, _ = train_run("data=image_folder", *own_data.overrides("image_folder"), "model=cnn", "data.augment=[rotate,crop]", "trainer.max_epochs=4")
    assert summary["test"]["accuracy"] > 0.85
    with pytest.raises(UserError, match=r"data.augment=\['flip'\] is not allowed; data=table is table data, not images"):
        validate(compose("data=table", *own_data.overrides("table"), "+data.augment=[flip]"))
