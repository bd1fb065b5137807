"""The command line a researcher sees first: --help of every script, the README's flag table and its
own-data example."""
import ast
import csv
import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import demo_digits
import train_CIFAR
import train_Clothing1M
import train_Food101N
import train_ImageFolder
import train_WebVision
from utils.runs.config import build_parser
from utils.runtime import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE_SCRIPTS = (train_Food101N, train_Clothing1M, train_WebVision, train_ImageFolder)


def parser_of(script):
    kind = 'files' if script in FILE_SCRIPTS else 'memory'
    return build_parser(script.__doc__, script.DEFAULTS, getattr(script, 'dataset_args', None), kind)


def flags(parser):
    return {o for a in parser._actions for o in a.option_strings if o.startswith('--') and not o.startswith('--no-')}


@pytest.mark.parametrize('script', [train_CIFAR, demo_digits, *FILE_SCRIPTS], ids=lambda m: m.__name__)
def test_every_flag_has_one_help_line_and_its_default_once(script):
    parser = parser_of(script)
    undocumented = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert not undocumented
    text = parser.format_help()
    assert '(default: None)' not in text
    assert not re.search(r'\(default: [^)]*\)\s*\(default:', text)


def test_each_script_shows_only_the_flags_that_apply_to_it():
    cifar, food = flags(parser_of(train_CIFAR)), flags(parser_of(train_Food101N))
    assert not {'--image_size', '--fp_arch'} & cifar
    assert not {'--cifar_n_dir', '--download', '--data_root'} & food
    assert {'--food101n_root', '--image_size'} <= food


def test_the_readme_lists_every_flag_under_its_help_group():
    """README's "Flags": one bullet per --help group of train_CIFAR.py, in order, naming exactly that group's
    flags (and the image-file scripts' own flags where they have them); no flag the scripts lack."""
    readme = open(os.path.join(ROOT, 'README.md')).read()
    section = readme[readme.index('## Flags'):readme.index('## Authors\' protocol vs improved')]
    bullets = re.findall(r'^- \*\*(.+?)\*\*:(.*?)(?=^- \*\*|\Z)', section, re.M | re.S)
    parser = parser_of(train_CIFAR)
    groups = [g for g in parser._action_groups if g.title not in ('positional arguments', 'options', 'dataset')]
    assert len(bullets) == len(groups)
    files = {o for s in FILE_SCRIPTS for o in flags(parser_of(s))}
    for (title, text), group in zip(bullets, groups):
        assert group.title.startswith(title.split(':')[0]), (title, group.title)
        named = {n for n in re.findall(r'`(--[\w-]+)', text) if not n.startswith('--no-')}
        theirs = {o for a in group._group_actions for o in a.option_strings if not o.startswith('--no-')}
        assert theirs <= named, theirs - named
        assert named <= theirs | files, named - theirs


