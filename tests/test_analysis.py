"""The analysis verbs (eval, predict, export, compress, explain, robust) on small trained runs.

Runs are trained once per module, in-process, on digits (mlp, cnn, lstm), iris, diabetes and
the sine series; the verbs run in-process through `dltrain.cli.main` and, for exit codes and
files, a few as a subprocess.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_one_line_exit_2
from tests.test_cli import assert_user_error, dltrain

RUNS = {
    "mlp": ("model=mlp", "trainer.max_epochs=5"),
    "cnn": ("model=cnn", "model.channels=16", "model.hidden=64", "trainer.max_epochs=5"),
    "lstm": ("model=lstm", "model.hidden=64", "trainer.max_epochs=4"),
    "iris": ("data=iris", "trainer.max_epochs=20"),
    "diabetes": ("data=diabetes", "loss=mse", "trainer.max_epochs=10"),
    "sine": ("data=sine", "model=gru", "model.hidden=16", "trainer.max_epochs=2"),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and far faster when other work shares the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(name) -> (summary, run dir): each run of RUNS trained once, on first use."""
    from omegaconf import OmegaConf
    from rich.console import Console

    from dltrain.composition import compose_checked
    from dltrain.training import train

    root = tmp_path_factory.mktemp("runs")
    cache: dict[str, tuple[dict, Path]] = {}

    def get(name: str) -> tuple[dict, Path]:
        if name not in cache:
            cfg = compose_checked(["trainer.progress=none", *RUNS[name]])
            out = root / name
            summary = train(cfg, out, Console(quiet=True), config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
            cache[name] = summary, out
        return cache[name]

    return get


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


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_png(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as img:
        return img.format == "PNG" and img.width > 50 and img.height > 50


def loaded(run_dir: Path):
    from dltrain.runs import load_run

    return load_run(run_dir)


# ---- eval ------------------------------------------------------------------------------------


def test_eval_classification_metrics_agree_with_training_and_sklearn(trained, cli):
    from sklearn.metrics import f1_score

    summary, run = trained("mlp")
    code, out, _ = cli("eval", str(run))
    assert code == 0 and "macro_f1" in out
    folder = run / "analysis" / "eval"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["ckpt"] == "best" and metrics["n"] == 360
    assert metrics["metrics"]["accuracy"] == summary["test"]["accuracy"]  # same checkpoint, same count
    preds = read_rows(folder / "predictions.csv")
    true, pred = [r["true"] for r in preds], [r["pred"] for r in preds]
    assert metrics["metrics"]["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-12)
    per_class = read_rows(folder / "per_class.csv")
    assert [r["class"] for r in per_class] == [str(i) for i in range(10)]
    assert sum(int(r["support"]) for r in per_class) == 360
    cm = np.array([[int(v) for k, v in r.items() if k != "true"] for r in read_rows(folder / "confusion_matrix.csv")])
    assert cm.sum() == 360 and np.trace(cm) == round(summary["test"]["accuracy"] * 360)
    mistakes = read_rows(folder / "mistakes.csv")
    assert len(mistakes) == min(16, 360 - np.trace(cm))
    assert all(m["true"] != m["pred"] for m in mistakes)
    assert [float(m["confidence"]) for m in mistakes] == sorted((float(m["confidence"]) for m in mistakes), reverse=True)
    for png in ("confusion_matrix.png", "mistakes.png"):
        assert is_png(folder / png)


def test_eval_regression_and_forecasting_report_data_units(trained, cli):
    summary, run = trained("diabetes")
    assert cli("eval", str(run))[0] == 0
    metrics = json.loads((run / "analysis/eval/metrics.json").read_text())["metrics"]
    for k in ("rmse", "mae", "r2"):
        assert metrics[k] == pytest.approx(summary["test"][k], rel=1e-6)
    assert metrics["rmse"] > 10  # the disease score's own units, not standardised ones
    assert is_png(run / "analysis/eval/pred_vs_true.png")

    summary, run = trained("sine")
    code, out, _ = cli("eval", str(run), "split=val")
    assert code == 0 and "r2" in out
    metrics = json.loads((run / "analysis/eval/metrics.json").read_text())["metrics"]
    assert metrics["r2"] == pytest.approx(summary["final"]["val_r2"], abs=1e-6)
    assert is_png(run / "analysis/eval/forecast.png")


def test_eval_as_a_user_runs_it(trained, tmp_path):
    _, run = trained("lstm")
    result = dltrain("eval", str(run), "ckpt=last", "mistakes=4", cwd=tmp_path, env={"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "per class" in result.stdout
    assert f"wrote {run}/analysis/eval/" in result.stdout
    assert json.loads((run / "analysis/eval/metrics.json").read_text())["ckpt"] == "last"
    assert len(read_rows(run / "analysis/eval/mistakes.csv")) <= 4


# ---- predict ---------------------------------------------------------------------------------


def test_predict_applies_the_training_normalisation(trained, cli, tmp_path):
    _, run = trained("mlp")
    lr = loaded(run)
    data = lr.built.data
    with torch.inference_mode():
        expected = lr.built.model(data.test.x).argmax(-1).numpy()
    raw = (data.test.x * data.x_std[0] + data.x_mean[0]).numpy()  # what the original files hold
    np.savez(tmp_path / "grey.npz", x=raw[:, 0])  # (N, 8, 8): no channel axis
    assert cli("predict", str(run), f"input={tmp_path / 'grey.npz'}")[0] == 0
    rows = read_rows(run / "analysis/predict/predictions.csv")
    assert [int(r["pred_index"]) for r in rows] == expected.tolist()
    probs = np.array([[float(r[f"prob_{k}"]) for k in range(10)] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)

    table = tmp_path / "rows.csv"
    header = ",".join(f"pixel{i}" for i in range(64))
    np.savetxt(table, raw[:25].reshape(25, 64), delimiter=",", header=header, comments="")
    out = tmp_path / "preds" / "out.csv"
    code, stdout, _ = cli("predict", str(run), f"input={table}", f"output={out}")
    assert code == 0 and f"wrote 25 predictions to {out}" in stdout
    assert [int(r["pred_index"]) for r in read_rows(out)] == expected[:25].tolist()


def test_predict_reads_image_files_and_folders(trained, cli, tmp_path):
    from PIL import Image

    _, run = trained("mlp")
    data = loaded(run).built.data
    raw = (data.test.x[:20, 0] * data.x_std[0] + data.x_mean[0]).numpy()  # digits: 0..16
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(raw):  # saved as 8-bit and twice the size, like a user's scan
        Image.fromarray(np.clip(img / 16 * 255, 0, 255).round().astype(np.uint8)).resize((16, 16), Image.NEAREST).save(folder / f"{i:02d}.png")
    assert cli("predict", str(run), f"input={folder}")[0] == 0
    rows = read_rows(run / "analysis/predict/predictions.csv")
    assert [r["input"] for r in rows] == [f"{i:02d}.png" for i in range(20)]
    truth = data.test.y[:20].tolist()
    assert sum(int(r["pred_index"]) == t for r, t in zip(rows, truth, strict=True)) >= 17
    assert cli("predict", str(run), f"input={folder / '03.png'}")[0] == 0
    assert len(read_rows(run / "analysis/predict/predictions.csv")) == 1


def test_predict_regression_and_bad_inputs(trained, cli, tmp_path):
    _, run = trained("diabetes")
    data = loaded(run).built.data
    raw = data.test.x.numpy() * np.array(data.x_std) + np.array(data.x_mean)
    np.save(tmp_path / "x.npy", raw)
    assert cli("predict", str(run), f"input={tmp_path / 'x.npy'}")[0] == 0
    preds = np.array([float(r["pred"]) for r in read_rows(run / "analysis/predict/predictions.csv")])
    eval_code = cli("eval", str(run))[0]
    assert eval_code == 0
    evaluated = np.array([float(r["pred"]) for r in read_rows(run / "analysis/eval/predictions.csv")])
    assert np.allclose(preds, evaluated, rtol=1e-4)  # the same predictions, in the score's units

    np.savetxt(tmp_path / "narrow.csv", raw[:, :9], delimiter=",")
    assert_one_line_exit_2(cli("predict", str(run), f"input={tmp_path / 'narrow.csv'}"), "narrow.csv holds shape (89, 9)", "expects (N, 10)")
    _, digits_run = trained("mlp")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 63)))
    assert_one_line_exit_2(cli("predict", str(digits_run), f"input={tmp_path / 'wrong.npz'}"), "(3, 63)", "(N, 1, 8, 8)", "(N, 64)")
    assert_one_line_exit_2(cli("predict", str(run), f"input={tmp_path / 'x.npy'}".replace("x.npy", "missing.csv")), "does not exist")
    assert_one_line_exit_2(cli("predict", str(run), f"input={run / 'config.yaml'}"), "unknown file type '.yaml'")
    assert_one_line_exit_2(cli("predict", str(run)), "needs input=FILE")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"not a png")
    assert_one_line_exit_2(cli("predict", str(run), f"input={tmp_path / 'img'}"), "holds images", "table data")


# ---- export ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_with_a_dynamic_batch(trained, cli, fmt):
    _, run = trained("cnn")
    code, out, _ = cli("export", str(run), f"format={fmt}")
    assert code == 0 and "matches PyTorch" in out
    folder = run / "analysis" / "export"
    report = json.loads((folder / f"model.{fmt}.json").read_text())
    assert report["ok"] and report["max_abs_diff"] < 1e-4
    assert {c["batch"] for c in report["checks"]} >= {1, 7, 360}
    assert report["input_shape"] == ["batch", 1, 8, 8] and report["output_shape"] == ["batch", 10]

    # the file takes raw pixels (digits: 0 to 16): the run's standardisation is inside it
    lr = loaded(run)
    data = lr.built.data
    assert report["normalization"] == {"mean": data.x_mean, "std": data.x_std} and report["inputs"].startswith("raw values")
    x = data.test.x
    raw = x * data.x_std[0] + data.x_mean[0]
    assert float(raw.min()) == 0.0 and float(raw.max()) == 16.0
    # load the file independently and compare on fresh batch sizes
    for b in (1, 7, 50, len(x)):
        with torch.inference_mode():
            expected = lr.built.model(x[:b]).numpy()
        if fmt == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: raw[:b].numpy()})[0]
        else:
            with warnings.catch_warnings():  # TorchScript is deprecated in PyTorch, still supported
                warnings.simplefilter("ignore", DeprecationWarning)
                got = torch.jit.load(str(folder / "model.pt"))(raw[:b]).detach().numpy()
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
    # so the exported file on raw inputs scores what the run scored
    summary = json.loads((run / "summary.json").read_text())
    assert abs(float((got.argmax(1) == data.test.y.numpy()).mean()) - summary["test"]["accuracy"]) < 1e-9


