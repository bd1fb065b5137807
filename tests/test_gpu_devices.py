"""--gpu_devices, the authors' flag: their README command lines parse as written; one id is a device,
several one process per device, ending as one command; an id torch does not see, or no CUDA, is refused in one
line before any work."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_Clothing1M
import train_Food101N
import train_WebVision
from benchmarks.paper import script_parser
from benchmarks.paper_rows import AUTHORS_README_COMMANDS
from utils.errors import SetupError
from utils.runs.cli import REFUSAL_EXIT, run_cli
from utils.runtime import distributed
from utils.runtime.distributed import LAUNCHED, device_launch, gpu_devices_problem, use_gpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('line', AUTHORS_README_COMMANDS, ids=lambda line: line.split()[1])
def test_the_authors_readme_command_lines_parse_as_written(line):
    script, *argv = line.split()[1:]
    cfg = script_parser(script).parse_args(argv)
    if '--gpu_devices' in argv:
        assert cfg.gpu_devices == [0, 1, 2, 3] and cfg.nepoch == 200 and cfg.feature_dim == 1024


@pytest.mark.parametrize('script', [train_Food101N, train_Clothing1M, train_WebVision], ids=lambda m: m.__name__)
def test_without_cuda_gpu_devices_is_refused_before_any_work(tmp_path, capsys, monkeypatch, script):
    monkeypatch.setattr(distributed.torch.cuda, 'device_count', lambda: 0)
    out = tmp_path / 'runs'
    with pytest.raises(SystemExit) as stop:  # the data folders do not exist: nothing may be read before this
        run_cli(script.main, ['--gpu_devices', '0', '1', '2', '3', '--nepoch', '200', '--out_dir', str(out)])
    assert stop.value.code == REFUSAL_EXIT
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'torch sees no CUDA device' in err and 'drop --gpu_devices' in err
    assert not out.exists()


def test_ids_torch_does_not_see_and_clashing_flags_are_named():
    assert gpu_devices_problem([0, 1], None, 2) is None
    assert 'device 3 is not visible (torch sees 2 CUDA device(s), ids 0..1)' in gpu_devices_problem([0, 3], None, 2)
    assert 'names a device twice' in gpu_devices_problem([1, 1], None, 2)
    assert 'give one of them' in gpu_devices_problem([0], 'cuda:1', 2)
    assert gpu_devices_problem([0, 1], None, 0).startswith('--gpu_devices 0 1: torch sees no CUDA device')
    # the processes a launch started carry its ids and are not checked again
    assert gpu_devices_problem([2, 3], None, 2, launched='2 3') is None
    assert 'inside a launch' in gpu_devices_problem([0, 1], None, 2, launched='2 3')


def test_several_ids_are_one_process_per_listed_device():
    ranks = device_launch([1, 3], 'train_WebVision.py', ['--gpu_devices', '1', '3', '--k', '50'], {'PATH': '/bin'}, 29999)
    assert [command for command, _ in ranks] == [[sys.executable, 'train_WebVision.py', '--gpu_devices', '1', '3',
                                                  '--k', '50']] * 2
    for rank, (_, env) in enumerate(ranks):
        assert env['CUDA_VISIBLE_DEVICES'] == '1,3' and env[LAUNCHED] == '1 3' and env['PATH'] == '/bin'
        assert (env['RANK'], env['LOCAL_RANK'], env['WORLD_SIZE'], env['MASTER_PORT']) == (str(rank), str(rank), '2',
                                                                                           '29999')
    # ids count among the devices the parent sees: its CUDA_VISIBLE_DEVICES maps them to physical ones
    (_, env), _ = device_launch([0, 2], 's.py', [], {'CUDA_VISIBLE_DEVICES': '4,5,6,7'}, 29999)
    assert env['CUDA_VISIBLE_DEVICES'] == '4,6'


# a stand-in for a training script under --gpu_devices: joins the group (gloo on the CPU), then does what
# its argument says on the rank it names
RANK_SCRIPT = """
import sys, time
import torch, torch.distributed as dist
from utils.errors import RefusedByOneRank, SetupError
from utils.runs.cli import run_cli
from utils.runtime import distributed

def say(line):  # one write: with PYTHONUNBUFFERED print writes the line and its end apart, and the ranks'
    sys.stdout.write(line + '\\n')  # output interleaves between the two

