"""The scripts' entry point: a refusal the package knows prints one line and exits 2, without a traceback.

    if __name__ == '__main__':
        run_cli(main)

A researcher reading `error: --k 0 must be at least 1` needs no traceback; `--debug` shows it anyway.
"""
import argparse
import contextlib
import errno
import os
import select
import signal
import sys
import threading
import traceback

import torch

from utils.errors import (
    CannotWrite,
    CorruptFile,
    DatasetMissing,
    EncoderError,
    INTERRUPTED,
    Interrupted,
    REFUSAL_EXIT,
    NoiseError,
    RefusedByOneRank,
    SetupError,
    UnsafeFile,
)
from utils.runtime.distributed import LAUNCHED, leave

KNOWN = (SetupError, NoiseError, DatasetMissing, EncoderError, UnsafeFile, CorruptFile, CannotWrite,
         FloatingPointError)
DISK_FAULTS = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded',
               errno.EROFS: 'read-only file system', errno.EACCES: 'permission denied', errno.EPERM: 'not permitted'}


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (`--k x` printed the whole usage first); --help
    still lists every flag. A flag is matched by its whole name only: argparse would take `--nepoc` for
    --nepoch, and a command line written today (a row of benchmarks.paper, a sidecar's recorded command)
    would change meaning, or stop parsing, once a flag sharing that prefix is added."""

    def __init__(self, *args, allow_abbrev=False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def error(self, message):
        self.exit(REFUSAL_EXIT, f'error: {message}; --help lists the flags\n')


def one_line(exc):
    """The message of a known refusal as one line; None for an error the package does not know."""
    if isinstance(exc, KNOWN):
        return ' '.join(_own_message(str(exc)).split())
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ('out of GPU memory: lower --batch_size, --eval_batch_size or --encode_batch_size '
                f'({str(exc).splitlines()[0]})')
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        return ('out of memory: lower --batch_size, --eval_batch_size, --encode_batch_size or the network\'s width '
                f'({(str(exc).splitlines() or ["MemoryError"])[0][:200]})')
    if isinstance(exc, OSError) and exc.errno in DISK_FAULTS:
        where = exc.filename or 'a file'
        return (f'{DISK_FAULTS[exc.errno]} writing {where}: free space or fix the permissions there, or choose '
                f'another --out_dir / --cache_dir')
    return None


def _own_message(text):
    """A refusal raised in a DataLoader worker comes back as 'Caught X in DataLoader worker process N'
    and the worker's traceback: its own message is the last line, after the exception's name."""
    if 'Original Traceback' not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(': ', 1)[1] if ': ' in last else last


def reader_gone():
    """Whether stdout is a pipe whose reading end was closed (poll reports an error or hang-up on its
    writing end)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))  # Linux, BSD
    except (OSError, ValueError, AttributeError):  # no such stream, or no poll on this system
        return False


def another_rank_says_it():
    """In a --gpu_devices launch every rank refuses or stops alike, and rank 0 says it: one line, not one a
    device (utils/runtime/distributed.launch names a rank that failed alone)."""
    return os.environ.get(LAUNCHED) is not None and os.environ.get('RANK', '0') != '0'


@contextlib.contextmanager
def sigterm_as_interruption():
    """SIGTERM (a scheduler's, `kill`) unwinds the command as Ctrl-C does: its cleanups run (a claimed run
    folder is released, and removed while it holds nothing), where the default action ended the process
    at once, leaving a folder with only its lock. Training handles it itself (StopSignals). Only this
    process: a forked DataLoader worker that inherits the handler keeps SIGTERM's default, and so does a
    rank of a --gpu_devices launch, which its launcher stops with SIGTERM and speaks for."""
    if threading.current_thread() is not threading.main_thread() or os.environ.get(LAUNCHED) is not None or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    owner = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Interrupted(f'interrupted ({signal.Signals(signum).name})', signum)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_cli(main, argv=None):
    """Run a script's main(argv); known refusals and interruptions end in one line and a non-zero exit."""
    argv = sys.argv[1:] if argv is None else argv
    ended = False
    try:
        with sigterm_as_interruption():
            result = exits_in_one_line(main, argv)
        ended = True
        return result
    finally:
        # a rank of several leaves the process group however it ends (a refusal, a stop, a failure): torn down
        # inside it at interpreter exit, the group's threads abort the process, and a refusal's exit status 2
        # became 134 (SIGABRT) at random
        with contextlib.suppress(RuntimeError):
            leave(failed=not ended)


def exits_in_one_line(main, argv):
    try:
        return main(argv)
    except (Interrupted, KeyboardInterrupt) as exc:
        # a second signal in training (StoppedAtOnce), or Ctrl-C where no checkpoint is kept (extracting
        # features, say): what was written stays, and nothing half-written is taken for a result
        if '--debug' in argv:
            traceback.print_exc()
        if not another_rank_says_it():
            print(f'stopped: {str(exc) or INTERRUPTED}', file=sys.stderr)
        sys.exit(128 + getattr(exc, 'signum', signal.SIGINT))
    except BrokenPipeError:
        if not reader_gone():  # another pipe broke (a worker's, a subprocess's): an error like any other
            raise
        # whoever read the output has gone (`--list | head`): nothing more to say, and Python's own
        # flush of stdout at exit must not fail again with a traceback of its own
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    except Exception as exc:
        message = one_line(exc)
        if message is None:
            raise
        if '--debug' in argv:
            traceback.print_exc()
        if not another_rank_says_it() or isinstance(exc, RefusedByOneRank):
            print(f'error: {message}', file=sys.stderr)
        sys.exit(REFUSAL_EXIT)
