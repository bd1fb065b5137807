"""SIGTERM and SIGINT during training: finish the step, write last.pt, stop with a line saying how to resume."""
import signal
import sys
import threading

from utils.errors import StoppedAtOnce


class StopSignals:
    """Within `with StopSignals() as stop:` a first SIGTERM or SIGINT only sets stop.signum (the
    training loop finishes its step, writes last.pt and stops); a second one stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, finishing='this training step'):
        self.finishing = finishing  # what runs to its end before last.pt is written

    def __enter__(self):
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    @property
    def name(self):
        return signal.Signals(self.signum).name if self.signum else None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise StoppedAtOnce(f'second {signal.Signals(signum).name}: stopped at once; the last checkpoint '
                                f'written is kept', signum)
        self.signum = signum
        print(f'\n{self.name}: finishing {self.finishing}, then writing last.pt (send it again to stop at once)',
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False
