"""Several ranks (the package's launcher, gloo on the CPU): they stop together, build each cache once, and
agree on every decision one of them could make alone."""
import json
import os
import re
import signal
import sys
import threading
import time

import torch

from utils.runtime import distributed
from utils.storage.loading import load_torch
from utils.runtime.distributed import device_launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the digits demo as one rank of a launch: it says where it runs (pid file per rank) before it starts
DIGITS_RANK = """
import os, sys
folder = sys.argv[1]
open(os.path.join(folder, 'pid' + os.environ['RANK']), 'w').write(str(os.getpid()))
import demo_digits
from utils.runs.cli import run_cli
run_cli(lambda argv: demo_digits.main(argv[1:]))
"""


def launch_digits(tmp_path, *flags):
    script = tmp_path / 'digits_rank.py'
    script.write_text(DIGITS_RANK)
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1'}
    argv = [str(tmp_path), '--out_dir', str(tmp_path / 'runs'), '--cache_dir', str(tmp_path / 'cache'),
            '--run_name', 'r', *flags]
    store = distributed.agent_store(2)
    return distributed.launch(device_launch([0, 1], str(script), argv, env, store.port), [0, 1])


def test_a_signal_one_rank_receives_stops_every_rank_after_the_same_epoch(tmp_path, capfd):
    """A scheduler's SIGTERM to one process of a launch: every rank finishes the epoch and stops after it, rank
    0 writes last.pt for that epoch, and the launch ends as a stop does (one line, 128 + SIGTERM). Deciding per
    rank, rank 1 left while rank 0 went on into the next epoch's gradient exchange and failed there."""
    run_dir = tmp_path / 'runs' / 'r'

    def signal_rank_1():  # once rank 0 has evaluated an epoch: training is under way on both ranks
        deadline = time.monotonic() + 120
        while not (run_dir / 'log.jsonl').exists() or not (tmp_path / 'pid1').exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(int((tmp_path / 'pid1').read_text()), signal.SIGTERM)
    sender = threading.Thread(target=signal_rank_1, daemon=True)
    sender.start()
    status = launch_digits(tmp_path, '--nepoch', '300', '--warmup_epochs', '0', '--eval_every', '1')
    sender.join()
    err = capfd.readouterr().err
    assert status == 128 + signal.SIGTERM, err[-2000:]
    stopped = re.findall(r'^stopped: SIGTERM after epoch (\d+); .*Continue with --resume', err, re.M)
    assert len(stopped) == 1, err[-2000:]  # rank 0's line alone
    epoch = int(stopped[0])
    assert epoch < 299
    saved = load_torch(str(run_dir / "last.pt"))
    assert saved['epoch'] == epoch
    log = [json.loads(line) for line in open(run_dir / 'log.jsonl')]
    assert log[-1]['epoch'] == epoch  # rank 0 trained no further than rank 1


def test_agreed_stop_in_one_process_is_the_signal_itself():
    assert distributed.agreed_stop(None, torch.device('cpu')) is None
    assert distributed.agreed_stop(signal.SIGTERM, torch.device('cpu')) == signal.SIGTERM
