"""pretrain_SimCLR.py refuses bad flags, changed flags on --resume and outputs it does not own in one
line before any work (and outputs taken while it trained, when it exports), exports only a run that has
all its epochs, and a SIGTERM/SIGINT keeps the epochs already trained."""
import fcntl
import json
import os
import signal

import pytest
import torch
from test_simclr import TINY

import pretrain_SimCLR
from utils.encoders.simclr import load_simclr
from utils.errors import SetupError
from utils.pretraining import checks, epochs, export
from utils.pretraining.trainer import Pretrainer
from utils.runs.cli import run_cli
from utils.storage.loading import load_torch

# smaller still, for the tests that train: two steps an epoch
SMALL = TINY + ['--batch_size', '16', '--n_images', '32']


def refusal(argv, capsys):
    """The exit status and stderr of pretrain_SimCLR.py run as its command line runs it."""
    with pytest.raises(SystemExit) as stopped:
        run_cli(pretrain_SimCLR.main, argv)
    return stopped.value.code, capsys.readouterr().err


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty folder as the working directory, the default encoder folder inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(export, 'MODEL_DIR', str(tmp_path / 'model'))
    return tmp_path


@pytest.fixture
def stopped_run(work):
    """A run of 2 epochs stopped (--stop_after 0) after its first; its encoder goes to work/enc.pt once
    it has both."""
    pretrain_SimCLR.main(SMALL + ['--nepoch', '2', '--stop_after', '0', '--out_dir', 'runs', '--output', 'enc.pt'])
    return os.path.join('runs', 'digits_resnet18')


# ---- flags checked before any work ----------------------------------------------------------------------

@pytest.mark.parametrize('flags, says', [
    (['--batch_size', '0'], '--batch_size 0 must be at least 1'),
    (['--n_images', '0'], '--n_images 0 must be at least 1'),
    (['--n_images', '-3'], '--n_images -3 must be at least 1'),
    (['--knn_every', '0'], '--knn_every 0 must be at least 1'),
    (['--save_every', '0'], '--save_every 0 must be at least 1'),
    (['--lr', '-1'], '--lr -1.0 must be a finite number above 0'),
    (['--image_size', '100000'], '--image_size 100000 must be at most 1024 (no encoder here reads larger images)'),
    (['--lr', '0'], '--lr 0.0 must be a finite number above 0'),
    (['--lr', 'nan'], '--lr nan must be a finite number above 0'),
    (['--temperature', '0'], '--temperature 0.0 must be a finite number above 0'),
    (['--weight_decay', '-1'], '--weight_decay -1.0 must be a finite number, 0 or above'),
    (['--device', 'tpu'], "--device 'tpu' is not a device"),
    (['--nepoch', '0'], '--nepoch 0 must be at least 1'),
    (['--stop_after', '-1'], '--stop_after -1.0 must be a finite number of minutes, 0 or above'),
    (['--n_images', '16'], '--batch_size 32 is more than the 16 images pre-trained on; lower --batch_size'),
    (['--output', 'model'], '--output model is a folder'),
    (['--output', 'enc.json'], "the encoder's .json sidecar would be written over it"),
    (['--output', 'a_file/enc.pt'], 'a_file is a file, not a folder'),
])
def test_a_bad_flag_is_refused_in_one_line_leaving_nothing(work, capsys, flags, says):
    (work / 'model').mkdir()
    (work / 'a_file').write_text('')
    code, err = refusal(TINY + ['--nepoch', '1', '--out_dir', 'runs', '--output', 'enc.pt'] + flags, capsys)
    assert code == 2 and err.count('\n') == 1 and err.startswith('error: ') and says in err, err
    assert sorted(os.listdir(work)) == ['a_file', 'model'] and not os.listdir(work / 'model')


# ---- the encoder is written only over this run's own export ---------------------------------------------

@pytest.mark.parametrize('there', ['enc.pt', 'enc.json'])
def test_an_output_another_file_holds_is_refused(work, capsys, there):
    (work / there).write_bytes(b'a training run\'s last.pt')
    code, err = refusal(TINY + ['--nepoch', '1', '--out_dir', 'runs', '--output', 'enc.pt'], capsys)
    assert code == 2 and err == f'error: {there} already exists (not an export of this run); give --output another ' \
                                'path, or delete it\n'
    assert (work / there).read_bytes() == b'a training run\'s last.pt' and not (work / 'runs').exists()


