"""--k_select model: k chosen by short training runs on validation, reused and resumable."""
import json
import os
import shutil
import signal
import sys
import weakref

import pytest
import torch
from test_engine import digits_cfg

from conftest import subset
from utils.engine import run
from utils.errors import Interrupted, SetupError
from utils.prepare import neighbour_table
from utils.runs import k_trials
from utils.runs.folders import NEWEST_IMAGE
from utils.storage.loading import load_json, load_torch
from utils.trainer import Trainer

FLAGS = ('--nepoch', '6', '--warmup_epochs', '1', '--eval_every', '2', '--lr_horizon', '6', '--n_samples', '0')
TRIAL = ('--k_choices', '1', '5', '--k_select', 'model', '--k_trial_epochs', '3')  # neither is the default k
CHOOSING = ('--k_choices', '1', '5', '--k_select', 'model')


def log_of(folder):
    """An evaluation log without its wall-clock times."""
    with open(os.path.join(folder, 'log.jsonl')) as f:
        return [{k: v for k, v in json.loads(line).items() if k != 'elapsed_s'} for line in f]


@pytest.fixture
def small(digits):
    return subset(digits, 300, 100)


def test_the_best_trial_k_is_the_run_s_k_and_the_run_is_a_plain_run_of_that_k(tmp_path, small, monkeypatch,
                                                                             capsys):
    seen, trained, trial_trainers = [], [], set()
    original, original_epoch = k_trials.run_trial, Trainer.train_epoch

    def trial(cfg, k, *args):
        seen.append((k, cfg.k_trial_epochs))
        score = original(cfg, k, *args)
        # a finished trial's Trainer (its optimiser state and, on CUDA, its graphs' memory) is gone by now
        assert not any(ref() for ref in trial_trainers)
        return score
    monkeypatch.setattr(k_trials, 'run_trial', trial)

    def train_epoch(self, epoch):
        trained.append((os.path.basename(self.run_dir), epoch))
        if os.path.basename(self.run_dir).startswith('k'):
            trial_trainers.add(weakref.ref(self))
        return original_epoch(self, epoch)
    monkeypatch.setattr(Trainer, 'train_epoch', train_epoch)
    summary, run_dir = run(digits_cfg(tmp_path / 'a', *FLAGS, *TRIAL), lambda c: small)
    assert seen == [(1, 3), (5, 3)] and len(trial_trainers) == 2
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    scores = {int(k): a for k, a in config['k_trials']['best_val_acc'].items()}
    assert config['k_trials']['epochs'] == 3 and sorted(scores) == [1, 5]
    assert summary['k'] == config['k'] and summary['seconds']['k_trials'] == config['k_trials']['seconds'] > 0
    assert config['k'] == max(scores, key=lambda k: (scores[k], -k))
    # three epochs leave both near chance: the log says the choice is close
    assert 'note: the best two trials are within two standard errors on 100 validation images' in \
        capsys.readouterr().out
    for k, score in scores.items():
        folder = os.path.join(run_dir, 'k_trials', f'k{k}')
        trial = log_of(folder)
        assert [r['epoch'] for r in trial] == [2]  # the run's evaluations within the trial's three epochs
        assert max(r['val_acc'] for r in trial) == score
        assert sorted(os.listdir(folder)) == ['log.jsonl', 'trial.json']  # the weights: the run's now, or gone
    # the chosen trial is the run's first three epochs, evaluations included: the run goes on from it
    assert config['k_trials']['run_goes_on_from_trial']
    assert [name for name, epoch in trained] == ['k1'] * 3 + ['k5'] * 3 + ['r'] * 3
    assert log_of(run_dir)[:1] == log_of(os.path.join(run_dir, 'k_trials', f'k{config["k"]}'))
    assert load_torch(os.path.join(run_dir, 'best.pt'))['config']['nepoch'] == 6  # recorded as the run's
    assert load_torch(os.path.join(run_dir, 'last.pt'))['timed_epochs'] == 6  # the trial's epochs timed too
    assert summary['seconds']['train_per_epoch'] > 0
    # ... and the run is exactly the plain run with the chosen k
    plain, plain_dir = run(digits_cfg(tmp_path / 'b', *FLAGS, '--k', str(config['k'])), lambda c: small)
    assert log_of(run_dir) == log_of(plain_dir)
    for key in ('best_val_acc', 'best_epoch', 'test_acc', 'denoised_label_accuracy'):
        assert summary.get(key) == plain.get(key), key


