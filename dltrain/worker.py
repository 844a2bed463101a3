"""What the workers of a parallel sweep (launcher=joblib, Linux) are forked from.

multiprocessing's forkserver imports this module once, before it forks any worker
(dltrain.sweep.prewarm_workers): every worker then starts with torch, the models, the datasets
and the plots imported, autograd and torch.optim warmed up, and those objects frozen out of the
garbage collector's work. If warming up fails, workers import what they need as jobs run.
"""

try:
    from dltrain.sweep import _warm_worker

    _warm_worker()
except Exception:  # noqa: BLE001  (the server must start anyway: it is only a head start)
    pass
