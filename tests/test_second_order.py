"""optim=cg and optim=newton side by side with scipy.optimize.minimize and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from dltrain.data import DATASETS
from dltrain.optim import OPTIMIZERS
from dltrain.second_order import ConjugateGradient, Newton
from tests.conftest import assert_one_line_exit_2
from tests.test_checkpoint import crash_after, steps
from tests.test_sweep import in_process

L2 = 1e-2  # on the weight matrices only, as reg=l2 does


def model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "logistic":
        return nn.Linear(30, 2).double()
    return nn.Sequential(nn.Linear(30, 8), nn.Tanh(), nn.Linear(8, 2)).double()  # non-convex


@pytest.fixture(scope="module")
def cancer() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_breast_cancer(return_X_y=True)
    return torch.tensor(StandardScaler().fit_transform(x)), torch.tensor(y)


def objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(net(x), y) + L2 * sum(p.pow(2).sum() for n, p in net.named_parameters() if n.endswith("weight"))


def scipy_minimize(kind: str, method: str, x: torch.Tensor, y: torch.Tensor):
    """scipy's CG or Newton-CG on the same model, data and starting weights, flattened."""
    net = model(kind)
    params = list(net.parameters())

    def load(w: np.ndarray) -> None:
        with torch.no_grad():
            torch._foreach_copy_(params, [torch.from_numpy(v).view_as(p) for v, p in zip(np.split(w, np.cumsum([p.numel() for p in params])[:-1]), params, strict=True)])

    def fun(w):
        load(w)
        net.zero_grad()
        loss = objective(net, x, y)
        loss.backward()
        return loss.item(), torch.cat([p.grad.reshape(-1) for p in params]).numpy().copy()

    def hessp(w, v):
        load(w)
        grads = torch.autograd.grad(objective(net, x, y), params, create_graph=True)
        hv = torch.autograd.grad(torch.cat([g.reshape(-1) for g in grads]), params, torch.from_numpy(v))
        return torch.cat([h.reshape(-1) for h in hv]).numpy()

    w0 = torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()
    return scipy.optimize.minimize(fun, w0, jac=True, hessp=hessp if method == "Newton-CG" else None, method=method, options={"maxiter": 2000})


def ours(kind: str, optimizer, x: torch.Tensor, y: torch.Tensor, **options):
    net = model(kind)
    opt = optimizer(net.parameters(), max_iter=2000, **options)

    def closure(backward: bool = True) -> torch.Tensor:
        opt.zero_grad()
        loss = objective(net, x, y)
        if backward:
            loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return objective(net, x, y).item(), opt.counts


CASES = {  # ours, its options, scipy's method
    "cg pr+": (ConjugateGradient, {}, "CG"),
    "cg fr": (ConjugateGradient, {"beta": "fr"}, "CG"),
    "newton-cg": (Newton, {"max_exact_params": 0}, "Newton-CG"),
    "newton exact": (Newton, {}, "Newton-CG"),
}


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_same_minimum_as_scipy_in_at_most_1_5x_its_evaluations(cancer, kind, case):
    optimizer, options, method = CASES[case]
    reference = scipy_minimize(kind, method, *cancer)
    assert reference.success, reference.message
    loss, counts = ours(kind, optimizer, *cancer, **options)
    print(f"{kind} {case}: scipy {method} f={reference.fun:.10f} nfev={reference.nfev} nit={reference.nit}; ours f={loss:.10f} {({k: counts[k] for k in ('n_iter', 'func_evals', 'hess_evals')})}")
    assert loss == pytest.approx(reference.fun, rel=1e-4)
    limit = 1.5 * reference.nfev if case != "cg fr" else 3 * reference.nfev  # scipy's CG is Polak-Ribiere; FR restarts less well
    assert counts["func_evals"] <= limit
    assert (counts["hess_evals"] > 0) == (optimizer is Newton)


