"""--gpu_devices, the authors' flag: their README command lines parse as written; one id is a device,
several one process per device under torchrun; an id torch does not see, or no CUDA, is refused in one
line before any work."""
import pytest

import train_Clothing1M
import train_Food101N
import train_WebVision
from benchmarks.paper import script_parser
from benchmarks.paper_rows import AUTHORS_README_COMMANDS
from utils.errors import SetupError
from utils.runs.cli import REFUSAL_EXIT, run_cli
from utils.runtime import distributed
from utils.runtime.distributed import LAUNCHED, device_launch, gpu_devices_problem, use_gpu_devices


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


def test_several_ids_are_one_torchrun_process_per_listed_device():
    command, env = device_launch([1, 3], 'train_WebVision.py', ['--gpu_devices', '1', '3', '--k', '50'],
                                 {'PATH': '/bin'})
    assert command[1:] == ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           'train_WebVision.py', '--gpu_devices', '1', '3', '--k', '50']
    assert env['CUDA_VISIBLE_DEVICES'] == '1,3' and env[LAUNCHED] == '1 3' and env['PATH'] == '/bin'
    # ids count among the devices the parent sees: its CUDA_VISIBLE_DEVICES maps them to physical ones
    _, env = device_launch([0, 2], 's.py', [], {'CUDA_VISIBLE_DEVICES': '4,5,6,7'})
    assert env['CUDA_VISIBLE_DEVICES'] == '4,6'


def refuse(message):
    raise SetupError(message)


def test_one_id_is_that_device_and_several_launch(monkeypatch):
    monkeypatch.setattr(distributed.torch.cuda, 'device_count', lambda: 4)
    monkeypatch.delenv(LAUNCHED, raising=False)
    assert use_gpu_devices([2], None, refuse) == ('cuda:2', None)
    assert use_gpu_devices(None, None, refuse) == (None, None)  # --device stands
    started = []
    monkeypatch.setattr(distributed.subprocess, 'call', lambda command, env: started.append((command, env)) or 0)
    monkeypatch.setattr(distributed.sys, 'argv', ['train_Food101N.py', '--gpu_devices', '0', '1', '2', '3'])
    assert use_gpu_devices([0, 1, 2, 3], None, refuse) == (None, 0)
    (command, env), = started
    assert command[command.index('--nproc_per_node') + 1] == '4' and env['CUDA_VISIBLE_DEVICES'] == '0,1,2,3'
    # in a process of that launch: no second launch, the device of its local rank
    monkeypatch.setenv(LAUNCHED, '0 1 2 3')
    assert use_gpu_devices([0, 1, 2, 3], None, refuse) == ('cuda', None) and len(started) == 1
    with pytest.raises(SetupError, match='give one of them'):
        monkeypatch.delenv(LAUNCHED)
        use_gpu_devices([0, 1, 2, 3], 'cuda:1', refuse)


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
