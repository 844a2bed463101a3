"""The plot process (dltrain/engine/plots.py): imports matplotlib at once, then draws each run's
curves it is sent, until its stdin closes. No torch here.

Ctrl-C goes to the whole process group: the run that started it decides what happens, so the
plot process ignores SIGINT (and ends when the run closes its stdin, or exits).
"""

from __future__ import annotations

import json
import signal
import sys


def serve(requests=sys.stdin, replies=sys.stdout) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure  # noqa: F401  (the import is the slow part: done before the first request)

    from dltrain.engine.plots import plot_request

    for line in requests:
        try:
            request = json.loads(line)
            written = plot_request(request)
            reply = {"written": [str(p) for p in written]}
        except OSError as e:
            reply = {"oserror": {"errno": e.errno, "strerror": e.strerror or str(e), "filename": e.filename}}
        except Exception as e:  # noqa: BLE001  (the run draws them itself then, and reports what fails there)
            reply = {"failed": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve()