def test_two_runs_do_not_share_the_default_encoder(work):
    default = work / 'model' / 'SimCLR_128_digits_resnet18_s0.pt'
    pretrain_SimCLR.main(SMALL + ['--nepoch', '1', '--out_dir', 'a'])
    first = default.read_bytes()
    with pytest.raises(SetupError, match=f'{default} already exists \\(the export of the run in '
                                         f'{work}/a/digits_resnet18\\); give --output another path, or delete it'):
        pretrain_SimCLR.main(SMALL + ['--nepoch', '1', '--out_dir', 'b'])
    assert default.read_bytes() == first and not (work / 'b').exists()


# ---- a resume goes on with the run's flags, or refuses ----------------------------------------------------

def test_a_resume_refuses_flags_that_would_change_the_run(stopped_run, capsys):
    state = os.path.join(stopped_run, 'state.pt')
    before = open(state, 'rb').read()
    code, err = refusal(['--resume', stopped_run, '--lr=0.1', '--temperature', '0.2', '--output', 'other.pt',
                         '--device', 'cpu'], capsys)
    assert code == 2 and err == (f"error: --resume {stopped_run}: these flags differ from the run's: --lr 0.1 "
                                 f'(run: default), --temperature 0.2 (run: 0.5); drop them or start a new run\n')
    code, err = refusal(['--resume', stopped_run, '--nepoch', '1'], capsys)
    assert code == 2 and '--nepoch 1: the run in' in err and 'give at least 2 or drop --nepoch' in err
    assert open(state, 'rb').read() == before and not os.path.exists('other.pt')


@pytest.mark.parametrize('damage, says', [
    (lambda s: s.pop('history'), 'history is missing'),
    (lambda s: s.update(epoch='1'), "epoch is str '1', not an epoch count"),
    (lambda s: s['model'].pop('g.3.weight'), 'it does not fit a SimCLR resnet18 (Error(s) in loading state_dict'),
    (lambda s: s['args'].update(arch='resnet50'), 'it does not fit a SimCLR resnet50 (Error(s) in loading'),
    (lambda s: s['args'].update(arch='vgg'), "args.arch is 'vgg', not one of resnet18, resnet34, resnet50"),
    (lambda s: s['optimizer']['param_groups'][0]['params'].pop(), 'it does not fit a SimCLR resnet18 (loaded state'),
    # the run's flags and the rest of the state: a traceback, a run trained on, or an encoder exported at once
    (lambda s: s['args'].update(batch_size=0), '--batch_size 0 must be at least 1'),
    (lambda s: s['args'].update(lr='x'), "args.lr is 'x', not a value of --lr"),
    (lambda s: s['args'].update(dataset='imagenet'), "args.dataset is 'imagenet', not a value of --dataset"),
    (lambda s: s['args'].update(temperature=-1.0), '--temperature -1.0 must be a finite number above 0'),
    (lambda s: s.update(epoch=1000), "epoch 1000 is beyond the run's 2 epochs"),
    (lambda s: s['rng'].update(torch='x'), 'rng is dict'),
    (lambda s: s['history'][0].pop('minutes'), 'history is list'),
])
def test_a_damaged_state_is_refused_in_one_line_before_the_data_is_read(stopped_run, capsys, monkeypatch, damage,
                                                                        says):
    """A state.pt edited or damaged failed with a traceback (a KeyError, a state dict that does not load), after
    the dataset was read."""
    path = os.path.join(stopped_run, 'state.pt')
    state = load_torch(path)
    damage(state)
    torch.save(state, path)
    monkeypatch.setattr(pretrain_SimCLR, 'load_named', lambda *a: pytest.fail('the data was read'))
    code, err = refusal(['--resume', stopped_run, '--device', 'cpu'], capsys)
    assert code == 2 and err.startswith(f'error: {path} is damaged or was edited ({says}') and err.count('\n') == 1
    assert err.endswith('it cannot be resumed: start a new run\n')


