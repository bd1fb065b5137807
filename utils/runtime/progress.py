"""Progress bars that suit where the output goes. On a terminal tqdm redraws its bar in place; written to a
log file (a cluster job, nohup, a pipe) each redraw is kept, ten a second: about a megabyte of bars in a
20-minute run. There a bar is written at most once a LOG_INTERVAL, and at its end."""
import sys

from tqdm import tqdm

LOG_INTERVAL = 60.0  # seconds between a bar's lines in a log
HIDDEN = False  # this process draws no bar: a rank other than 0 (utils/runtime/distributed.quiet_unless_main)


def progress_bar(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs), redrawn at most once a LOG_INTERVAL where stderr is not a terminal."""
    if not to_terminal():
        kwargs.setdefault('mininterval', LOG_INTERVAL)
    if HIDDEN:
        kwargs['disable'] = True
    return tqdm(iterable, **kwargs)


def to_terminal(stream=None):
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, 'isatty', None)) and stream.isatty()


def print_line(text):
    """A line of the run's log, printed above any bar being drawn (print() would break it in two)."""
    tqdm.write(text)
