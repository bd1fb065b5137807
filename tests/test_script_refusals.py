"""The standard baseline, the paper's rows and the paper row's device command refuse bad flags and paths in
one line before any work and leave nothing behind; the baseline's run folder lies inside --out_dir and a
finished run there is never overwritten."""
import os
import sys

import numpy as np
import pytest
from run_entry_points import run_entry
from test_run_folders import snapshot

import train_standard
from conftest import subset
from utils.errors import SetupError

TINY = ['--arch', 'small_cnn', '--nepoch', '1', '--batch_size', '50', '--device', 'cpu']


def refusal_cases(work):
    """(entry, argv) pairs each of which must be refused before any work; `work` holds a file and a folder
    with someone else's results."""
    a_file, theirs = str(work / 'a_file'), str(work / 'theirs')
    return [
        ('train_standard.py', ['--noise_type', 'digits-clean', *TINY, '--nepoch', '0']),
        ('train_standard.py', ['--noise_type', 'digits-clean', *TINY, '--batch_size', '0']),
        ('train_standard.py', ['--noise_type', 'digits-clean', *TINY, '--lr', '-0.1']),
        ('train_standard.py', ['--noise_type', 'digits-clean', *TINY, '--out_dir', a_file]),
        ('train_standard.py', ['--noise_type', 'cifar11-1-0.35', *TINY]),
        ('train_standard.py', ['--noise_type', str(work / 'digits-absent.npy'), *TINY]),
        ('-m benchmarks.paper', ['--table', '--runs', a_file]),
        ('-m benchmarks.paper', ['--row', 'cifar10-pmd1-35-simclr', '--runs', a_file]),
        ('-m benchmarks.paper', ['--record', str(work / 'no_run'), '--row', 'cifar10-pmd1-35-simclr']),
        ('-m tools.paper_device', ['--out', a_file, '--smoke']),
        ('-m tools.paper_device', ['--out', 'device', '--ship', theirs, '--smoke']),
        ('-m tools.paper_device', ['--out', 'device', '--smoke', '--budget_s', 'nan']),
        ('-m tools.paper_device', ['--out', 'device', '--smoke', '--simclr_epochs', '0', '--seed', '-1']),
    ]


# runpy warns that a module other tests imported runs again as __main__: a fresh copy is what is meant here
@pytest.mark.filterwarnings('ignore:.*found in sys.modules after import of package:RuntimeWarning')
def test_bad_flags_and_paths_are_refused_in_one_line_and_leave_nothing_behind(tmp_path, monkeypatch):
    work = tmp_path / 'work'
    (work / 'theirs').mkdir(parents=True)
    (work / 'a_file').write_text('not a folder\n')
    (work / 'theirs' / 'paper_device.json').write_text('{"mine": true}\n')  # the user's, not the command's
    before = snapshot(work)
    monkeypatch.chdir(work)  # where the default and relative folders would be made
    monkeypatch.setattr(sys, 'argv', list(sys.argv))  # each entry point runs with its own
    for entry, argv in refusal_cases(work):
        result = run_entry(entry, argv)  # as __main__: through the script's own `if __name__ == '__main__'`
        said = result['stderr']
        assert result['code'] == 2 and said.startswith('error: ') and said.count('\n') == 1 and \
            'Traceback' not in said, f"{entry} {' '.join(argv)}: exit {result['code']}\n{said}"
    assert snapshot(work) == before and sorted(os.listdir(work)) == ['a_file', 'theirs']


@pytest.fixture
def small_digits(digits, monkeypatch):
    """train_standard.py reading a small digits set: a run in a second or two."""
    small = subset(digits, 100, 50)
    monkeypatch.setattr(train_standard, 'load_named', lambda *args: small)
    return small


def test_the_standard_run_folder_lies_inside_out_dir_and_a_finished_run_is_kept(tmp_path, small_digits):
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    noise_file = elsewhere / 'digits-mine.npy'
    np.save(noise_file, small_digits.train_clean.numpy())
    argv = ['--noise_type', str(noise_file), *TINY, '--out_dir', str(tmp_path / 'out')]
    train_standard.main(argv)
    run_dir = tmp_path / 'out' / 'digits-mine_small_cnn_s123'  # the file's base name, not its path
    assert {'summary.json', 'history.json'} <= set(os.listdir(run_dir))
    assert os.listdir(elsewhere) == ['digits-mine.npy']
    finished = snapshot(run_dir)
    with pytest.raises(SetupError, match=f'{run_dir} holds a finished run .*choose another --out_dir'):
        train_standard.main(argv)
    assert snapshot(run_dir) == finished


@pytest.mark.parametrize('theirs', ['summary.json', 'notes.txt'])
def test_a_folder_holding_someone_elses_files_is_refused_before_training(tmp_path, small_digits, theirs):
    run_dir = tmp_path / 'digits-clean_small_cnn_s123'
    run_dir.mkdir()
    (run_dir / theirs).write_text('theirs\n')
    with pytest.raises(SetupError, match=f'{run_dir} holds'):
        train_standard.main(['--noise_type', 'digits-clean', *TINY, '--out_dir', str(tmp_path)])
    assert snapshot(run_dir) == {theirs: b'theirs\n'}