@pytest.mark.parametrize(("name", "fmt"), [("lstm", "onnx"), ("mlp", "torchscript"), ("sine", "onnx")])
def test_export_other_families(trained, cli, name, fmt):
    _, run = trained(name)
    assert cli("export", str(run), f"format={fmt}")[0] == 0
    report = json.loads((run / "analysis" / "export" / f"model.{fmt}.json").read_text())
    assert report["ok"] and report["max_abs_diff"] < 1e-4


# ---- compress --------------------------------------------------------------------------------


def compress_rows(run: Path) -> list[dict]:
    return json.loads((run / "analysis/compress/compress.json").read_text())["rows"]


def test_int8_quantization_of_an_mlp_keeps_accuracy_and_shrinks_the_file(trained, cli):
    _, run = trained("mlp")
    assert cli("compress", str(run), "quantize=int8", "repeats=5")[0] == 0
    base, q = compress_rows(run)
    assert q["accuracy"] >= base["accuracy"] - 0.01
    assert base["bytes"] / q["bytes"] >= 3
    assert q["bytes"] == (run / "analysis/compress/model_int8.pt").stat().st_size
    assert base["latency_ms"] > 0 and q["latency_ms"] > 0
    assert [r["model"] for r in read_rows(run / "analysis/compress/compress.csv")] == ["original (fp32)", "int8 dynamic (torch)"]