def test_trials_end_at_the_run_s_next_evaluation_and_follow_its_schedule(tmp_path, small):
    _, run_dir = run(digits_cfg(tmp_path, *FLAGS, '--k_choices', '1', '10', '--k_select', 'model',
                                '--k_trial_epochs', '4', '--lr_horizon', '0'), lambda c: small)  # 0: --nepoch
    trial, full = log_of(os.path.join(run_dir, 'k_trials', 'k1')), log_of(run_dir)
    assert [r['epoch'] for r in trial] == [2, 4] and [r['epoch'] for r in full] == [2, 4]  # 4 epochs asked, 5 run
    assert trial[0]['lr'] == full[0]['lr']  # the first epochs of the run, not a schedule of their own
    cfg = digits_cfg(tmp_path, '--nepoch', '50', '--lr_horizon', '0', '--k_trial_epochs', '5', *CHOOSING)
    # 5 epochs asked; the run's first evaluation is epoch 10, after its 10 warm-up epochs
    assert (k_trials.trial_config(cfg, 3).nepoch, k_trials.trial_config(cfg, 3).lr_horizon) == (11, 50)


def test_a_stopped_trial_is_continued_by_the_same_command(tmp_path, small, monkeypatch, capsys):
    straight, _ = run(digits_cfg(tmp_path / 'a', *FLAGS, *TRIAL), lambda c: small)
    original = Trainer.train_epoch
    epochs, fired = [], []

    def signalled(self, epoch):
        epochs.append((os.path.basename(self.run_dir), epoch))
        if epochs[-1] == ('k5', 1) and not fired:
            fired.append(epoch)  # in the second trial's second epoch: its first step ends, then the run stops
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, epoch)
    monkeypatch.setattr(Trainer, 'train_epoch', signalled)
    run_dir = tmp_path / 'b' / 'runs' / 'r'
    with pytest.raises(Interrupted, match=r'interrupted while choosing k \(the k 5 trial\); the trials so far are in '
                                          rf'{run_dir / "k_trials"}: run the same command with --run_name r'):
        run(digits_cfg(tmp_path / 'b', *FLAGS, *TRIAL), lambda c: small)
    saved = load_torch(str(run_dir / 'k_trials' / 'k5' / 'last.pt'))
    assert saved['epoch'] == 0 and saved['partial_epoch']['steps_done'] == 1
    shutil.copytree(tmp_path / 'b', tmp_path / 'c')
    epochs.clear()
    again, _ = run(digits_cfg(tmp_path / 'b', *FLAGS, *TRIAL), lambda c: small)
    # k 1 is reused, k 5 goes on within its second epoch, then the run goes on from the chosen trial
    assert epochs == [('k5', 1), ('k5', 2)] + [('r', e) for e in range(3, 6)]
    for key in ('best_val_acc', 'best_epoch', 'test_acc', 'k'):
        assert again.get(key) == straight.get(key), key
    assert log_of(run_dir) == log_of(tmp_path / 'a' / 'runs' / 'r')
    # the stopped trial's checkpoint damaged (cut short): that trial starts over, as the engine means to, where
    # the same command was refused, saying that deleting the checkpoint would end the run
    with open(tmp_path / 'c' / 'runs' / 'r' / 'k_trials' / 'k5' / 'last.pt', 'r+b') as f:
        f.truncate(100)
    epochs.clear()
    capsys.readouterr()
    over, _ = run(digits_cfg(tmp_path / 'c', *FLAGS, *TRIAL), lambda c: small)
    out = capsys.readouterr().out  # said, with why
    assert 'k5/last.pt is corrupt or truncated' in out
    assert f'the k trial in {tmp_path}/c/runs/r/k_trials/k5 starts over' in out
    assert epochs == [('k5', e) for e in range(3)] + [('r', e) for e in range(3, 6)]
    assert over['k'] == straight['k']


