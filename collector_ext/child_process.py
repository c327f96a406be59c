"""What every child process of the sidecar (signing workers, the Loki sender) does for itself.

Imports only the standard library: each module a child imports costs memory in that child.
"""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """In a child process: exit at once when ``parent_pid`` is gone (killed with SIGKILL, so it could
    not stop its children). Without this, a killed sidecar's workers would live on, and a Loki
    sender among them would keep draining the spool beside the next run's."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