def test_pruning_half_of_a_cnn_with_a_short_finetune_keeps_accuracy(trained, cli):
    _, run = trained("cnn")
    code, _, _ = cli("compress", str(run), "prune=0.5", "finetune_epochs=2", "repeats=5")
    assert code == 0
    base, pruned = compress_rows(run)
    assert pruned["accuracy"] >= base["accuracy"] - 0.01
    assert pruned["sparsity"] == pytest.approx(0.5, abs=0.005) and base["sparsity"] == 0
    state = torch.load(run / "analysis/compress/model_pruned.pt", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in state)  # pruning made permanent
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.005)


def test_structured_pruning_removes_whole_units_but_not_outputs(trained, cli):
    _, run = trained("mlp")
    assert cli("compress", str(run), "prune=0.25", "prune.kind=structured", "repeats=3")[0] == 0
    assert compress_rows(run)[1]["model"] == "pruned 0.25 structured"
    state = torch.load(run / "analysis/compress/model_pruned.pt", weights_only=True)
    hidden = [state["1.weight"], state["4.weight"]]  # Flatten, Linear, BN, ReLU, Linear, BN, ReLU, Linear
    for w in hidden:
        dead = (w == 0).all(1).sum().item()
        assert dead == round(0.25 * w.shape[0])
    assert (state["7.weight"] != 0).all(1).all()  # every class keeps its output row


