"""Pins for every private API of Hydra, loky, Optuna and CPython that dltrain uses
(dltrain/private_api.py). Each test fails loudly, naming what changed, when an upgrade moves or
changes what dltrain relies on; dltrain itself then falls back to a plainer path."""

from __future__ import annotations

import inspect

import pytest

from dltrain import private_api
from dltrain.overrides import parse


def test_hydra_basic_sweeper_enumerates_grids_as_dltrain_numbers_them():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse(["optim=sgd,adam", "model.hidden=16,32,64", "seed=1"])
    hydra_jobs = BasicSweeper.split_arguments(list(parsed), None)[0]
    assert hydra_jobs == private_api.grid_jobs(parsed)
    assert hydra_jobs[0] == ["optim=sgd", "model.hidden=16", "seed=1"] and len(hydra_jobs) == 6
    # the fallback computes the same jobs in the same order
    original = BasicSweeper.split_arguments
    try:
        del BasicSweeper.split_arguments
        assert private_api.grid_jobs(parsed) == hydra_jobs
    finally:
        BasicSweeper.split_arguments = original


def test_hydra_applies_value_overrides_to_a_composed_config_like_composing_them(compose):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    assert callable(getattr(ConfigLoaderImpl, "_apply_overrides_to_config", None)), "Hydra moved _apply_overrides_to_config"
    cfg = compose("model=cnn")
    assert private_api.apply_overrides(parse(["model.channels=[4,8]", "optim.lr=0.01"]), cfg) is True
    assert cfg == compose("model=cnn", "model.channels=[4,8]", "optim.lr=0.01")


def test_hydra_basic_sweeper_validates_batches_through_the_method_dltrain_skips():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    assert "validate_batch_is_legal" in {name for name, _ in inspect.getmembers(BasicSweeper)}, "Hydra renamed validate_batch_is_legal"


def test_hydra_job_return_keeps_the_raw_value_and_the_exception():
    from hydra.core.utils import JobReturn, JobStatus

    failed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("pruned"))
    assert isinstance(private_api.job_return_value(failed), ValueError)
    with pytest.raises(ValueError):
        failed.return_value  # noqa: B018  (the public property re-raises: why dltrain reads the field)
    assert private_api.job_return_value(JobReturn(status=JobStatus.COMPLETED, _return_value=0.5)) == 0.5


def test_hydra_plugins_registry_takes_a_plugin_class():
    from hydra.core.plugins import Plugins

    from hydra_plugins.dltrain_optuna_sweeper.optuna_sweeper import OptunaSweeper, register

    register()
    plugins = Plugins.instance()
    assert isinstance(plugins.class_name_to_class, dict), "Hydra changed Plugins.class_name_to_class"
    assert plugins.class_name_to_class[f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}"] is OptunaSweeper


def test_hydra_joblib_launcher_has_the_launch_dltrain_wraps():
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

    assert list(inspect.signature(JoblibLauncher.launch).parameters) == ["self", "job_overrides", "initial_job_idx"]


def test_loky_names_its_dead_worker_error_its_executor_and_its_start_method():
    error = private_api.terminated_worker_error()
    assert error is not None and issubclass(error, BaseException), "loky moved TerminatedWorkerError"
    import joblib.externals.loky.reusable_executor as reusable
    from joblib.externals.loky.backend.context import set_start_method

    assert hasattr(reusable, "_executor"), "loky renamed its reusable executor global"
    assert list(inspect.signature(set_start_method).parameters) == ["method", "force"]


def test_loky_executor_is_found_once_joblib_has_started_one():
    from joblib import Parallel, delayed

    assert Parallel(n_jobs=2, backend="loky")(delayed(abs)(-i) for i in range(2)) == [0, 1]
    executor = private_api.loky_executor()
    assert executor is not None and callable(getattr(executor, "terminate", None) or executor.shutdown)


def test_optuna_trials_are_found_by_their_storage_id():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.ask()
    trial = study.ask()
    assert isinstance(private_api.trial_id(trial), int)
    again = private_api.trial_by_id(study, private_api.trial_id(trial))
    assert again.number == trial.number == 1
    again.report(0.5, 1)
    assert study.trials[1].intermediate_values == {1: 0.5}


def test_cpython_runs_exit_handlers_on_demand():
    """In a child process: the handlers of this test process (loky's among them) must not run."""
    import subprocess
    import sys

    code = "import atexit, os\nfrom dltrain.private_api import run_exit_handlers\natexit.register(print, 'handler ran')\nrun_exit_handlers()\nos._exit(0)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "handler ran\n", result.stderr


def test_torch_strong_wolfe_is_the_line_search_of_cg_and_newton_and_the_fallback_converges(monkeypatch):
    import torch
    from torch.optim.lbfgs import _strong_wolfe

    import dltrain.second_order as second_order

    assert private_api.strong_wolfe() is _strong_wolfe
    assert list(inspect.signature(_strong_wolfe).parameters)[:7] == ["obj_func", "x", "t", "d", "f", "g", "gtd"]
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # f(w) = w'Aw/2 - b'w, minimum A^-1 b
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)

    def minimum(search) -> torch.Tensor:
        monkeypatch.setattr(second_order, "strong_wolfe", lambda: search)
        w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = second_order.ConjugateGradient([w], max_iter=200, tolerance_grad=1e-10, tolerance_change=0.0)

        def closure():
            opt.zero_grad()
            loss = 0.5 * w @ a @ w - b @ w
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach()

    expected = torch.linalg.solve(a, b)
    for search in (_strong_wolfe, private_api.backtracking):
        torch.testing.assert_close(minimum(search), expected, atol=1e-8, rtol=0)
