"""See your runs: report.html per run (parsed back), `dltrain runs`, `dltrain compare`, `dltrain
report`, sweep pages, and the page in a real headless browser where chromium is installed."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import dltrain
from dltrain.files import FolderLock
from tests.conftest import assert_one_line_exit_2
from tests.test_cli import dltrain as dltrain_command
from tests.test_sweep import in_process

SHORT = ("trainer.max_epochs=2", "trainer.progress=none")


class Page(HTMLParser):
    """What a report holds: section ids, headings, text, table cells, images, links, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections, self.headings, self.images, self.links, self.cells, self.text = [], [], [], [], [], []
        self.tags: dict[str, int] = {}
        self.status = None
        self._in: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "span" and "status" in (a.get("class") or "").split():
            self.status = a["class"].split()[1]
        self._in.append(tag)

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        if not data.strip():
            return
        self.text.append(data)
        if self._in and self._in[-1] in ("h1", "h2", "h3"):
            self.headings.append(data.strip())
        if self._in and self._in[-1] in ("td", "th"):
            self.cells.append(data.strip())

    @property
    def all_text(self) -> str:
        return " ".join(self.text)


def page(path: Path) -> Page:
    return Page((path / "report.html").read_text())


def png_bytes(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,"), src[:40]
    return base64.b64decode(src.split(",", 1)[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three finished runs through the Python API (as the CLI writes them): two MLPs, one CNN."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, overrides in {"mlp": ("model=mlp", "model.hidden=32"), "cnn": ("model=cnn", "model.channels=4"), "sgd": ("model=mlp", "model.hidden=32", "optim=sgd")}.items():
        made[name] = dltrain.train(*overrides, *SHORT, run_dir=root / "outputs" / name).dir
    return made


def test_a_finished_runs_report_holds_its_command_config_metrics_and_curves(runs):
    run = runs["cnn"]
    p = page(run)
    summary = json.loads((run / "summary.json").read_text())
    assert p.sections == ["command", "metrics", "config", "curves", "pictures", "epochs"]  # pictures: the confusion matrix and mistakes
    assert p.status == "finished" and "cnn on digits" in p.headings[0]
    assert "dltrain model=cnn model.channels=4 trainer.max_epochs=2 trainer.progress=none" in p.all_text
    assert f"{summary['test']['accuracy']:.4g}" in p.cells and "test accuracy" in p.cells
    assert "model.channels" in p.cells and "model=cnn" in p.all_text  # the overrides, the choices
    assert "kernel_size: 3" in p.all_text  # the full config, folded
    assert len(p.images) == 4  # loss.png, accuracy.png, confusion_matrix.png, mistakes.png
    assert all(png_bytes(src).startswith(b"\x89PNG\r\n\x1a\n") for src in p.images)
    assert p.tags.get("script", 0) == 0 and not [h for h in p.links if "://" in h]  # offline: nothing fetched
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert f"{float(rows[-1]['val_loss']):.4g}" in p.cells  # the epochs table


def test_a_classifiers_run_draws_its_test_confusion_matrix_and_most_confident_mistakes_as_sklearn_counts_them(runs):
    """From the final test's own pass: the counts are scikit-learn's confusion_matrix of the best
    checkpoint's predictions, the mistakes its most confident wrong ones, images drawn for them."""
    import torch
    from sklearn.metrics import confusion_matrix

    from dltrain.api import load_run
    from dltrain.tasks.supervised import ClassificationTask

    run = runs["cnn"]
    loaded = load_run(run).loaded()
    data = loaded.built.data
    with torch.no_grad():
        probs = loaded.built.model(data.test.x).softmax(-1).numpy()
    y, pred = data.test.y.numpy(), probs.argmax(-1)
    cm = confusion_matrix(y, pred, labels=list(range(10)))
    p = page(run)
    assert {"confusion_matrix.png", "mistakes.png", "mistakes.csv"} <= {q.name for q in (run / "plots").iterdir()}
    assert "mistakes.csv" in " ".join(p.all_text.split())
    rows = list(csv.DictReader((run / "plots" / "mistakes.csv").open()))
    wrong = np.flatnonzero(pred != y)
    expected = wrong[np.argsort(-probs.max(-1)[wrong], kind="stable")][:16]
    assert [int(r["index"]) for r in rows] == expected.tolist() and len(wrong) == cm.sum() - np.trace(cm)
    assert all(r["true"] == str(y[int(r["index"])]) and r["pred"] == str(pred[int(r["index"])]) for r in rows)
    task = ClassificationTask.__new__(ClassificationTask)  # the same pictures from these predictions
    task.num_classes, task.data, task.kept = 10, data, [(torch.from_numpy(probs.max(-1)), torch.from_numpy(pred))]
    pictures = task.test_pictures(data.test)
    assert pictures["confusion"] == cm.tolist() and pictures["wrong"] == len(wrong)
    assert len(pictures["images"]) == len(rows) and np.asarray(pictures["images"]).shape[1:] == (8, 8, 1)


@pytest.mark.parametrize("data", ["diabetes", "sine"])
def test_a_regression_and_a_forecasting_run_draw_their_test_predictions_against_the_truth(train_run, data):
    """pred_vs_true.png (and a forecaster's forecast.png) from the final test's own pass, in the
    data's units: the RMSE and R2 its title reads are the run's test metrics."""
    import torch
    from sklearn.metrics import r2_score

    from dltrain.api import load_run
    from dltrain.tasks.supervised import RegressionTask

    summary, run = train_run(f"data={data}", *SHORT)
    drawn = {q.name for q in (run / "plots").iterdir()}
    assert "pred_vs_true.png" in drawn and ("forecast.png" in drawn) == (data == "sine") and "confusion_matrix.png" not in drawn
    assert "pictures" in page(run).sections
    loaded = load_run(run).loaded().built
    task = RegressionTask(loaded.data, loaded.task.loss_entry, loaded.task.loss_fn)  # what the run's final test kept, kept again
    state = task.new_state(torch.device("cpu"))
    task.keep_predictions(True)
    with torch.no_grad():
        task.accumulate(state, loaded.model(loaded.data.test.x), loaded.data.test.y)
    pictures = task.test_pictures(loaded.data.test)
    pred, true = np.asarray(pictures["pred"]), np.asarray(pictures["true"])
    assert np.sqrt(np.mean((pred - true) ** 2)) == pytest.approx(summary["test"]["rmse"], rel=1e-5)
    assert r2_score(true, pred) == pytest.approx(summary["test"]["r2"], rel=1e-5)


def test_a_recipe_runs_page_lists_the_keys_that_differ_from_its_choices_defaults(tmp_path):
    """A recipe sets keys the command never named: the page composes the same choices' defaults
    and shows each key that differs, with both values."""
    from dltrain.report import differing_keys, read_config

    run = dltrain.train("recipe=cnn_digits", "trainer.max_epochs=1", "trainer.progress=none", run_dir=tmp_path / "r").dir
    rows = differing_keys(read_config(run), ["recipe=cnn_digits", "trainer.max_epochs=1"])
    found = {k: (v, d) for k, v, d in rows}
    assert found["model.channels"] == (16, 32) and found["trainer.max_epochs"] == (1, 30)
    assert "model.kernel_size" not in found and "seed" not in found  # the recipe's value is the default
    p = page(run)
    assert {"key", "this run", "default"} <= set(p.cells) and "model.channels" in p.cells
    assert differing_keys(read_config(run), ["model=cnn", "model.channels=16"]) is None  # no preset: the overrides are the differing keys


def test_the_report_shows_an_analysis_verbs_outputs_after_it_runs(runs, tmp_path, capsys):
    run = shutil.copytree(runs["mlp"], tmp_path / "run")
    code, out, err = in_process(capsys, "eval", str(run), "split=val")
    assert code == 0, err
    p = page(run)
    assert "analysis" in p.sections and "dltrain eval" in p.headings
    produced = sorted(q.name for q in (run / "analysis" / "eval").glob("*.png"))
    assert produced and len(p.images) >= 2 + len(produced)


def test_an_interrupted_and_a_failed_run_say_so_in_the_report_and_in_runs(train_run, run_train, tmp_path, monkeypatch, capsys):
    from dltrain.engine.checkpoint import TrainingInterrupted
    from dltrain.errors import UserError

    tiny = ("model=mlp", "model.hidden=16", "trainer.max_epochs=3", "trainer.limit_train_batches=7", "trainer.checkpoint.every_n_steps=3")
    monkeypatch.setenv("DLTRAIN_TEST_KILL", "sigint:5")
    with pytest.raises(TrainingInterrupted):
        run_train(tmp_path / "outputs" / "stopped", *tiny)
    monkeypatch.delenv("DLTRAIN_TEST_KILL")
    with pytest.raises(UserError, match="diverged"):
        run_train(tmp_path / "outputs" / "diverged", "model=mlp", "optim=sgd", "optim.lr=1e12", "trainer.max_epochs=2")
    stopped, diverged = page(tmp_path / "outputs" / "stopped"), page(tmp_path / "outputs" / "diverged")
    assert stopped.status == "interrupted" and "not reached its final test" in stopped.all_text
    assert diverged.status == "failed" and "diverged" in diverged.all_text
    monkeypatch.chdir(tmp_path)
    code, out, _ = in_process(capsys, "runs", "--json")
    assert code == 0
    assert {Path(r["run_dir"]).name: r["status"] for r in json.loads(out)} == {"stopped": "interrupted", "diverged": "failed"}


def test_runs_lists_newest_first_filters_and_says_what_is_running(runs, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(runs["mlp"].parent.parent)
    code, out, _ = in_process(capsys, "runs", "--json")
    listed = json.loads(out)
    assert code == 0 and [Path(r["run_dir"]).name for r in listed] == ["sgd", "cnn", "mlp"]  # newest first
    cnn = next(r for r in listed if r["model"] == "cnn")
    summary = json.loads((runs["cnn"] / "summary.json").read_text())
    assert cnn["status"] == "finished" and cnn["metric"] == "accuracy" and cnn["value"] == summary["test"]["accuracy"] and cnn["epochs"] == 2
    _, out, _ = in_process(capsys, "runs", "model=mlp", "--json")
    assert sorted(Path(r["run_dir"]).name for r in json.loads(out)) == ["mlp", "sgd"]
    _, out, _ = in_process(capsys, "runs", "status=failed", "--json")
    assert json.loads(out) == []
    from dltrain.report import run_status

    unfinished = shutil.copytree(runs["sgd"], tmp_path / "unfinished")
    (unfinished / "summary.json").unlink()
    with FolderLock(unfinished):  # a process is writing into it
        assert run_status(unfinished) == "running"
    assert run_status(unfinished) == "interrupted"  # the lock is gone, the summary never came
    code, out, _ = in_process(capsys, "runs")  # the table, at the test console's width
    assert code == 0 and "outputs/cnn" in out and "accuracy" in out


def test_the_runs_table_keeps_the_useful_columns_at_80_columns(runs, monkeypatch):
    from rich.console import Console

    monkeypatch.chdir(runs["mlp"].parent.parent)  # paths as `dltrain runs` shows them: outputs/mlp

    from dltrain.history import read_run, runs_table

    table = runs_table([read_run(p) for p in runs.values()], 80)
    console = Console(width=80, record=True)
    console.print(table)
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= 80
    assert "…" not in text and all(str(p.parent.name) in text for p in runs.values())
    assert [c.header for c in table.columns][:4] == ["run", "status", "model", "accuracy"]


@pytest.mark.parametrize(("args", "fragments"), [(("runs", "colour=red"), ("colour", "model, data, status, task")), (("runs", "status=done"), ("status", "done", "finished, interrupted")), (("runs", "nowhere"), ("nowhere",)), (("compare", "nowhere"), ("nowhere",)), (("report", "nowhere"), ("nowhere",)), (("runs", "--all"), ("--all", "--json"))])
def test_bad_arguments_are_one_line_exit_2(args, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_exit_2(in_process(capsys, *args), *fragments)


def test_compare_tables_the_differences_overlays_curves_and_writes_compare_html(runs, tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    code, out, err = in_process(capsys, "compare", str(runs["mlp"]), str(runs["cnn"]), str(runs["sgd"]), f"out={out_dir}")
    assert code == 0, err
    assert "model.name" in out and "optim.name" in out and "test_accuracy" in out
    rows = list(csv.DictReader((out_dir / "compare.csv").open()))
    assert [r["model.name"] for r in rows] == ["mlp", "cnn", "mlp"] and [r["optim.name"] for r in rows] == ["adam", "adam", "sgd"]
    assert "trainer.max_epochs" not in rows[0]  # the same in all three
    tests = [json.loads((runs[n] / "summary.json").read_text())["test"]["accuracy"] for n in ("mlp", "cnn", "sgd")]
    assert [float(r["test_accuracy"]) for r in rows] == tests
    assert {p.name for p in out_dir.glob("*.png")} == {"train_loss.png", "val_loss.png", "val_accuracy.png", "lr.png"}
    p = Page((out_dir / "compare.html").read_text())
    assert len(p.images) == 4
    assert [(out_dir / h).resolve() for h in p.links] == [(runs[n] / "report.html").resolve() for n in ("mlp", "cnn", "sgd")]
    assert_one_line_exit_2(in_process(capsys, "compare", str(runs["mlp"])), "two runs or more")


@pytest.mark.slow  # a sweep is its own process (it ends without the interpreter's teardown)
def test_a_sweep_gets_a_report_linking_its_jobs_and_compare_takes_the_sweep(tmp_path, capsys):
    result = dltrain_command("-m", "model.hidden=16,32", "trainer.max_epochs=1", "trainer.progress=none", "hydra.sweep.dir=multirun/s", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "multirun" / "s"
    p = page(sweep)
    assert sorted(p.links) == ["0/report.html", "1/report.html"] and len(p.images) == 1  # sweep.png
    assert "best.yaml" in p.all_text and "objective" in p.all_text
    (sweep / "report.html").unlink()
    assert in_process(capsys, "report", str(sweep))[0] == 0 and (sweep / "report.html").is_file()
    code, out, _ = in_process(capsys, "compare", str(sweep), f"out={tmp_path / 'c'}")
    assert code == 0 and "model.hidden" in out
    rows = list(csv.DictReader((tmp_path / "c" / "compare.csv").open()))
    assert [r["model.hidden"] for r in rows] == ["16", "32"]


def test_report_rebuilds_a_runs_page(runs, tmp_path, capsys):
    run = shutil.copytree(runs["sgd"], tmp_path / "run")
    before = (run / "report.html").read_text()
    (run / "report.html").unlink()
    code, out, _ = in_process(capsys, "report", str(run))
    assert code == 0 and out.strip() == f"report: {run / 'report.html'}"
    assert page(run).sections == Page(before).sections


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian: apt install chromium)")
def test_the_report_renders_in_a_headless_browser_with_every_image_loaded(runs, tmp_path, capsys):
    """Chromium loads a run's page and a compare page offline, with no console message, every
    image decoded (a check added to a copy of the page reports into its title); and a screenshot."""
    assert in_process(capsys, "compare", str(runs["mlp"]), str(runs["sgd"]), f"out={tmp_path / 'c'}")[0] == 0
    check = "<script>window.onload=()=>{const bad=[...document.images].filter(i=>!i.complete||i.naturalWidth===0).length;document.title='images:'+document.images.length+' broken:'+bad;}</script>"
    for n, source in enumerate([runs["cnn"] / "report.html", tmp_path / "c" / "compare.html"]):
        text = source.read_text()
        probe = source.with_name(f"probe{n}.html")
        probe.write_text(text.replace("</body>", check + "</body>"))
        try:
            result = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        finally:
            probe.unlink()
        assert result.returncode == 0, result.stderr
        images = len(Page(text).images)
        assert images >= 2 and f"<title>images:{images} broken:0</title>" in result.stdout, source
        assert not [line for line in result.stderr.splitlines() if ":CONSOLE" in line], result.stderr  # no script error, no failed load
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}", "--window-size=1200,2400", (runs["cnn"] / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_a_generative_runs_report_shows_its_final_samples_not_every_epochs(train_run):
    _, run = train_run("model=vae", "trainer.max_epochs=2", "trainer.limit_train_batches=3")
    p = page(run)
    drawn = {q.name for q in (run / "plots").glob("*.png")}
    per_epoch = {n for n in drawn if re.search(r"_e\d{3}\.png$", n)}
    assert {"samples_e001.png", "samples_e002.png", "samples.png", "recon.png", "reconstructions.png"} <= drawn  # recon.png: the val_recon curve
    assert "pictures" in p.sections and len(p.images) == len(drawn) - len(per_epoch)
    assert f"{len(per_epoch)} earlier epochs' grids are in" in p.all_text


def test_a_stopped_runs_page_shows_the_last_epochs_grid():
    from dltrain.report import final_pictures

    pngs = [Path(n) for n in ("interpolation.png", "interpolation_e001.png", "interpolation_e002.png", "samples_e001.png", "samples_e002.png", "samples_e010.png")]
    assert final_pictures(pngs) == ([Path("interpolation.png"), Path("samples_e010.png")], 4)


# ---- the console and the plots -------------------------------------------------------------------


def test_the_progress_bar_shows_the_last_validation_metric_and_the_best_so_far():
    from rich.console import Console

    from dltrain.engine.progress import ProgressBar
    from dltrain.tasks.base import Task

    class Regression(Task):
        higher_is_better = ("r2",)

    bar = ProgressBar(Console(file=None, width=120), 3, 10, 32, better=Regression.mode.__get__(Regression.__new__(Regression)))
    shown = [bar.validation({"epoch": e, "val_loss": 1.0, "val_rmse": v}) for e, v in enumerate((0.5, 0.3, 0.4), 1)]
    assert shown == ["val_rmse 0.5000 (best 0.5000)", "val_rmse 0.3000 (best 0.3000)", "val_rmse 0.4000 (best 0.3000)"]
    bar = ProgressBar(Console(width=120), 3, 10, 32, better=Regression.mode.__get__(Regression.__new__(Regression)))
    assert [bar.validation({"val_r2": v}) for v in (0.5, 0.7, 0.6)][-1] == "val_r2 0.6000 (best 0.7000)"


def test_a_sweep_table_fits_80_columns_and_keeps_its_keys_and_objective():
    from rich.console import Console

    from dltrain.sweeps import JobResult, SweepResult, print_table

    metrics = {"val_loss": 0.31, "val_accuracy": 0.91, "test_loss": 0.3, "test_accuracy": 0.9}
    jobs = [JobResult(str(i), "completed", [f"optim.lr={lr}", f"model.hidden={h}", f"model.layers={n}"], Path(str(i)), objective=0.91, seconds=3.2, metrics=metrics) for i, (lr, h, n) in enumerate([(0.001, 64, 1), (0.01, 128, 2)])]
    console = Console(width=80, record=True)
    print_table(console, SweepResult(Path("multirun/x"), "val_accuracy", "maximize", jobs, ["optim.lr", "model.hidden", "model.layers"]))
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= 80 and "…" not in text
    header = next(line for line in text.splitlines() if "status" in line)
    assert all(h in header for h in ("job", "status", "lr", "hidden", "layers", "val_accuracy"))


def test_recipes_are_listed_whole_at_80_columns(capsys):
    from rich.console import Console

    from dltrain.recipe import info, list_recipes, recipe_names

    console = Console(width=80, record=True)
    list_recipes(console)
    text = console.export_text()
    assert "…" not in text and all(f"{n}  {info(n).model}" in text for n in recipe_names())


def test_sample_grids_carry_their_epoch(tmp_path):
    import torch
    from PIL import Image

    from dltrain.images import save_grid

    plain = save_grid(torch.rand(8, 1, 8, 8), tmp_path / "plain.png")
    labelled = save_grid(torch.rand(8, 1, 8, 8), tmp_path / "labelled.png", label="samples, epoch 3")
    with Image.open(plain) as a, Image.open(labelled) as b:
        assert b.height == a.height + 16 and b.width == a.width
        band = np.asarray(b.crop((0, 0, b.width, 16))).ravel().tolist()
        assert min(band) < 128 < max(band)  # dark text on a white band


# ---- trackers ------------------------------------------------------------------------------------


def test_several_loggers_at_once_mlflow_read_back_with_its_own_client_and_tensorboard_hparams_in_the_same_run(train_run, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    summary, run = train_run("logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={store}", "model.hidden=32", "trainer.max_epochs=3", "trainer.checkpoint.every_n_epochs=1")
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("dltrain")
    assert experiment.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()  # beside the store, not ./mlruns
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == run.name and found.data.tags["dltrain.run_dir"] == str(run.resolve())
    assert found.data.params["model.hidden"] == "32" and found.data.params["optim.name"] == "adam" and found.data.params["logger.mlflow.experiment"] == "dltrain"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(int(r["epoch"]), pytest.approx(float(r["val_loss"]), rel=1e-5)) for r in rows]
    assert found.data.metrics["test_accuracy"] == pytest.approx(summary["test"]["accuracy"])
    top = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"summary.json", "metrics.csv", "config.yaml", "report.html", "checkpoints", "plots", "tensorboard"} <= top
    saved = {a.path for a in client.list_artifacts(found.info.run_id, "checkpoints")}
    assert saved == {"checkpoints/best.safetensors", "checkpoints/last.safetensors"}  # not the step-N/ resume states

    [events] = list((run / "tensorboard").iterdir())  # one run: the hparams did not start another
    assert events.is_file()
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "val/loss", "val/accuracy", "hparam/test_accuracy"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val/loss")] == [1, 2, 3]
    assert "_hparams_/experiment" in acc.summary_metadata


def test_an_interrupted_run_is_killed_in_mlflow(run_train, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from dltrain.engine.checkpoint import TrainingInterrupted

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("DLTRAIN_TEST_KILL", "sigint:5")
    with pytest.raises(TrainingInterrupted):
        run_train(tmp_path / "run", "logger=mlflow", f"logger.mlflow.tracking_uri={store}", "model.hidden=16", "trainer.max_epochs=3", "trainer.limit_train_batches=7", "trainer.checkpoint.every_n_steps=3")
    client = MlflowClient(store)
    [found] = client.search_runs([client.get_experiment_by_name("dltrain").experiment_id])
    assert found.info.status == "KILLED"


def test_logger_choices_and_their_errors(compose, monkeypatch):
    from dltrain.config import validate
    from dltrain.errors import UserError

    assert validate(compose()).logger == {"csv": {}}
    assert validate(compose("logger=tensorboard")).logger == {"tensorboard": {"flush_secs": 30}}
    assert list(validate(compose("logger=[csv,tensorboard]")).logger) == ["csv", "tensorboard"]
    old = dict(compose())
    old["logger"] = {"name": "tensorboard", "flush_secs": 5}  # a run directory from before loggers could be combined
    assert validate(old).logger == {"tensorboard": {"flush_secs": 5}}
    with pytest.raises(UserError, match=r"logger.tensorboard.flush_secs=0 .*>= 1"):
        validate(compose("logger=tensorboard", "logger.tensorboard.flush_secs=0"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r'logger=mlflow needs MLflow, an optional extra: pip install -e "\.\[mlflow\]"'):
        validate(compose("logger=mlflow"))


def test_a_sweep_over_three_keys_gets_parallel_coordinates_in_its_report(tmp_path):
    from dltrain.sweeps import JobResult, SweepResult, plot_parallel, write_report

    grid = [(lr, h, act) for lr in (0.001, 0.1) for h in (16, 64) for act in ("relu", "tanh")]
    jobs = [JobResult(str(i), "completed", [f"optim.lr={lr}", f"model.hidden={h}", f"model.activation={a}"], tmp_path / str(i), objective=0.9 + 0.01 * i) for i, (lr, h, a) in enumerate(grid)]
    result = SweepResult(tmp_path, "val_accuracy", "maximize", sorted(jobs, key=lambda j: -j.objective), ["optim.lr", "model.hidden", "model.activation"])
    path = plot_parallel(result)
    assert path == tmp_path / "parallel.png" and path.read_bytes().startswith(b"\x89PNG")
    assert plot_parallel(SweepResult(tmp_path, "val_accuracy", "maximize", jobs, ["optim.lr", "model.hidden"])) is None  # two keys: sweep.png says it all
    write_report(result)
    p = page(tmp_path)
    assert "parallel.png" in [t for t in p.text if t.endswith(".png")] and "best: job 7" in p.all_text
