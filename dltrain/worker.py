"""What the workers of a parallel sweep (launcher=joblib) start from: importing this module warms
a worker up.

On Linux, multiprocessing's forkserver imports it once, before it forks any worker
(dltrain.sweeps.prewarm_workers): every worker then starts with torch, the models, the datasets
and the plots imported, autograd and torch.optim warmed up, and those objects frozen out of the
garbage collector's work. Elsewhere each worker imports it as its first task. If warming up
fails, workers import what they need as jobs run.
"""


def warm() -> None:
    """What every job imports and first does: torch, the models, the datasets, the plots; one tiny
    optimizer step (autograd's first use, and torch.optim's import of torch._dynamo). Not
    scikit-learn: a job reads its data from the cache (data/cache.py) once one job has built it.
    Then everything this worker holds so far is moved out of the garbage collector's sight
    (gc.freeze): loky runs gc.collect() after every task, which took 0.13 s a job over all of
    torch's, Hydra's and matplotlib's objects, and none of them is ever garbage."""
    import gc

    import matplotlib
    import torch

    import dltrain.data.tabular  # noqa: F401
    import dltrain.training  # noqa: F401

    layer = torch.nn.Linear(8, 2)
    torch.optim.Adam(layer.parameters()).step(lambda: layer(torch.ones(4, 8)).sum().backward())
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401

    gc.freeze()


try:
    warm()
except Exception:  # noqa: BLE001  (a worker must start anyway: this is only a head start)
    pass