def test_compress_a_recurrent_net_prunes_and_quantizes_lstm_layers(trained, cli):
    _, run = trained("lstm")
    code, out, _ = cli("compress", str(run), "prune=0.3", "quantize=int8", "repeats=3")
    assert code == 0 and "int8: 2 layers quantized" in out  # the LSTM and the head
    base, pruned, q = compress_rows(run)
    assert pruned["sparsity"] == pytest.approx(0.3, abs=0.005) and q["sparsity"] == pruned["sparsity"]
    assert base["bytes"] / q["bytes"] >= 3


def test_torchao_backend_quantizes_the_linear_layers(trained, cli):
    pytest.importorskip("torchao")
    _, run = trained("mlp")
    assert cli("compress", str(run), "quantize=int8", "quantize_backend=torchao", "repeats=3")[0] == 0
    base, q = compress_rows(run)
    assert q["model"] == "int8 dynamic (torchao)"
    assert q["accuracy"] >= base["accuracy"] - 0.01 and base["bytes"] / q["bytes"] >= 3


# ---- robust ----------------------------------------------------------------------------------


def test_fgsm_lowers_accuracy_and_eps_zero_is_the_clean_accuracy(trained, cli):
    summary, run = trained("cnn")
    code, out, _ = cli("robust", str(run), "attack=fgsm", "eps=[0,0.1,0.3]")
    assert code == 0 and "fgsm" in out
    rows = read_rows(run / "analysis/robust/fgsm.csv")
    acc = {float(r["eps"]): float(r["accuracy"]) for r in rows}
    report = json.loads((run / "analysis/robust/fgsm.json").read_text())
    assert report["rows"][0]["accuracy"] == summary["test"]["accuracy"]  # exactly
    assert acc[0.1] < acc[0] and acc[0.3] < acc[0.1]
    assert is_png(run / "analysis/robust/fgsm.png")
    lo, hi = report["clamped_to"]
    assert lo < 0 < hi  # digits' 0..16 pixel range in standardised units


def test_pgd_is_at_least_as_strong_as_fgsm_and_noise_is_milder(trained, cli):
    summary, run = trained("cnn")
    assert cli("robust", str(run), "attack=fgsm", "eps=0.2")[0] == 0
    assert cli("robust", str(run), "attack=pgd", "eps=0.2", "steps=5")[0] == 0
    assert cli("robust", str(run), "attack=noise", "eps=[0,0.2]")[0] == 0
    fgsm = json.loads((run / "analysis/robust/fgsm.json").read_text())["rows"][0]["accuracy"]
    pgd = json.loads((run / "analysis/robust/pgd.json").read_text())["rows"][0]["accuracy"]
    noise = json.loads((run / "analysis/robust/noise.json").read_text())["rows"]
    assert pgd <= fgsm + 0.01
    assert noise[0]["accuracy"] == summary["test"]["accuracy"]
    assert noise[1]["accuracy"] > pgd  # random noise of the same size hurts far less than an attack


# ---- explain ---------------------------------------------------------------------------------


