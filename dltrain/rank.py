"""One data-parallel rank: `python -m dltrain.rank CONFIG RUN_DIR` (trainer.devices=N), and the
start of a rank that torchrun launched as `torchrun ... -m dltrain ...` (`join_torchrun`).

engine/distributed.py does the distributed work; this module is where a rank's process begins
and ends: it joins the process group, trains through `dltrain.training`, and maps how that ended to
an exit code through the job shell (dltrain/shell.py).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dltrain import overrides as ov
from dltrain import plugins, shell
from dltrain.composition import compose
from dltrain.config import validate
from dltrain.engine import distributed
from dltrain.errors import UserError
from dltrain.training import train


def main(argv: Sequence[str]) -> int:
    """One rank of a `trainer.devices=N` run: join the group, train, leave (engine/distributed.py: launch)."""
    import yaml
    from rich.console import Console

    config_file, run_dir = argv
    config_yaml = Path(config_file).read_text()
    cfg = yaml.safe_load(config_yaml)
    console = Console(stderr=True)
    ranks = distributed.Ranks(int(os.environ.get("RANK", 0)))
    try:
        plugins.load_for_child()  # the plugins the launching command loaded
        trainer = validate(cfg).trainer
        ranks = distributed.join(trainer.backend, trainer.device, trainer.dist_timeout)
        if ranks.main:
            handler = logging.FileHandler(Path(run_dir) / "train.log")
            handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            logging.getLogger().addHandler(handler)
            logging.getLogger().setLevel(logging.INFO)
        train(cfg, run_dir, console, config_yaml=config_yaml)
    except Exception as e:  # noqa: BLE001  (the shell re-raises what is a bug)
        end = shell.ending(e, ranks)  # the launching process says how to continue
        if end is None:
            raise
        shell.finish(end, console, hard=True)
    distributed.leave()
    return 0


def join_torchrun(argv: list[str], multirun: bool) -> list[str]:
    """A rank started by torchrun: join the process group before Hydra runs, and train into rank
    0's run directory; Hydra's own files (.hydra/, train.log) are rank 0's to write."""
    from omegaconf import OmegaConf

    if multirun:
        raise UserError("a sweep under torchrun would run once in every rank; run it as dltrain -m ... trainer.devices=N (each job starts its own ranks)")
    cfg = compose(ov.from_argv(argv), with_hydra=True)
    own_dir = str(OmegaConf.select(cfg, "hydra.run.dir"))  # this rank's clock; rank 0's wins
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    trainer = validate(cfg).trainer
    ranks = distributed.join(trainer.backend, trainer.device, trainer.dist_timeout)
    run_dir = distributed.agree_run_dir(own_dir)
    mine = [f"hydra.run.dir={ov.quoted(run_dir)}"] + ([] if ranks.main else ["hydra.output_subdir=null", "hydra/job_logging=disabled"])
    return [a for a in argv if not a.startswith("hydra.run.dir=")] + mine


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