def test_a_run_stopped_while_taking_over_its_trial_is_finished_by_the_same_command(tmp_path, small, monkeypatch):
    """The chosen trial's checkpoints move into the run folder one by one. Stopped between the two writes, the
    folder held last.pt without best.pt: a --resume trained to the end, then failed for want of best.pt."""
    straight, _ = run(digits_cfg(tmp_path / 'a', *FLAGS, *TRIAL), lambda c: small)
    run_dir = tmp_path / 'b' / 'runs' / 'r'
    original, written = k_trials.save_torch, []

    def stopped_after_one(obj, path):
        if os.path.dirname(path) == str(run_dir) and written:
            raise KeyboardInterrupt
        written.append(os.path.basename(path))
        return original(obj, path)
    monkeypatch.setattr(k_trials, 'save_torch', stopped_after_one)
    with pytest.raises(KeyboardInterrupt):
        run(digits_cfg(tmp_path / 'b', *FLAGS, *TRIAL), lambda c: small)
    monkeypatch.undo()
    assert written == ['best.pt'] and not (run_dir / 'last.pt').exists()
    again, _ = run(digits_cfg(tmp_path / 'b', *FLAGS, *TRIAL), lambda c: small)
    for key in ('best_val_acc', 'best_epoch', 'test_acc', 'k'):
        assert again.get(key) == straight.get(key), key


def test_a_signal_after_a_trial_s_last_step_stops_before_the_next(tmp_path, small, monkeypatch):
    original_epoch, original_evaluate = Trainer.train_epoch, Trainer.evaluate
    epochs = []
    monkeypatch.setattr(Trainer, 'train_epoch', lambda self, epoch: epochs.append(
        (os.path.basename(self.run_dir), epoch)) or original_epoch(self, epoch))

    def evaluate(self, epoch, *rest):
        if (os.path.basename(self.run_dir), epoch) == ('k1', 2):  # the first trial's last evaluation
            os.kill(os.getpid(), signal.SIGTERM)
        return original_evaluate(self, epoch, *rest)
    monkeypatch.setattr(Trainer, 'evaluate', evaluate)
    run_dir = tmp_path / 'runs' / 'r'
    with pytest.raises(Interrupted, match=r'SIGTERM after the k 1 trial; the trials so far are in .*--run_name r'):
        run(digits_cfg(tmp_path, *FLAGS, *TRIAL), lambda c: small)
    assert epochs == [('k1', 0), ('k1', 1), ('k1', 2)]  # nothing after the trial it ended
    assert json.loads((run_dir / 'k_trials' / 'k1' / 'trial.json').read_text())['finished']


def test_a_signal_another_rank_received_after_a_trial_stops_this_rank_too(tmp_path, small, monkeypatch):
    """With several ranks, a signal some received in a trial's last epoch is agreed on: the ranks it missed stop
    too, rather than waiting for the others in the next collective."""
    agreed, epochs_agree = [], k_trials.distributed.agreed_stop

    def another_rank_was_signalled(signum, device):
        if sys._getframe(1).f_code.co_name != 'run_trial':  # the trainer's epochs: no signal anywhere
            return epochs_agree(signum, device)
        agreed.append(signum)
        return signal.SIGTERM
    monkeypatch.setattr(k_trials.distributed, 'agreed_stop', another_rank_was_signalled)
    with pytest.raises(Interrupted, match=r'SIGTERM after the k 1 trial'):
        run(digits_cfg(tmp_path, *FLAGS, *TRIAL), lambda c: small)
    assert agreed == [None]  # this rank had received nothing


def run_gone(folder):
    """A run folder whose run is gone: its k trials only."""
    for name in ('last.pt', 'best.pt', 'summary.json', 'log.jsonl'):
        os.remove(folder / name)