def test_integrated_gradients_add_up_to_the_logit_change(trained, cli):
    _, run = trained("cnn")
    code, out, _ = cli("explain", str(run), "method=integrated_gradients", "n=8", "steps=64")
    assert code == 0 and "completeness" in out
    folder = run / "analysis" / "explain"
    assert is_png(folder / "integrated_gradients.png")
    saved = np.load(folder / "integrated_gradients.npz")
    assert saved["attributions"].shape == (8, 1, 8, 8)
    model = loaded(run).built.model
    x = torch.from_numpy(saved["inputs"])
    with torch.inference_mode():
        logits, base = model(x), model(torch.zeros_like(x))
    pred = torch.from_numpy(saved["pred"])
    assert (logits.argmax(-1) == pred).all()
    change = (logits - base).gather(1, pred[:, None])[:, 0].numpy()
    assert np.allclose(saved["attributions"].reshape(8, -1).sum(1), change, atol=0.05 + 0.02 * np.abs(change).max())
    rows = read_rows(folder / "integrated_gradients.csv")
    assert [int(r["index"]) for r in rows] == list(range(8))


@pytest.mark.parametrize(("name", "method", "shape"), [("mlp", "saliency", (4, 1, 8, 8)), ("lstm", "occlusion", (4, 1, 8, 8)), ("iris", "integrated_gradients", (4, 4))])
def test_explain_other_families(trained, cli, name, method, shape):
    _, run = trained(name)
    assert cli("explain", str(run), f"method={method}", "n=4")[0] == 0
    saved = np.load(run / "analysis" / "explain" / f"{method}.npz")
    assert saved["attributions"].shape == shape and np.abs(saved["attributions"]).sum() > 0
    if method == "saliency":
        assert (saved["attributions"] >= 0).all()
    assert is_png(run / "analysis" / "explain" / f"{method}.png")


# ---- bad input -------------------------------------------------------------------------------


def test_verbs_that_do_not_apply_say_why(trained, cli):
    _, run = trained("diabetes")
    assert_one_line_exit_2(cli("explain", str(run)), "does not apply", "regression run", "needs a classification run")
    assert_one_line_exit_2(cli("robust", str(run), "attack=pgd"), "does not apply", "regression run")
    _, sine = trained("sine")
    assert_one_line_exit_2(cli("robust", str(sine)), "forecasting run")


def test_generative_runs_are_refused_with_a_reason(tmp_path, cli):
    from omegaconf import OmegaConf

    from dltrain.composition import compose_checked
    from dltrain.config import validate
    from dltrain.engine.rundir import RunDir
    from dltrain.tasks import TASKS
    from dltrain.training import build

    if "gan" not in TASKS:
        pytest.skip("no generative tasks registered")
    cfg = compose_checked(["model=gan"])
    run = RunDir(tmp_path / "gan")
    run.create()
    run.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    run.save_weights("best", build(validate(cfg), torch.device("cpu")).model.state_dict(), {})  # untrained is enough
    for verb, *extra in (["eval"], ["explain"], ["robust"], ["export"], ["compress", "quantize=int8"], ["predict", f"input={run.config}"]):
        assert_one_line_exit_2(cli(verb, str(run.path), *extra), f"dltrain {verb} does not apply", "it is a gan run")


def test_bad_options_are_one_line_errors(trained, cli):
    _, run = trained("mlp")
    assert_one_line_exit_2(cli("export", str(run), "format=tflite"), "format='tflite'", "onnx, torchscript")
    assert_one_line_exit_2(cli("explain", str(run), "method=shap"), "method='shap'", "integrated_gradients, occlusion, saliency")
    assert_one_line_exit_2(cli("robust", str(run), "attack=cw"), "attack='cw'")
    assert_one_line_exit_2(cli("robust", str(run), "eps=[0,-0.1]"), "eps=[0, -0.1]", ">= 0")
    assert_one_line_exit_2(cli("compress", str(run)), "nothing to do")
    assert_one_line_exit_2(cli("compress", str(run), "prune=1.5"), "prune.amount=1.5")
    assert_one_line_exit_2(cli("compress", str(run), "prune=0.5", "prune.kind=channels"), "prune.kind='channels'", "structured, unstructured")
    assert_one_line_exit_2(cli("compress", str(run), "quantize=int8", "prune.kind=structured", "prune.kind.x=1"), "conflicts with prune.kind")
    assert_one_line_exit_2(cli("eval", str(run), "splt=val"), "'splt'", "did you mean 'split'?")
    assert_one_line_exit_2(cli("eval", str(run), "ckpt=worst"), "ckpt='worst'", "best, last")
    assert_one_line_exit_2(cli("eval"), "needs RUN_DIR")