def test_newton_on_logistic_regression_matches_scikit_learn_within_15_iterations(train_run):
    """`model=mlp model.layers=0` is multinomial logistic regression; with two classes and
    reg=l2 on the weights, w1 - w0 is scikit-learn's binary coefficient vector at C = 1/(2 l2 n)
    ... times 2: the softmax pair shares the penalty, so C = 1 / (l2 n)."""
    summary, run = train_run(
        "model=mlp", "model.layers=0", "data=breast_cancer", "reg=l2", f"reg.l2.weight={L2}", "optim=newton", "optim.max_iter=50", "sched=none", "trainer.max_epochs=1", "trainer.device=cpu"
    )
    assert summary["optim_counts"]["n_iter"] <= 15, summary["optim_counts"]
    data = DATASETS.build({"name": "breast_cancer"})
    x, y = data.train.x.double().numpy(), data.train.y.numpy()
    reference = LogisticRegression(C=1 / (L2 * len(x)), tol=1e-10, max_iter=10_000).fit(x, y)
    w = load_file(str(run / "checkpoints" / "last.safetensors"))
    weight, bias = w["1.weight"].double(), w["1.bias"].double()
    np.testing.assert_allclose((weight[1] - weight[0]).numpy(), reference.coef_[0], atol=1e-3)
    assert float(bias[1] - bias[0]) == pytest.approx(reference.intercept_[0], abs=1e-3)
    assert summary["test"]["accuracy"] == pytest.approx(reference.score(data.test.x.numpy(), data.test.y.numpy()), abs=1e-9)


@pytest.mark.parametrize("name", ["cg", "newton"])
def test_full_batch_methods_resume_bit_exactly(run_train, tmp_path, name):
    """CG carries its direction from one epoch's step to the next: the checkpoint keeps it."""
    args = (f"optim={name}", "optim.max_iter=3", "model.hidden=16", "trainer.max_epochs=4", "trainer.checkpoint.every_n_epochs=1", "trainer.checkpoint.keep_last=0", "sched=none")
    full = run_train(tmp_path / "full", *args)
    assert steps(tmp_path / "full") == [f"step-0000000{i}" for i in range(1, 5)]
    run = crash_after(tmp_path / "full", tmp_path / "r2", 2)
    resumed = run_train(run, *args, f"trainer.resume={run}")
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert resumed["optim_counts"] == full["optim_counts"]


def test_counts_are_in_the_summary_for_full_batch_methods_only(train_run, tmp_path):
    summary, _ = train_run("optim=lbfgs", "optim.max_iter=3", "trainer.max_epochs=2")
    counts = summary["optim_counts"]
    assert 2 <= counts["n_iter"] <= 6 and counts["func_evals"] >= counts["n_iter"] and "hess_evals" not in counts
    summary, _ = train_run("optim=adam", "trainer.max_epochs=1", "trainer.limit_train_batches=2", run_dir=tmp_path / "adam")
    assert "optim_counts" not in summary


def test_a_zero_rate_is_no_step(cancer):
    """A schedule that anneals lr to 0 ends with steps that leave the weights alone."""
    for optimizer in (ConjugateGradient, Newton):
        net = model("logistic")
        before = [p.detach().clone() for p in net.parameters()]
        opt = optimizer(net.parameters(), lr=0.0)
        opt.step(lambda backward=True, net=net, opt=opt: _loss(net, opt, *cancer, backward))
        assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def _loss(net, opt, x, y, backward):
    opt.zero_grad()
    loss = objective(net, x, y)
    if backward:
        loss.backward()
    return loss


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["optim=newton", "trainer.compile=true"], ["trainer.compile=True", "optim=newton", "allowed: false"]),
        (["optim=newton", "trainer.precision=bf16"], ["trainer.precision='bf16'", "optim=newton", "allowed: 32"]),
        (["optim=cg", "optim.beta=hs"], ["optim.beta", "'hs'", "pr+", "fr"]),
        (["optim=cg", "model=gan"], ["optim='cg'", "alternates"]),
    ],
)
def test_bad_settings_are_one_line(capsys, args, fragments):
    assert_one_line_exit_2(in_process(capsys, *args, "trainer.max_epochs=1"), *fragments)


def test_both_are_registered_full_batch_methods_with_a_closure():
    for name in ("cg", "newton"):
        entry = OPTIMIZERS.get(name)
        assert entry.meta["closure"] and entry.defaults()["full_batch"] is True
    assert OPTIMIZERS.get("newton").meta["hessian"] and not OPTIMIZERS.get("cg").meta.get("hessian")