def test_a_state_saved_before_a_size_limit_is_not_damaged(stopped_run):
    """--image_size 1100 was a value any earlier version took: a resume of such a run is not refused (the limits
    hold the command line), where a state edited to a size no command line gave is."""
    state = load_torch(os.path.join(stopped_run, 'state.pt'))
    saved = {**state['args'], 'image_size': 1100}
    assert checks.saved_problems(saved, pretrain_SimCLR.parser(), state) == []
    assert checks.saved_problems({**saved, 'image_size': 0}, pretrain_SimCLR.parser(), state) == \
        ['--image_size 0 must be at least 1']


def test_a_resume_takes_the_flags_that_change_no_weight_and_rewrites_its_own_export(stopped_run):
    summary = pretrain_SimCLR.main(['--resume', stopped_run, '--dataset', 'digits', '--batch_size', '16',
                                    '--knn_every', '1', '--save_every', '1', '--nepoch', '3', '--device', 'cpu'])
    assert summary['epochs'] == 3 and summary['encoder'] == 'enc.pt'
    assert json.load(open('enc.json'))['epochs'] == 3
    assert load_torch(os.path.join(stopped_run, 'state.pt'))['args']['knn_every'] == 1


def test_a_resume_whose_export_place_was_taken_writes_where_output_says(stopped_run, capsys):
    open('enc.pt', 'wb').write(b'theirs')  # someone else's file where the run will export
    code, err = refusal(['--resume', stopped_run, '--device', 'cpu'], capsys)
    assert code == 2 and 'enc.pt already exists (not an export of this run); give --output another path' in err
    summary = pretrain_SimCLR.main(['--resume', stopped_run, '--output', 'other.pt', '--device', 'cpu'])
    assert summary['encoder'] == 'other.pt' and json.load(open('other.json'))['epochs'] == 2
    assert open('enc.pt', 'rb').read() == b'theirs'


def test_stop_after_counts_this_commands_minutes_so_a_chain_goes_on(stopped_run):
    state_path = os.path.join(stopped_run, 'state.pt')
    state = load_torch(state_path)
    state['elapsed_s'] = 6000.0  # the run has trained 100 minutes in earlier commands
    torch.save(state, state_path)
    summary = pretrain_SimCLR.main(['--resume', stopped_run, '--nepoch', '3', '--stop_after', '50', '--device', 'cpu'])
    assert summary['epochs'] == 3 and summary['minutes'] >= 100


def test_its_own_export_is_recognised_from_another_working_folder(work, monkeypatch):
    encoder = str(work / 'enc.pt')
    pretrain_SimCLR.main(SMALL + ['--nepoch', '1', '--out_dir', 'runs', '--output', encoder])
    assert json.load(open(work / 'enc.json'))['run_dir'] == str(work / 'runs' / 'digits_resnet18')
    (work / 'elsewhere').mkdir()
    monkeypatch.chdir(work / 'elsewhere')
    summary = pretrain_SimCLR.main(['--resume', str(work / 'runs' / 'digits_resnet18'), '--nepoch', '2',
                                    '--device', 'cpu'])
    assert summary['epochs'] == 2 and json.load(open(work / 'enc.json'))['epochs'] == 2


# ---- the encoder is exported once the run has all its epochs, under a lock ------------------------------

def test_a_stopped_command_exports_nothing_and_its_last_line_says_how_to_go_on(work, capsys):
    summary = pretrain_SimCLR.main(SMALL + ['--nepoch', '2', '--stop_after', '0', '--out_dir', 'runs',
                                            '--output', 'enc.pt'])
    run = os.path.join('runs', 'digits_resnet18')
    assert capsys.readouterr().out.splitlines()[-1] == (
        f'stopped after 1 of 2 epochs; continue with --resume {run}: the encoder is exported to enc.pt once all 2 '
        f'are trained')
    assert summary['epochs'] == 1 and summary['encoder'] is None and sorted(os.listdir(work)) == ['runs']
    summary = pretrain_SimCLR.main(['--resume', run, '--device', 'cpu'])
    assert capsys.readouterr().out.splitlines()[-1].startswith('summary: ')
    assert summary['encoder'] == 'enc.pt' and json.load(open('enc.json'))['epochs'] == 2
    assert load_simclr('enc.pt').arch == 'resnet18'


