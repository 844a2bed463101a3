"""trainer.log_grad_norms: per-layer gradient and weight norms, their plot, and the vanishing warning."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from dltrain.engine.diagnostics import GradNorms, layers
from tests.test_sweep import in_process


def test_the_norms_are_torchs_own_per_layer_means_over_the_epochs_steps():
    """Each layer's value is torch.nn.utils.get_total_norm of its gradients, averaged over the
    epoch's optimizer steps; the weight norm is that of its parameters at the epoch's end."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    warnings: list[str] = []
    norms = GradNorms(net, [opt], warnings.append)
    assert norms.names == ["0_linear", "1_batchnorm1d", "3_linear"] and norms.weight_layers == ["0_linear", "3_linear"]
    norms.on_epoch_start(1)
    expected = {name: 0.0 for name in norms.names}
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.randn(8, 5)), torch.randint(0, 3, (8,))).backward()
        for name, params in layers(net):
            expected[name] += torch.nn.utils.get_total_norm([p.grad for p in params]).item() / 3
        opt.step()
    row = {"epoch": 1}
    norms.on_epoch_end(row)
    for name, params in layers(net):
        assert row[f"grad_norm/{name}"] == pytest.approx(expected[name], rel=1e-5)
        assert row[f"weight_norm/{name}"] == pytest.approx(torch.nn.utils.get_total_norm(params).item(), rel=1e-5)
    assert warnings == []
    norms.on_epoch_start(2)  # a new epoch starts from zero
    row = {"epoch": 2}
    norms.on_epoch_end(row)
    assert row["grad_norm/0_linear"] == 0.0
    norms.close()
    assert not opt._optimizer_step_post_hooks


def test_each_optimizer_measures_only_the_parameters_it_steps():
    """A GAN's generator step leaves gradients on the discriminator: they are not counted again."""
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    net = nn.ModuleDict({"g": g, "d": d})
    opt_d, opt_g = torch.optim.SGD(d.parameters(), lr=0.0), torch.optim.SGD(g.parameters(), lr=0.0)
    norms = GradNorms(net, [opt_d, opt_g], lambda m: None)
    norms.on_epoch_start(1)
    d(g(torch.ones(1, 2))).sum().backward()
    d_norm = torch.nn.utils.get_total_norm([p.grad for p in d.parameters()]).item()
    opt_d.step()
    for p in d.parameters():
        p.grad.mul_(100)  # what the generator's step would see on d: must not count
    opt_g.step()
    row = {"epoch": 1}
    norms.on_epoch_end(row)
    assert row["grad_norm/d_linear"] == pytest.approx(d_norm, rel=1e-6)


def test_a_deep_sigmoid_net_warns_once_and_the_run_writes_every_norm(capsys, tmp_path):
    run = tmp_path / "run"
    code, out, err = in_process(
        capsys, "model.layers=8", "model.hidden=16", "model.activation=sigmoid", "model.batchnorm=false", "trainer.log_grad_norms=true", "trainer.max_epochs=2", "trainer.progress=lines", f"hydra.run.dir={run}"
    )
    assert code == 0, err
    text = out + err
    assert text.count("vanishing gradients:") == 1, text
    warning = next(line for line in text.splitlines() if "vanishing gradients:" in line)
    assert "1_linear's gradient norm is" in warning and "of 17_linear's (epoch 1)" in warning and "model.activation=relu" in warning
    assert "grad_norm/" not in text  # the epoch lines stay short
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    columns = [c for c in rows[0] if c.startswith("grad_norm/")]
    assert columns == [f"grad_norm/{i}_linear" for i in range(1, 18, 2)] and len(rows) == 2
    assert all(f"weight_norm/{c.removeprefix('grad_norm/')}" in rows[0] for c in columns)
    summary = json.loads((run / "summary.json").read_text())
    ratio = summary["grad_norms"]["first_to_last"]
    assert ratio == pytest.approx(float(rows[-1]["grad_norm/1_linear"]) / float(rows[-1]["grad_norm/17_linear"]), rel=1e-4) and ratio < 1e-4
    assert not any("/" in k for k in summary["final"])
    assert (run / "plots" / "grad_norms.png").stat().st_size > 10_000


def test_relu_and_batch_norm_keep_the_first_layers_gradient(train_run):
    summary, run = train_run("model.layers=8", "model.hidden=16", "model.activation=relu", "model.batchnorm=true", "trainer.log_grad_norms=true", "trainer.max_epochs=1")
    assert summary["grad_norms"]["first_to_last"] > 0.01
    assert (run / "plots" / "grad_norms.png").exists()


def test_off_by_default_and_expected_needs_it_on(train_run, compose):
    from dltrain.config import validate
    from dltrain.errors import UserError

    summary, run = train_run("trainer.max_epochs=1", "trainer.limit_train_batches=2")
    assert "grad_norms" not in summary and not (run / "plots" / "grad_norms.png").exists()
    assert "grad_norm/" not in (run / "metrics.csv").read_text()
    with pytest.raises(UserError, match=r"expected.grad_norms.first_to_last: task classification never produces"):
        validate(compose("+expected={grad_norms.first_to_last: {max: 1.0e-4}}"))
    assert validate(compose("trainer.log_grad_norms=true", "+expected={grad_norms.first_to_last: {max: 1.0e-4}}")).expected


def test_a_gan_logs_both_networks(train_run):
    summary, run = train_run("model=gan", "model.hidden=16", "trainer.log_grad_norms=true", "trainer.max_epochs=1", "trainer.limit_train_batches=3")
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "grad_norm/generator" in header and "grad_norm/discriminator" in header, header