def main(argv):
    distributed.init_from_env('cpu')
    total = torch.ones(1)
    dist.all_reduce(total)
    say(f'rank {distributed.rank()} of {int(total)}')
    what = argv[0]
    if what == 'refuse':
        raise SetupError('no such folder; give another')
    if what == 'first':
        with distributed.main_first():  # rank 0 downloads, the others find the files
            if distributed.rank() == 0:
                time.sleep(1)
            open(argv[1], 'a').write(f'rank{distributed.rank()} ')
    if what == 'totals':  # rank 0 saw no NaN, rank 1 one at step 7
        loss, bad = distributed.epoch_totals(torch.tensor(1.0 + distributed.rank()),
                                             torch.tensor(-1 if distributed.rank() == 0 else 7))
        say(f'totals {float(loss)} {int(bad)}')
    if what == 'sleep':
        open(argv[1] + str(distributed.rank()), 'w').write('up')
        time.sleep(120)
    if what == 'hang0_fail1':
        if distributed.rank() == 1:
            sys.exit(3)
        time.sleep(120)  # waiting for rank 1, as in a collective
    if what == 'hang0_refuse1':
        if distributed.rank() == 1:
            raise RefusedByOneRank('rank 1 cannot read the cache rank 0 read; give one --cache_dir')
        time.sleep(120)
    distributed.leave()  # as utils/engine.main does at the end of a run
    return 0

sys.exit(run_cli(main))
"""


@pytest.mark.parametrize('what, status', [('ok', 0), ('refuse', REFUSAL_EXIT), ('hang0_fail1', 3),
                                          ('hang0_refuse1', REFUSAL_EXIT)])
def test_a_launch_ends_as_one_command(tmp_path, capfd, monkeypatch, what, status):
    """Several ids launch one process per device: the launch ends with one exit status, a refusal is one
    line (rank 0's), and a rank that fails alone ends the others (waiting for it) and is named."""
    script = tmp_path / 'rank.py'
    script.write_text(RANK_SCRIPT)
    monkeypatch.setattr(distributed, 'STOP_GRACE_S', 5)
    env = {**os.environ, 'PYTHONPATH': ROOT}
    started = time.monotonic()
    store = distributed.agent_store(2)
    assert distributed.launch(device_launch([0, 1], str(script), [what], env, store.port), [0, 1]) == status
    out, err = capfd.readouterr()
    assert sorted(re.findall(r'rank \d of \d', out)) == ['rank 0 of 2', 'rank 1 of 2']  # both joined the group
    lines = err.strip().splitlines()
    if what == 'refuse':
        assert lines == ['error: no such folder; give another']
    if what == 'hang0_fail1':
        assert lines == ['--gpu_devices: the process for device 1 (rank 1) ended with exit status 3; run the command '
                         'with --gpu_devices 1 alone to see why']
        assert time.monotonic() - started < 60  # rank 0 was ended, not waited for
    if what == 'hang0_refuse1':  # said by the rank that refused; run alone (as rank 0) it might not refuse
        assert lines == ['error: rank 1 cannot read the cache rank 0 read; give one --cache_dir',
                         '--gpu_devices: the process for device 1 (rank 1) ended with exit status 2; its line above '
                         'says why']


def refuse(message):
    raise SetupError(message)


def test_rank_0_loads_the_inputs_before_the_others(tmp_path):
    """Every rank would otherwise download the dataset and the encoder weights into the same place at once."""
    script, order = tmp_path / 'rank.py', tmp_path / 'order.txt'
    script.write_text(RANK_SCRIPT)
    store = distributed.agent_store(2)
    env = {**os.environ, 'PYTHONPATH': ROOT}
    assert distributed.launch(device_launch([0, 1], str(script), ['first', str(order)], env, store.port), [0, 1]) == 0
    assert order.read_text().split() == ['rank0', 'rank1']


def test_every_rank_sees_the_epochs_loss_over_all_ranks_and_any_ranks_non_finite_step(tmp_path, capfd):
    script = tmp_path / 'rank.py'
    script.write_text(RANK_SCRIPT)
    store = distributed.agent_store(2)
    env = {**os.environ, 'PYTHONPATH': ROOT}
    assert distributed.launch(device_launch([0, 1], str(script), ['totals'], env, store.port), [0, 1]) == 0
    assert re.findall(r'totals \S+ \S+', capfd.readouterr().out) == ['totals 3.0 7'] * 2
    alone = distributed.epoch_totals(torch.tensor(2.0), torch.tensor(-1))  # one process: as it was
    assert (float(alone[0]), int(alone[1])) == (2.0, -1)


def test_a_sigterm_to_the_launch_ends_every_process_of_it(tmp_path):
    """docker stop, timeout or a scheduler signal the command they started, not the processes it started."""
    script = tmp_path / 'rank.py'
    script.write_text(RANK_SCRIPT)
    code = ('import os, sys; from utils.runtime import distributed as d; store = d.agent_store(2); '
            f'sys.exit(d.launch(d.device_launch([0, 1], {str(script)!r}, ["sleep", {str(tmp_path / "up")!r}], '
            'os.environ, store.port), [0, 1]))')
    launcher = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT},
                                stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f'up{rank}').exists() for rank in (0, 1)):
        assert time.monotonic() < deadline and launcher.poll() is None, 'the ranks never started'
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM  # every rank ended: the launch returned