def test_an_earlier_partial_export_of_the_run_is_left_until_the_run_has_all_its_epochs(stopped_run, capsys):
    """An older version exported at every --stop_after: that file stays (it is this run's, but no command
    of this one wrote it), the stopped line names it, and the export at the end replaces it."""
    open('enc.pt', 'wb').write(b'1 epoch')
    json.dump({'run_dir': os.path.abspath(stopped_run), 'epochs': 1}, open('enc.json', 'w'))
    pretrain_SimCLR.main(['--resume', stopped_run, '--nepoch', '3', '--stop_after', '0', '--device', 'cpu'])
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        'exported to enc.pt once all 3 are trained (enc.pt holds an earlier export of this run, of 1 epochs)')
    assert open('enc.pt', 'rb').read() == b'1 epoch' and json.load(open('enc.json'))['epochs'] == 1
    pretrain_SimCLR.main(['--resume', stopped_run, '--device', 'cpu'])
    assert json.load(open('enc.json'))['epochs'] == 3 and load_simclr('enc.pt').arch == 'resnet18'


def test_an_export_stopped_between_its_two_files_is_this_runs_to_write_and_not_taken_for_whole(stopped_run,
                                                                                                monkeypatch):
    """The sidecar is written first, naming the run and the digest of the encoder to come. The encoder used to
    come first: stopped before its sidecar, the run's own --resume refused the path as someone else's, and a
    sidecar left from an earlier export described weights the file no longer held."""
    original = export.atomic_write

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    for nepoch in ('2', '3'):  # the first export stopped halfway; then an export over a whole one
        monkeypatch.setattr(export, 'atomic_write', stopped)
        with pytest.raises(KeyboardInterrupt):
            pretrain_SimCLR.main(['--resume', stopped_run, '--nepoch', nepoch, '--device', 'cpu'])
        monkeypatch.setattr(export, 'atomic_write', original)
        assert json.load(open('enc.json'))['epochs'] == int(nepoch) and not export.export_complete('enc.pt')
        summary = pretrain_SimCLR.main(['--resume', stopped_run, '--nepoch', nepoch, '--device', 'cpu'])
        assert summary['encoder'] == 'enc.pt' and export.export_complete('enc.pt')
        assert json.load(open('enc.json'))['epochs'] == int(nepoch) and load_simclr('enc.pt').arch == 'resnet18'


@pytest.mark.parametrize('meanwhile', ['another run exports there', 'a user writes there'])
def test_an_output_taken_while_the_run_trained_is_refused_when_it_exports(work, capsys, monkeypatch, meanwhile):
    """The check before any work is not enough: the place may be taken while the run trains. The run
    refuses then, in one line, writing nothing at the place, and keeps its epochs for a --resume."""
    original, taken = epochs.run_epoch, []

    def take_the_place(*args):
        if not taken:
            taken.append(meanwhile)
            if meanwhile == 'another run exports there':
                pretrain_SimCLR.main(SMALL + ['--nepoch', '1', '--out_dir', 'a', '--output', 'enc.pt'])
            else:
                open('enc.pt', 'wb').write(b'theirs')
        return original(*args)
    monkeypatch.setattr(epochs, 'run_epoch', take_the_place)
    code, err = refusal(SMALL + ['--nepoch', '1', '--out_dir', 'b', '--output', 'enc.pt'], capsys)
    run_a, run_b = str(work / 'a' / 'digits_resnet18'), os.path.join('b', 'digits_resnet18')
    another_run = meanwhile == 'another run exports there'
    whose = f'the export of the run in {run_a}' if another_run else 'not an export of this run'
    assert code == 2 and err.count('error: ') == 1 and 'Traceback' not in err  # (above it: the progress bars)
    assert err.splitlines()[-1] == (f'error: enc.pt already exists ({whose}); give --output another path, or '
                                    f'delete it, then export this run with --resume {run_b} (its state.pt holds '
                                    f'every epoch trained)')
    theirs = open('enc.pt', 'rb').read()
    assert theirs == b'theirs' or json.load(open('enc.json'))['run_dir'] == run_a
    assert sorted(os.listdir(work)) == (['a', 'b', 'enc.json', 'enc.pt'] if another_run else ['b', 'enc.pt'])
    summary = pretrain_SimCLR.main(['--resume', run_b, '--output', 'b.pt', '--device', 'cpu'])
    assert summary['epochs'] == 1 and json.load(open('b.json'))['run_dir'] == str(work / run_b)
    assert open('enc.pt', 'rb').read() == theirs


