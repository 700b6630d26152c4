"""Stop signals: SIGINT / SIGTERM / SIGUSR1 set a flag; the loop checkpoints at the next step
boundary and the run exits 75. A second SIGINT while the run is still going aborts at once (130).

``STOP`` is one per process. The entry points install it first thing (``mst5 train`` before its
imports and data loading, so a signal in the first seconds is a clean stop, not a death by signal);
the recipe installs it too (a no-op then), for library callers. Once the run has ended (``finish``),
further signals are only noted: the process is already leaving with the exit code it decided, and a
KeyboardInterrupt from interpreter teardown would only print a traceback.
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.finished = False
        self._previous: dict[int, object] = {}
        self._depth = 0

    def install(self) -> None:
        """Catch the stop signals (nested calls are counted; ``restore`` undoes the outermost)."""
        self.finished = False  # a new run (train-modular's next stage) is stoppable again
        if self._depth == 0:
            self.signum = None
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        self._depth += 1

    def restore(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    def release(self) -> None:
        """Give the signals back (a command that does not train) and re-deliver one that came in the
        meantime, so it acts as if this had never been installed."""
        pending = self.signum
        self._depth = min(self._depth, 1)
        self.restore()
        if pending is not None:
            os.kill(os.getpid(), pending)

    def finish(self) -> None:
        """The run is over (done, stopped or failed): from now on signals are noted, never raised."""
        self.finished = True

    def _handle(self, signum, frame) -> None:
        if self.finished:
            return
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


STOP = StopRequest()