def test_torchrun_starting_more_processes_than_gpus_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(distributed.torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setenv('WORLD_SIZE', '4')
    monkeypatch.setenv('LOCAL_RANK', '3')
    with pytest.raises(SetupError, match=r'process 3 of this machine has no CUDA device of its own \(torch sees 2\)'):
        distributed.init_from_env('auto')


def NO_COMMAND():
    raise AssertionError('only several devices launch a command')


def test_one_id_is_that_device_and_several_launch(monkeypatch):
    monkeypatch.setattr(distributed.torch.cuda, 'device_count', lambda: 4)
    monkeypatch.delenv(LAUNCHED, raising=False)
    assert use_gpu_devices([2], None, refuse, NO_COMMAND) == ('cuda:2', None)
    assert use_gpu_devices(None, None, refuse, NO_COMMAND) == (None, None)  # --device stands
    started = []
    monkeypatch.setattr(distributed, 'launch', lambda ranks, ids: started.append(ranks) or 0)
    assert use_gpu_devices([0, 1, 2, 3], None, refuse,
                           lambda: ('train_Food101N.py', ['--gpu_devices', '0', '1', '2', '3'])) == (None, 0)
    (ranks,) = started
    assert len(ranks) == 4 and all(env['CUDA_VISIBLE_DEVICES'] == '0,1,2,3' for _, env in ranks)
    # in a process of that launch: no second launch, the device of its local rank
    monkeypatch.setenv(LAUNCHED, '0 1 2 3')
    assert use_gpu_devices([0, 1, 2, 3], None, refuse, NO_COMMAND) == ('cuda', None) and len(started) == 1
    with pytest.raises(SetupError, match='give one of them'):
        monkeypatch.delenv(LAUNCHED)
        use_gpu_devices([0, 1, 2, 3], 'cuda:1', refuse, NO_COMMAND)


def test_the_processes_run_the_script_and_arguments_main_was_given(monkeypatch, tmp_path):
    """main(argv) called from Python (a sweep, a notebook) launches its own command, not the caller's
    sys.argv; an edited copy of a script launches that copy."""
    import train_CIFAR
    monkeypatch.setattr(distributed.torch.cuda, 'device_count', lambda: 2)
    monkeypatch.delenv(LAUNCHED, raising=False)
    started = []
    monkeypatch.setattr(distributed, 'launch', lambda ranks, ids: started.append(ranks) or 0)
    argv = ['--gpu_devices', '0', '1', '--noise_type', 'cifar10-1-0.35', '--out_dir', str(tmp_path)]
    assert train_CIFAR.main(argv) == (None, None)
    (ranks,) = started
    assert [command[1:] for command, _ in ranks] == [[train_CIFAR.__file__, *argv]] * 2


def test_a_resumed_run_takes_its_devices_from_its_own_command_line():
    from utils.runs.folders import check_resume_flags, resumed_config
    saved = {**vars(script_parser('train_WebVision.py').parse_args([])), 'gpu_devices': [0, 1, 2, 3]}
    cfg = script_parser('train_WebVision.py').parse_args(['--gpu_devices', '1'])
    cfg.command_line_flags = ['gpu_devices', 'resume']
    check_resume_flags(cfg, {'config': saved, 'epoch': 3}, 'RUN')  # not refused: where it runs may change
    assert resumed_config(cfg, {'config': saved}).gpu_devices == [1]
    cfg = script_parser('train_WebVision.py').parse_args([])
    cfg.command_line_flags = ['resume']
    assert resumed_config(cfg, {'config': saved}).gpu_devices is None  # not the four processes of the first run
