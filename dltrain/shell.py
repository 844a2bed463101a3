"""The job shell: how a job's exception ends the process, the same for every kind of job.

Single runs (`dltrain ...`, cli.py), data-parallel ranks (rank.py) and sweep jobs (sweep.py) map
what a job raised through `ending`, so each exception means the same everywhere:

    TrainingInterrupted  SIGINT/SIGTERM; the checkpoint saved              130 / 143, a note
    RanksFailed          a rank of trainer.devices=N failed or was stopped  the rank's code
    UserError            bad input, a diverged run, a full disk            2, "dltrain: error: ..."
    a lost peer          a collective failed because another rank died     1, "dltrain: error: ..."
    anything else        a bug: `ending` returns None and the caller re-raises (the traceback is for us)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NoReturn

from dltrain.engine.checkpoint import TrainingInterrupted
from dltrain.engine.distributed import Ranks, RanksFailed, exit_rank, is_peer_failure, peer_failure_message
from dltrain.errors import UserError

STOPPED = (130, 143)  # 128 + SIGINT, 128 + SIGTERM


@dataclass(frozen=True)
class Ending:
    """How a job ended: `status` (interrupted or failed), the exit `code` it calls for, and one
    `line` to tell the user ('' when it has been said already: by a rank, or by another rank)."""

    status: str
    code: int
    line: str
    error: bool  # an error line ("dltrain: error: ...") rather than a note

    def say(self, console) -> None:
        if self.line and self.error:
            sys.stderr.write(f"dltrain: error: {self.line}\n")
            sys.stderr.flush()
        elif self.line:
            console.print(self.line, highlight=False, soft_wrap=True)


def ending(error: BaseException, ranks: Ranks = Ranks(), run_dir: str | None = None) -> Ending | None:
    """The Ending for `error`, or None for a bug. `run_dir`: an interrupted run says how to
    continue it. Of several ranks only rank 0 speaks, except of a lost peer (each says which)."""
    if isinstance(error, TrainingInterrupted):
        hint = f"; continue with: dltrain resume={run_dir}" if run_dir else ""
        end = Ending("interrupted", error.code, f"{error}{hint}", error=False)
    elif isinstance(error, RanksFailed):
        stopped = error.code in STOPPED
        end = Ending("interrupted" if stopped else "failed", error.code, error.message, error=not stopped)
    elif isinstance(error, UserError):
        end = Ending("failed", error.exit_code, str(error), error=True)
    elif ranks.enabled and is_peer_failure(error):
        return Ending("failed", 1, peer_failure_message(error, ranks), error=True)
    else:
        return None
    return end if ranks.main else Ending(end.status, end.code, "", end.error)


def finish(end: Ending, console, hard: bool = False) -> NoReturn:
    """Say the ending's line and exit with its code. `hard`: without the interpreter's teardown (a
    rank whose peers are gone: that teardown can abort and hide the exit code)."""
    end.say(console)
    if hard:
        exit_rank(end.code)
    sys.exit(end.code)