def test_a_trial_of_other_flags_is_not_reused(tmp_path, small, capsys):
    first, _ = run(digits_cfg(tmp_path, *FLAGS, *TRIAL, '--run_name', 'x'), lambda c: small)
    record = tmp_path / 'runs' / 'y' / 'k_trials' / 'k1' / 'trial.json'
    os.rename(tmp_path / 'runs' / 'x', tmp_path / 'runs' / 'y')
    run_gone(tmp_path / 'runs' / 'y')
    before = json.loads(record.read_text())
    # finished trials without their weights (gone with the run, or made by an earlier version): reused
    # for the choice, and the run trains from its first epoch
    again, _ = run(digits_cfg(tmp_path, *FLAGS, *TRIAL, '--run_name', 'y'), lambda c: small)
    config = json.loads((tmp_path / 'runs' / 'y' / 'config.json').read_text())
    assert not config['k_trials']['run_goes_on_from_trial']
    assert capsys.readouterr().out.count('trial already finished') == 2
    assert all(again[key] == first[key] for key in ('k', 'best_epoch', 'best_val_acc', 'test_acc'))
    run_gone(tmp_path / 'runs' / 'y')
    run(digits_cfg(tmp_path, *FLAGS, *TRIAL, '--run_name', 'y', '--lr', '2e-3'), lambda c: small)
    after = json.loads(record.read_text())
    assert after['key'] != before['key'] and after['finished']
    # a damaged record is redone, not trusted
    assert k_trials.finished_score(load_json(str(record)), after['key']) == after['best_val_acc']
    record.write_text('{"key": "%s", "finished": true, "best_val_acc": 7}' % after['key'])
    assert k_trials.finished_score(load_json(str(record)), after['key']) is None
    record.write_text('[1, 2]')
    assert k_trials.finished_score(load_json(str(record)), after['key']) is None


def test_a_trial_an_earlier_version_left_unfinished_is_not_taken_over(tmp_path, small, monkeypatch):
    """Such a trial's evaluations scored validation only: it may finish and score its k, but the run
    does not go on from it (its log would lack test accuracies)."""
    original_epoch, original_trial = Trainer.train_epoch, k_trials.run_trial

    def signalled(self, epoch):
        if (os.path.basename(self.run_dir), epoch) == ('k1', 3) and not os.path.exists(tmp_path / 'stopped'):
            open(tmp_path / 'stopped', 'w').close()
            os.kill(os.getpid(), signal.SIGTERM)  # after the trial's evaluation at epoch 2
        return original_epoch(self, epoch)
    monkeypatch.setattr(Trainer, 'train_epoch', signalled)
    flags = (*FLAGS, '--k_choices', '1', '5', '--k_select', 'model', '--k_trial_epochs', '5')
    with pytest.raises(Interrupted):
        run(digits_cfg(tmp_path, *flags), lambda c: small)
    last = tmp_path / 'runs' / 'r' / 'k_trials' / 'k1' / 'last.pt'
    saved = load_torch(str(last))
    assert [r['epoch'] for r in saved['history']] == [2]
    saved['history'] = [{**r, 'test_acc': None} for r in saved['history']]  # as the earlier version wrote it
    saved['best']['test_acc'] = None
    torch.save(saved, str(last))
    monkeypatch.setattr(k_trials, 'run_trial', lambda cfg, k, *a: original_trial(cfg, k, *a) if k == 1 else 0.0)
    summary, run_dir = run(digits_cfg(tmp_path, *flags), lambda c: small)
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['k'] == 1 and not config['k_trials']['run_goes_on_from_trial']
    assert all(r['test_acc'] is not None for r in log_of(run_dir)) and summary['test_acc'] is not None
    assert not os.path.exists(last)  # its weights are not kept either


def test_resume_keeps_the_chosen_k_without_new_trials(tmp_path, small, monkeypatch):
    _, run_dir = run(digits_cfg(tmp_path, *FLAGS, *TRIAL), lambda c: small)
    chosen = json.load(open(os.path.join(run_dir, 'config.json')))['k']
    monkeypatch.setattr(k_trials, 'run_trial', lambda *a: pytest.fail('a resumed run ran a trial'))
    from test_trust import resume
    resumed, _ = run(resume(run_dir, '--nepoch', '8'), lambda c: small)
    assert load_torch(os.path.join(run_dir, 'last.pt'))['config']['k'] == chosen and resumed['epochs'] == 8
    assert resumed['k'] == chosen and 'k_trials' in resumed['seconds']  # the first invocation's trials


