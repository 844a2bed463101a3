"""Sweeps: grid and Optuna search, failing jobs, resume, launchers, and the sweep summary files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from tests.conftest import assert_one_line_exit_2
from tests.test_cli import dltrain


def rows(sweep: Path) -> list[dict]:
    return list(csv.DictReader((sweep / "sweep.csv").open()))


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """Run `dltrain ARGS` in this process (for commands that fail before or as a run starts).
    Hydra's job logging adds handlers to the root logger and never removes them: they are
    closed here, so that a later test never writes to a run directory that is gone."""
    import logging

    from dltrain.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with pytest.raises(SystemExit) as e:
            main(list(args))
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.slow  # over 10 s on 2 cores: CI runs it; `make test-fast` stays under 5 minutes
def test_grid_sweep_records_failures_goes_on_and_resumes(tmp_path):
    """4 jobs, 2 of which diverge: sweep.csv, best.yaml and sweep.png; then resume skips the finished."""
    args = ["-m", "optim=sgd", "optim.lr=0.05,1e12", "model.hidden=8,16", "trainer=debug", "trainer.max_epochs=2"]
    result = dltrain(*args, cwd=tmp_path, env={"COLUMNS": "200", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    [sweep] = [p.parent for p in (tmp_path / "multirun").glob("*/*/multirun.yaml")]
    table = rows(sweep)
    assert len(table) == 4 and len({r["job"] for r in table}) == 4
    assert {r["optim.lr"] for r in table} == {"0.05", "1000000000000.0"} and {r["model.hidden"] for r in table} == {"8", "16"}
    done = [r for r in table if r["status"] == "completed"]
    failed = [r for r in table if r["status"] == "failed"]
    assert [r["optim.lr"] for r in done] == ["0.05", "0.05"] and len(failed) == 2
    assert all(r["reason"] and "\n" not in r["reason"] for r in failed)
    assert float(done[0]["val_loss"]) <= float(done[1]["val_loss"])  # sorted by the objective
    assert {"test_accuracy", "seconds", "run_dir", "overrides"} <= set(table[0])
    assert (tmp_path / done[0]["run_dir"] / "summary.json").is_file()

    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["objective"] == "val_loss" and best["direction"] == "minimize"
    assert best["job"] == int(done[0]["job"]) and math.isclose(best["value"], float(done[0]["val_loss"]), rel_tol=1e-5)
    assert "optim.lr=0.05" in best["overrides"] and best["command"].startswith("dltrain ")
    assert (sweep / "sweep.png").stat().st_size > 1000
    assert "best: job" in result.stderr and "failed" in result.stderr
    for r in failed:
        record = json.loads((sweep / r["job"] / "job.json").read_text())
        assert record["status"] == "failed" and record["reason"] == r["reason"]

    finished = {r["job"]: (sweep / r["job"] / "summary.json").stat().st_mtime_ns for r in done}
    again = dltrain(*args, "sweep.resume=true", cwd=tmp_path, env={"COLUMNS": "200", "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    assert f"continuing the sweep in {sweep.relative_to(tmp_path)}" in again.stderr
    assert again.stderr.count("already finished") == 2
    assert {j: (sweep / j / "summary.json").stat().st_mtime_ns for j in finished} == finished  # not retrained
    assert len(list((tmp_path / "multirun").glob("*/*/multirun.yaml"))) == 1
    assert [r["status"] for r in rows(sweep)] == ["completed", "completed", "failed", "failed"]


def test_a_job_that_raises_is_recorded_with_a_one_line_reason(tmp_path, compose, monkeypatch):
    from omegaconf import OmegaConf
    from rich.console import Console

    from dltrain import sweeps as sweep

    def boom(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nsecond line")

    monkeypatch.setattr(sweep, "_train", boom)
    hc = OmegaConf.create({"runtime": {"output_dir": str(tmp_path / "3")}, "job": {"num": 3}, "overrides": {"task": ["model.hidden=8"]}, "launcher": {}, "sweeper": {}})
    assert sweep.run_job(compose("trainer=debug", "model.hidden=8"), hc, Console(quiet=True)) is None
    record = json.loads((tmp_path / "3" / "job.json").read_text())
    assert record["status"] == "failed" and record["reason"] == "RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    assert record["overrides"] == ["model.hidden=8"] and record["seconds"] >= 0
    result = sweep.collect(tmp_path)
    assert [(j.job, j.status) for j in result.jobs] == [("3", "failed")] and result.best is None


def test_summarize_recreates_the_files_for_a_sweep_dir(tmp_path, train_run, capsys, one_torch_thread):
    """`dltrain sweep summarize DIR` works from the job directories alone (no job.json needed)."""
    sweep = tmp_path / "sweep"
    for job, hidden in enumerate((8, 32)):
        _, run = train_run("trainer.max_epochs=2", f"model.hidden={hidden}", run_dir=sweep / str(job))
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.hidden={hidden}", "trainer.max_epochs=2"]))
    code, _, err = in_process(capsys, "sweep", "summarize", str(sweep), "objective=val_accuracy")
    assert code == 0, err
    table = rows(sweep)
    assert [r["model.hidden"] for r in table] == sorted((r["model.hidden"] for r in table), key=lambda h: -float(next(x["val_accuracy"] for x in table if x["model.hidden"] == h)))
    assert yaml.safe_load((sweep / "best.yaml").read_text())["direction"] == "maximize"
    assert (sweep / "sweep.png").is_file() and "model.hidden" in err
    assert_one_line_exit_2(in_process(capsys, "sweep", "summarize", str(tmp_path / "nope")), "does not exist")
    assert_one_line_exit_2(in_process(capsys, "sweep", "summarize", str(sweep), "objective=val_acc"), "val_accuracy", "did you mean")
    assert_one_line_exit_2(in_process(capsys, "sweep", "summarise", str(sweep)), "summarize")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["hparams_search=mlp_digit"], ["hparams_search='mlp_digit'", "mlp_digits"]),
        (["hparams_search=mlp_digits", "model.hiden=choice(8,16)"], ["model.hiden", "did you mean 'hidden'?"]),
        (["hparams_search=mlp_digits", "model.dropout=interval(0.0,1.0)"], ["model.dropout=1 is not allowed", "< 1"]),
        (["hparams_search=mlp_digits", "sweep.objective=val_r2"], ["sweep.objective='val_r2'", "val_accuracy"]),
        (["optim.lr=interval(0.001,0.1)"], ["interval", "hparams_search"]),
        (["launcher=jobilb", "optim=sgd,adam"], ["launcher='jobilb'", "did you mean 'joblib'?"]),
        (["optim=sgd,adm", "trainer=debug"], ["optim='adm'", "did you mean 'adam'?"]),
    ],
)
def test_bad_sweeps_fail_at_once_with_one_line(tmp_path, capsys, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    assert_one_line_exit_2(in_process(capsys, "-m", *args), *fragments)
    assert not (tmp_path / "multirun").exists()


def test_every_search_preset_composes_and_its_space_validates():
    """Each hparams_search preset: every choice and both ends of every range is a valid job."""
    from dltrain.composition import groups
    from dltrain.overrides import parse
    from dltrain.preflight import check_command_line, sweeper_config

    presets = groups()["hparams_search"]
    assert {"mlp_digits", "cnn_digits", "rnn_digits", "mlp_diabetes", "gru_sine"} <= set(presets)
    for name in presets:
        check_command_line([f"hparams_search={name}"], multirun=True)
        sweeper = sweeper_config([f"hparams_search={name}"], parse([f"hparams_search={name}"]))
        assert sweeper["_target_"].endswith("OptunaSweeper") and sweeper["params"], name


@pytest.mark.parametrize(
    ("launcher", "target", "keys"),
    [
        ("joblib", "JoblibLauncher", {"n_jobs": -1}),
        ("slurm", "SlurmLauncher", {"cpus_per_task": 4, "array_parallelism": 64}),
        ("submitit_local", "LocalLauncher", {"cpus_per_task": 1}),
    ],
)
def test_launcher_choices_compose(launcher, target, keys):
    from hydra import compose, initialize_config_dir

    from dltrain.composition import config_dir
    from dltrain.search import register_sweeper_config

    register_sweeper_config()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("config", overrides=[f"launcher={launcher}", "hparams_search=mlp_digits"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert {k: cfg.hydra.launcher[k] for k in keys} == keys
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.sweep.objective == "val_accuracy"


@pytest.mark.slow  # over 10 s on 2 cores: CI runs it; `make test-fast` stays under 5 minutes
def test_optuna_search_runs_trials_and_summarizes(tmp_path):
    sweep = tmp_path / "search"
    result = dltrain(
        "-m", "hparams_search=mlp_digits", "hydra.sweeper.n_trials=3", "trainer.max_epochs=2", "trainer.progress=none",
        f"hydra.sweeper.storage=sqlite:///{sweep}/optuna.db", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, env={"COLUMNS": "200", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    table = rows(sweep)
    assert len(table) == 3 and {r["status"] for r in table} <= {"completed", "pruned"}
    assert {"optim", "optim.lr", "model.hidden", "model.dropout", "data.batch_size", "val_accuracy"} <= set(table[0])
    assert len({r["optim.lr"] for r in table}) == 3
    assert all(r["optim"] in ("adam", "adamw", "rmsprop", "nesterov") for r in table)
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["objective"] == "val_accuracy" and best["direction"] == "maximize"
    assert math.isclose(best["value"], max(float(r["val_accuracy"]) for r in table if r["val_accuracy"]), rel_tol=1e-5)

    from dltrain.search import quiet_optuna

    optuna = quiet_optuna()
    study = optuna.load_study(study_name="dltrain", storage=f"sqlite:///{sweep}/optuna.db")
    assert len(study.trials) == 3 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert math.isclose(study.best_value, best["value"], rel_tol=1e-6)


def test_pruning_stops_a_trial_that_trails_the_median():
    from dltrain.search import epoch_reporter, make_pruner, quiet_optuna

    optuna = quiet_optuna()
    study = optuna.create_study(direction="minimize", pruner=make_pruner("median", warmup_epochs=1, startup_trials=1))
    good = study.ask()
    for epoch, loss in enumerate([1.0, 0.5, 0.3], start=1):
        epoch_reporter(good, "val_loss")({"epoch": epoch, "val_loss": loss})
    study.tell(good, 0.3)
    bad = study.ask()
    report = epoch_reporter(bad, "val_loss")
    report({"epoch": 1, "val_loss": 2.0})  # warmup: never pruned
    with pytest.raises(optuna.TrialPruned, match="after epoch 2"):
        report({"epoch": 2, "val_loss": 2.0})


def test_search_space_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from dltrain.search import probe_jobs, search_space

    fixed, space = search_space(
        {"optim.lr": "tag(log, interval(1e-4, 1e-1))", "model.hidden": "choice(64, 128)", "model.layers": "range(1, 4)", "seed": 3},
        ["model.hidden=32,48", "optim=adam"],
    )
    assert fixed == ["seed=3", "optim=adam"]
    assert space["optim.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert space["model.hidden"] == CategoricalDistribution([32, 48])  # the command line wins
    assert space["model.layers"] == IntDistribution(1, 3)
    probes = probe_jobs(fixed, space)
    assert ["seed=3", "optim=adam", "optim.lr=0.1", "model.hidden=32", "model.layers=1"] in probes
    assert any("model.layers=3" in p for p in probes) and any("model.hidden=48" in p for p in probes)


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes_with_their_share_of_threads(tmp_path):
    sweep = tmp_path / "sweep"
    result = dltrain("-m", "launcher=joblib", "optim=sgd,adam", "trainer=debug", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in rows(sweep)] == ["completed", "completed"]
    for job in ("0", "1"):  # n_jobs=-1: one job per core, one torch thread each
        assert "torch threads: 1 " in (sweep / job / "train.log").read_text()
    assert "leaked" not in result.stderr and "Warning" not in result.stderr  # the exit cleans up after joblib and loky


@pytest.mark.slow
def test_a_job_that_kills_its_worker_stops_the_sweep_with_one_line_and_a_summary(tmp_path):
    """A job killed with its process (out of memory, a segfault) cannot record itself: the sweep
    says so in one line, exit 1, after writing sweep.csv (that job incomplete)."""
    sweep = tmp_path / "sweep"
    result = dltrain("-m", "launcher=joblib", "optim=sgd,adam", "trainer=debug", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"DLTRAIN_TEST_KILL": "step:1"})
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dltrain: error: a worker process died") and "SIGKILL" in last and "sweep.resume=true" in last
    assert "Traceback" not in result.stderr and "leaked" not in result.stderr
    assert {r["status"] for r in rows(sweep)} == {"incomplete"}


@pytest.mark.slow
def test_workers_forked_from_the_warm_server_train_exactly_like_one_process(tmp_path):
    """launcher=joblib's workers come from a forkserver that imported torch and warmed it up: the
    jobs must not notice. Same metrics, to the last digit, as the same grid run sequentially with
    one torch thread."""
    grid = ["-m", "optim=sgd,adam", "model.dropout=0.0,0.3", "trainer.max_epochs=2", "trainer.limit_train_batches=5"]
    parallel = dltrain(*grid, "launcher=joblib", f"hydra.sweep.dir={tmp_path / 'p'}", cwd=tmp_path)
    sequential = dltrain(*grid, "trainer.threads=1", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert parallel.returncode == 0 and sequential.returncode == 0, parallel.stderr + sequential.stderr
    metrics = lambda sweep: {r["job"]: {k: v for k, v in r.items() if k.startswith(("val_", "test_"))} for r in rows(sweep)}  # noqa: E731
    assert metrics(tmp_path / "p") == metrics(tmp_path / "s") and len(metrics(tmp_path / "p")) == 4


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    pytest.importorskip("submitit")
    sweep = tmp_path / "sweep"
    result = dltrain("-m", "launcher=submitit_local", "optim=sgd,adam", "trainer=debug", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in rows(sweep)] == ["completed", "completed"]
    assert (sweep / ".submitit").is_dir() and (sweep / "best.yaml").is_file()


@pytest.mark.slow
def test_optuna_search_of_20_trials_beats_the_default_config(tmp_path, train_run, compose, one_torch_thread):
    """The sweep recipe: 20 TPE trials on the digits MLP against the default hyperparameters, both
    with the search's training budget (epochs), by their best validation accuracy."""
    sweep = tmp_path / "search"
    result = dltrain("recipe=optuna_mlp_digits", "launcher=joblib", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    table = rows(sweep)
    assert len(table) == 20 and sum(r["status"] == "completed" for r in table) >= 10
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    epochs = compose("recipe=optuna_mlp_digits").trainer.max_epochs
    _, default_run = train_run(f"trainer.max_epochs={epochs}")
    default = max(float(r["val_accuracy"]) for r in csv.DictReader((default_run / "metrics.csv").open()))
    print(f"optuna best val_accuracy {best['value']:.4f} ({best['command']}) vs default config {default:.4f} ({epochs} epochs)")
    assert best["value"] > default