def test_help_runs_as_a_command():
    out = subprocess.run([sys.executable, 'train_CIFAR.py', '--help'], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert '--recipe' in out and 'authors' in out


def test_pretrain_simclr_help_shows_its_defaults():
    import pretrain_SimCLR
    parser = pretrain_SimCLR.parser()
    assert not [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    text = ' '.join(parser.format_help().split())
    assert '(default: 512)' in text and '(default: resnet50)' in text and '(default: None)' not in text
    assert not re.search(r'\(default: [^)]*\)\s*\(default:', text)


def readme_block(heading):
    """The first ```bash block after a README heading, continuation lines joined: one command a line."""
    readme = open(os.path.join(ROOT, 'README.md')).read()
    section = readme[readme.index(heading):]
    block = section[section.index('```bash\n') + 8:]
    return block[:block.index('```')].replace('\\\n', ' ').splitlines()


def test_the_readme_own_data_example_runs_as_written_and_ranks_the_mislabelled_first(tmp_path):
    """The commands of "Your own data", run as a reader pastes them (in an empty folder, offline), and
    the claim under them: the 24 mislabelled images are the first 24 rows of the ranking."""
    *commands, show = readme_block('## Your own data')
    assert show.startswith('head ') and len(commands) == 2
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1'}
    for command in commands:
        argv = command.split('#')[0].split()
        assert argv[0] == 'python'
        script = [os.path.join(ROOT, argv[1])] if argv[1].endswith('.py') else argv[1:3]
        rest = argv[2:] if argv[1].endswith('.py') else argv[3:]
        subprocess.run([sys.executable, *script, *rest], cwd=tmp_path, env=env, check=True, capture_output=True)
    with open(tmp_path / show.split()[-1]) as f:
        rows = list(csv.DictReader(f))
    # the generated images are named after the class they show (benchmarks/layouts.own_data)
    mislabelled = {os.path.basename(r['path']) for r in rows
                   if os.path.basename(r['path']).split('_')[0] != r['noisy_label']}
    assert len(rows) == 120 and len(mislabelled) == 24
    first = [os.path.basename(r['path']) in mislabelled for r in rows]
    assert sum(first[:24]) == 24, first[:30]


def test_a_bar_written_to_a_log_is_a_line_a_minute_not_ten_a_second(monkeypatch, capsys):
    """To a file (a cluster job's log) tqdm keeps every redraw; progress_bar writes its first and last."""
    log = io.StringIO()
    monkeypatch.setattr(sys, 'stderr', log)
    for _ in progress.progress_bar(range(30), desc='epoch'):
        time.sleep(0.01)  # 0.3 s: tqdm's own 0.1 s interval would draw several times
    assert log.getvalue().count('\r') == 2 and '30/30' in log.getvalue()
    progress.print_line('epoch 1  loss 0.5')
    assert capsys.readouterr().out == 'epoch 1  loss 0.5\n'  # the log's line, as print() writes it


def test_a_bar_on_a_terminal_is_redrawn_as_tqdm_draws_it(monkeypatch):
    monkeypatch.setattr(progress, 'to_terminal', lambda stream=None: True)
    assert progress.progress_bar(range(3), file=io.StringIO()).mininterval == 0.1


def test_output_cut_short_by_its_reader_ends_quietly():
    """`python -m benchmarks.paper --list | head`: the reader closes the pipe; no traceback follows."""
    code = ('from utils.runs.cli import run_cli\n'
            'run_cli(lambda argv: [print("row " * 20) for _ in range(100000)])')
    proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 128 + 13 and proc.stderr.read() == b''  # SIGPIPE's status, as a shell's


# every command a user runs (the benchmarks and tools are the project's own)
COMMANDS = ('train_CIFAR.py', 'train_Clothing1M.py', 'train_Food101N.py', 'train_ImageFolder.py', 'train_WebVision.py',
            'train_standard.py', 'demo_digits.py', 'predict.py', 'pretrain_SimCLR.py', 'noisy_label/make_noise.py',
            'noisy_label/fetch.py')


@pytest.mark.parametrize('command', COMMANDS)
def test_every_command_imports_the_quiet_start_first(command):
    """Before anything that loads torch: a Ctrl-C in the seconds it takes was a traceback of the imports."""
    tree = ast.parse(open(os.path.join(ROOT, command)).read())
    first = next(node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
    assert isinstance(first, ast.Import) and [a.name for a in first.names] == ['utils.runs.startup']


def test_a_ctrl_c_while_torch_loads_ends_in_one_line():
    code = 'import os, signal, utils.runs.startup\nos.kill(os.getpid(), signal.SIGINT)\nimport torch'
    # as from a terminal: a suite's worker may ignore SIGINT, and an ignored signal stays ignored in its children
    terminal = dict(cwd=ROOT, capture_output=True, text=True, timeout=60,
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc = subprocess.run([sys.executable, '-c', code], **terminal)
    assert proc.returncode == -signal.SIGINT and proc.stderr == 'stopped: interrupted (SIGINT)\n'  # 130 in a shell
    proc = subprocess.run([sys.executable, '-c', code, '--debug'], **terminal)
    assert 'Traceback' in proc.stderr and proc.stderr.rstrip().endswith('KeyboardInterrupt')


def test_a_broken_pipe_other_than_stdout_is_not_taken_for_the_reader_gone():
    code = ('from utils.runs.cli import run_cli\n'
            'def main(argv):\n'
            '    raise BrokenPipeError(32, "a worker\'s pipe")\n'
            'run_cli(main)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"BrokenPipeError: [Errno 32] a worker's pipe" in proc.stderr


def test_no_entry_point_waits_for_torchvision_before_it_builds_a_resnet():
    """torchvision's import also loads torch's compiler stack (about 2 s a process): a refusal, --help or a
    run without a ResNet should not pay it. utils/networks.py imports it where a ResNet is built."""
    modules = ['train_CIFAR', 'train_Food101N', 'train_Clothing1M', 'train_WebVision', 'train_ImageFolder',
               'train_standard', 'demo_digits', 'predict', 'pretrain_SimCLR', 'benchmarks.paper']
    code = f'import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n' \
           f'print(sorted(m for m in sys.modules if m.split(".")[0] in ("torchvision", "triton")))'
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'
    from utils.networks import cifar_resnet_trunk
    assert len(cifar_resnet_trunk('resnet18')) == 8  # and where one is built, it is torchvision's