@pytest.mark.parametrize('flags, problem', [
    (('--k_select', 'model'), '--k_select model needs at least two --k_choices to try'),
    (('--k_select', 'model', '--k_choices', '5', '5'), '--k_select model needs at least two --k_choices'),
    (('--k_select', 'model', '--k_choices', '1', '5', '--k_trial_epochs', '9', '--nepoch', '8'),
     '--k_trial_epochs 9 must not exceed --nepoch 8'),
    (('--k_trial_epochs', '-1'), '--k_trial_epochs -1 must not be negative'),
    (('--k_choices', '1', '5', '--k_trial_epochs', '3'), '--k_trial_epochs 3 applies to --k_select model only'),
])
def test_k_select_flags_are_checked(tmp_path, flags, problem):
    with pytest.raises(SetupError) as refused:  # as the flags are parsed, before any work
        digits_cfg(tmp_path, *flags)
    assert any(p.startswith(problem) for p in str(refused.value).split('; '))


def test_default_trial_length_is_a_tenth_of_the_run_and_twice_its_warm_up(tmp_path):
    for nepoch, warmup, expected in ((200, 5, 20), (100, 10, 20), (60, 2, 6), (30, 0, 3), (3, 4, 3)):
        cfg = digits_cfg(tmp_path, '--nepoch', str(nepoch), '--warmup_epochs', str(warmup), '--eval_every', '1',
                         *CHOOSING)
        assert k_trials.trial_epochs(cfg) == expected, (nepoch, warmup)
    # then up to the run's next evaluation (epochs 5, 10, ... with --eval_every 5), or the whole run
    for nepoch, warmup, asked, expected in ((200, 5, 0, 21), (60, 2, 0, 6), (60, 2, 7, 11), (12, 2, 12, 12),
                                            (3, 4, 0, 3)):
        cfg = digits_cfg(tmp_path, '--nepoch', str(nepoch), '--warmup_epochs', str(warmup), '--eval_every', '5',
                         '--k_trial_epochs', str(asked), *CHOOSING)
        assert k_trials.trial_epochs(cfg) == expected, (nepoch, warmup, asked)


def test_a_choice_within_two_standard_errors_is_called_close():
    assert k_trials.too_close({1: 0.14, 10: 0.105}, 200)              # 1.1 standard errors apart
    assert k_trials.too_close({1: 0.765, 10: 0.685, 50: 0.5}, 200)     # the best two: 1.8
    assert not k_trials.too_close({1: 0.765, 10: 0.685}, 400)          # 2.5
    assert not k_trials.too_close({1: 0.8006, 10: 0.769}, 5000)        # 3.8 (CIFAR-10N aggre)
    assert not k_trials.too_close({1: 0.5}, 10)


def test_the_trial_key_is_what_a_trial_computes(tmp_path, monkeypatch):
    def key(*flags):
        cfg = digits_cfg(tmp_path, '--k_choices', '1', '5', '--k_select', 'model', *flags)
        return k_trials.trial_key(k_trials.trial_config(cfg, 1), {'training labels': 'x'})
    same = key()
    assert key('--n_samples', '3') == key('--run_name', 'other') == key('--num_workers', '1') == same
    assert key('--lr', '2e-3') != same and key('--seed', '5') != same and key('--nepoch', '300') != same  # 31-epoch trials, not 21
    assert key() != k_trials.trial_key(k_trials.trial_config(digits_cfg(tmp_path, '--k_choices', '1', '5'), 5),
                                       {'training labels': 'x'})
    trial = k_trials.trial_config(digits_cfg(tmp_path, '--k_choices', '1', '5', '--k_select', 'model'), 1)
    recorded_before = {'training labels': 'x', 'image files': 'y'}  # by a version without the newest image time
    before = k_trials.trial_key(trial, recorded_before)
    assert k_trials.trial_key(trial, {**recorded_before, NEWEST_IMAGE: 123}) == before
    assert k_trials.trial_key(trial, {**recorded_before, 'image files': 'z'}) != before
    monkeypatch.setattr(neighbour_table, 'version', neighbour_table.version + 1)  # a table made by another rule
    assert key() != same