def test_an_export_checks_and_writes_under_its_lock(stopped_run, monkeypatch):
    """Whose the place is is checked, and both files written, while the export holds the lock that any
    other export of the same path waits for: no other process can step in between."""
    lock, seen = export.export_lock_path('enc.pt'), []

    def held():
        fd = os.open(lock, os.O_RDWR)  # another process's view: its own open file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def watched(name, function):
        def call(*args, **kwargs):
            path = args[0] if name == 'atomic_write' else args[-1]  # atomic_write(path, write), save_json(obj, path)
            if name == 'check_output' or os.path.basename(path) in ('enc.pt', 'enc.json'):
                seen.append((name if name == 'check_output' else os.path.basename(path),
                             os.path.exists(lock) and held()))
            return function(*args, **kwargs)
        return call
    for module, name in ((pretrain_SimCLR, 'check_output'), (export, 'check_output'), (export, 'atomic_write'),
                         (export, 'save_json')):
        monkeypatch.setattr(module, name, watched(name, getattr(module, name)))
    with open(lock, 'w'):  # the lock file of an export that was killed holding it
        pass
    pretrain_SimCLR.main(['--resume', stopped_run, '--device', 'cpu'])
    # the check before any work holds no lock; the check again at the export and the writes hold it
    assert seen == [('check_output', False), ('check_output', True), ('enc.json', True), ('enc.pt', True)]
    assert not os.path.exists(lock)  # removed, the killed export's file with it


# ---- a signal stops after the epoch, keeping it ---------------------------------------------------------

def test_a_signal_saves_the_finished_epoch_and_resume_equals_an_uninterrupted_run(work, capsys, monkeypatch):
    pretrain_SimCLR.main(SMALL + ['--nepoch', '2', '--save_every', '2', '--out_dir', 'a', '--output', 'a.pt'])
    steps, original = [], Pretrainer.step

    def signalled(self, idx, step):
        steps.append(step)
        if step == 0:  # the first of the first epoch's two steps
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, idx, step)

    def outside(signum, frame):
        raise AssertionError('the signal reached the handler in place before the run')
    monkeypatch.setattr(Pretrainer, 'step', signalled)
    previous = signal.signal(signal.SIGINT, outside)
    try:
        with pytest.raises(SystemExit) as stopped:
            run_cli(pretrain_SimCLR.main, SMALL + ['--nepoch', '2', '--save_every', '2', '--out_dir', 'b',
                                                  '--output', 'b.pt'])
        assert signal.getsignal(signal.SIGINT) is outside  # handlers restored
    finally:
        signal.signal(signal.SIGINT, previous)
    run_b = os.path.join('b', 'digits_resnet18')
    assert stopped.value.code == 128 + signal.SIGINT and steps == [0, 1]  # the epoch finished
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f'stopped: SIGINT after epoch 1; {run_b}/state.pt holds it. Continue with --resume {run_b}'
    assert load_torch(os.path.join(run_b, 'state.pt'))['epoch'] == 1 and not os.path.exists('b.pt')
    monkeypatch.setattr(Pretrainer, 'step', original)
    pretrain_SimCLR.main(['--resume', run_b, '--device', 'cpu'])
    a, b = load_torch(os.path.join('a', 'digits_resnet18', 'state.pt')), load_torch(os.path.join(run_b, 'state.pt'))
    assert a['epoch'] == b['epoch'] == 2
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert [r['loss'] for r in a['history']] == [r['loss'] for r in b['history']]