def test_missing_or_unreadable_run_dirs_are_one_line_errors(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    _, run = trained("mlp")
    assert_user_error(dltrain("eval", str(tmp_path / "nowhere"), cwd=tmp_path), "does not exist")
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.yaml").write_text((run / "config.yaml").read_text())
    assert_user_error(dltrain("export", str(no_ckpt), cwd=tmp_path), "no checkpoint")
    newer = tmp_path / "newer"
    (newer / "checkpoints").mkdir(parents=True)
    (newer / "config.yaml").write_text((run / "config.yaml").read_text())
    save_file(load_file(run / "checkpoints/best.safetensors"), newer / "checkpoints/best.safetensors", metadata={"format": "99"})
    assert_user_error(dltrain("robust", str(newer), cwd=tmp_path), "checkpoint format 99", "upgrade dltrain")
    assert not (newer / "analysis").exists()


def test_help_lists_the_analysis_verbs(tmp_path):
    out = dltrain("--help", cwd=tmp_path).stdout
    for verb in ("eval", "predict", "export", "compress", "explain", "robust"):
        assert f"  {verb} " in out


# ---- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_readme_workflow_on_default_models(tmp_path):
    """The README's analysis commands, as a user runs them, on the default MLP and CNN."""
    env = {"COLUMNS": "160"}
    mlp, cnn = tmp_path / "mlp", tmp_path / "cnn"
    for run, args in ((mlp, ["trainer.max_epochs=10"]), (cnn, ["model=cnn", "trainer.max_epochs=6"])):
        result = dltrain(*args, "trainer.progress=none", f"hydra.run.dir={run}", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
    commands = [
        (cnn, "eval"), (cnn, "eval", "ckpt=last", "split=val"),
        (cnn, "export", "format=onnx"), (cnn, "export", "format=torchscript"),
        (mlp, "compress", "quantize=int8"), (cnn, "compress", "prune=0.5", "finetune_epochs=2"),
        (cnn, "explain", "method=integrated_gradients", "n=16"), (cnn, "explain", "method=occlusion", "n=8"),
        (cnn, "robust", "attack=fgsm", "eps=[0,0.05,0.1,0.2]"), (cnn, "robust", "attack=pgd", "eps=[0,0.1]", "steps=10"),
    ]
    for run, verb, *args in commands:
        result = dltrain(verb, str(run), *args, cwd=tmp_path, env=env)
        assert result.returncode == 0, (verb, args, result.stderr)
    for path in ("eval/confusion_matrix.png", "eval/mistakes.png", "export/model.onnx", "export/model.pt", "compress/compress.csv",
                 "explain/integrated_gradients.png", "explain/occlusion.png", "robust/fgsm.png", "robust/pgd.csv"):
        assert (cnn / "analysis" / path).is_file(), path
    clean = json.loads((cnn / "summary.json").read_text())["test"]["accuracy"]
    for fmt in ("onnx", "torchscript"):
        assert json.loads((cnn / f"analysis/export/model.{fmt}.json").read_text())["max_abs_diff"] < 1e-4
    base, q = compress_rows(mlp)
    assert q["accuracy"] >= base["accuracy"] - 0.01 and base["bytes"] / q["bytes"] >= 3
    base, pruned = compress_rows(cnn)
    assert pruned["accuracy"] >= base["accuracy"] - 0.01 and pruned["sparsity"] == pytest.approx(0.5, abs=0.005)
    fgsm = {r["eps"]: r["accuracy"] for r in json.loads((cnn / "analysis/robust/fgsm.json").read_text())["rows"]}
    assert fgsm[0] == clean and fgsm[0.1] < clean
    pgd = {r["eps"]: r["accuracy"] for r in json.loads((cnn / "analysis/robust/pgd.json").read_text())["rows"]}
    assert pgd[0] == clean and pgd[0.1] <= fgsm[0.1] + 0.01
