"""Recipes: every recipe composes and states its result; list/show/cp; verify; determinism."""

from __future__ import annotations

import re

import pytest

from dltrain.recipe import info, recipe_names, recipes_dir
from tests.conftest import assert_one_line_exit_2
from tests.test_sweep import in_process

PINNED_GROUPS = {"model", "data", "loss", "optim", "sched", "reg", "init", "trainer", "logger"}
SINGLE_RUNS = [n for n in recipe_names() if not info(n).sweep]
CI_RECIPES = [n for n in recipe_names() if info(n).ci]


def test_there_is_a_recipe_per_family_and_a_sweep():
    from dltrain.models import MODELS

    models = {info(n).model for n in recipe_names()}
    assert {"mlp", "cnn", "rnn", "lstm", "gru"} <= models
    assert {m for m in ("autoencoder", "vae", "gan") if m in MODELS} <= models
    assert "diabetes" in {info(n).data for n in recipe_names()} and "mnist" in {info(n).data for n in recipe_names()}
    assert any(info(n).sweep for n in recipe_names())


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_composes_pins_everything_and_states_its_result(name, compose):
    from dltrain.config import validate

    r = info(name)
    assert set(r.header) == {"Run", "Reproduces", "Source", "CPU time"}, r.header
    assert re.match(rf"dltrain (-m |cv )?recipe={name}\b", r.header["Run"]), r.header["Run"]
    assert "TBD" not in r.path.read_text()
    overridden = {str(k).removeprefix("override ").lstrip("/") for e in r.body["defaults"] for k in e}
    assert PINNED_GROUPS <= overridden and "seed" in r.body, name
    assert r.expected and r.cpu_seconds
    spec = validate(compose(f"recipe={name}"))
    assert spec.expected == r.expected and spec.model["name"] == r.model and spec.data["name"] == r.data


def test_recipes_list_show_and_cp(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = in_process(capsys, "recipes")
    assert code == 0, err
    for name in recipe_names():
        assert name in out
    assert "test.accuracy >= " in out and "CPU time" in out
    code, out, _ = in_process(capsys, "recipes", "show", "mlp_digits")
    assert code == 0 and out == (recipes_dir() / "mlp_digits.yaml").read_text()
    code, out, _ = in_process(capsys, "recipes", "cp", "mlp_digits", str(tmp_path))
    assert code == 0 and (tmp_path / "mlp_digits.yaml").read_text() == (recipes_dir() / "mlp_digits.yaml").read_text()
    assert_one_line_exit_2(in_process(capsys, "recipes", "cp", "mlp_digits", str(tmp_path)), "already exists")
    assert_one_line_exit_2(in_process(capsys, "recipes", "show", "mlp_digitz"), "recipe='mlp_digitz'", "did you mean 'mlp_digits'?")
    assert_one_line_exit_2(in_process(capsys, "recipes", "shwo"), "'shwo'", "show")


def test_a_copied_recipe_runs_from_its_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    in_process(capsys, "recipes", "cp", "mlp_digits", "mine.yaml")
    text = (tmp_path / "mine.yaml").read_text().replace("hidden: 256", "hidden: 24")
    (tmp_path / "mine.yaml").write_text(text)
    code, out, err = in_process(capsys, "recipe=mine.yaml", "--cfg", "job")
    assert code == 0, err
    assert "hidden: 24" in out and "expected:" in out
    bad = text.replace("test.accuracy:", "test.acuracy:")
    (tmp_path / "bad.yaml").write_text(bad)
    assert_one_line_exit_2(in_process(capsys, "recipe=bad.yaml", "trainer=debug"), "expected.test.acuracy", "test.accuracy", "never produces")
    assert_one_line_exit_2(in_process(capsys, "verify", "bad.yaml"), "expected.test.acuracy")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["recipe=mlp_digitz"], ["recipe='mlp_digitz'", "did you mean 'mlp_digits'?"]),
        (["verify", "lstm_digit"], ["recipe='lstm_digit'", "lstm_digits"]),
        (["verify"], ["dltrain verify needs a recipe", "mlp_digits"]),
        (["recipe=mlp_digits", "+expected.test.r2.min=0.5"], ["expected.test.r2", "test.accuracy"]),
        (["recipe=mlp_digits", "+expected.test.accuracy.max=0.5"], ["min 0.975 is above max 0.5"]),
    ],
)
def test_bad_recipe_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    assert_one_line_exit_2(in_process(capsys, *args, "trainer.progress=none"), *fragments)
    assert not (tmp_path / "outputs").exists()


def test_verify_reports_a_miss_with_exit_code_1(tmp_path, capsys, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    code, _, err = in_process(capsys, "verify", "mlp_digits", "trainer.max_epochs=1", "optim.lr=1e-6", "trainer.progress=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 1
    assert "MISS" in err and "FAIL mlp_digits (0/2 metrics)" in err
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "train.log").is_file()


def test_a_recipe_run_twice_gives_the_same_weights(train_run, tmp_path, one_torch_thread):
    first, _ = train_run("recipe=mlp_digits", "trainer.max_epochs=2", run_dir=tmp_path / "a")
    second, _ = train_run("recipe=mlp_digits", "trainer.max_epochs=2", run_dir=tmp_path / "b")
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["best_weights_sha256"] == second["best_weights_sha256"] and first["test"] == second["test"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CI_RECIPES)
def test_ci_recipe_reaches_its_expected_metrics(name, tmp_path, capsys, monkeypatch, one_torch_thread):
    """CI verifies every single-run recipe that takes under a minute on a CPU."""
    monkeypatch.chdir(tmp_path)
    code, _, err = in_process(capsys, "verify", name, "trainer.progress=none", f"hydra.run.dir={tmp_path / name}")
    print(err)
    assert code == 0, err
    assert f"PASS {name}" in err


def test_a_cv_recipe_is_verified_by_its_folds_means_as_dltrain_cv_computes_them(tmp_path, capsys, monkeypatch, one_torch_thread):
    """verify mlp_cv_digits trains the 5 folds; the means it checks are cv.json's."""
    import json

    monkeypatch.chdir(tmp_path)
    code, _, err = in_process(capsys, "verify", "mlp_cv_digits", "trainer.progress=none", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'cv'}")
    result = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert result["k"] == 5 and result["completed"] == 5
    assert sorted(p.name for p in (tmp_path / "cv").glob("fold-*")) == [f"fold-{i}" for i in range(5)]
    assert f"{result['mean']['val_accuracy']:.4f}" in err and f"{result['mean']['test_accuracy']:.4f}" in err
    assert code in (0, 1) and ("PASS mlp_cv_digits" in err) == (code == 0)
