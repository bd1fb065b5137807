"""Imported first by every command, before torch (which takes seconds to load): a Ctrl-C while the imports
run ends in the one line a stop ends in, not in a traceback through the import machinery.

Only the printing changes: Python still ends a process that a KeyboardInterrupt left as SIGINT's default
would (exit status 130 in a shell). Once a command runs, run_cli catches the interruption itself."""
import sys

from utils.errors import INTERRUPTED  # a module that imports nothing

STOPPED = f'stopped: {INTERRUPTED}'


def _one_line(kind, value, traceback, default=sys.excepthook):
    if issubclass(kind, KeyboardInterrupt) and '--debug' not in sys.argv:
        print(STOPPED, file=sys.stderr)
        return
    default(kind, value, traceback)


sys.excepthook = _one_line
