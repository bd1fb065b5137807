"""Runs that survive faults and refuse bad input: kill-and-resume, clear messages, no partial output."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import demo_digits
import predict
from conftest import LEARNS, subset
from utils.engine import run
from utils.errors import SetupError
from utils.storage.loading import load_torch
from utils.storage.saving import save_torch
from utils.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ['--nepoch', '10', '--lr_horizon', '10', '--warmup_epochs', '2', '--eval_every', '3', '--n_samples', '2']


def cfg_for(tmp_path, *flags):
    return demo_digits.config(['--out_dir', str(tmp_path / 'runs'), '--cache_dir',
                                                   str(tmp_path / 'cache'), '--run_name', 'r', *flags])


def demo(tmp_path, *flags):
    return [sys.executable, 'demo_digits.py', '--out_dir', str(tmp_path / 'runs'), '--cache_dir',
            str(tmp_path / 'cache'), *flags]


# one thread per demo process: with torch's two, a busy 2-core machine slows them 10-30x
ONE_THREAD = {**os.environ, 'OMP_NUM_THREADS': '1'}


def test_killed_run_resumes_to_the_same_summary(tmp_path):
    demo_digits.main(['--out_dir', str(tmp_path / 'a' / 'runs'), '--cache_dir', str(tmp_path / 'a' / 'cache'),
                      '--run_name', 'r', *SHORT])  # straight through, in this process (the same arithmetic)
    straight = json.load(open(tmp_path / 'a' / 'runs' / 'r' / 'summary.json'))

    run_dir = tmp_path / 'b' / 'runs' / 'r'
    proc = subprocess.Popen(demo(tmp_path / 'b', '--run_name', 'r', *SHORT), cwd=ROOT, env=ONE_THREAD,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, seen = time.time() + 600, None  # left as soon as epoch 5 is saved; the margin is for a loaded machine
    while time.time() < deadline:
        last = run_dir / 'last.pt'
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp != seen and load_torch(str(last))['epoch'] >= 5:  # read once per write: reading takes a core
            break
        seen = stamp
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_torch(str(run_dir / 'last.pt'))['epoch']
    assert 5 <= killed_at < 9 and not (run_dir / 'summary.json').exists()  # killed after an evaluation, before the end
    subprocess.run(demo(tmp_path / 'b', '--resume', str(run_dir)), cwd=ROOT, check=True, capture_output=True,
                   env=ONE_THREAD)
    resumed = json.load(open(run_dir / 'summary.json'))
    for key in ('best_val_acc', 'best_epoch', 'test_acc', 'denoised_label_accuracy'):
        assert resumed[key] == straight[key], key
    log = [json.loads(line)['epoch'] for line in open(run_dir / 'log.jsonl')]
    assert log == sorted(set(log))  # no evaluation logged twice
    assert np.array_equal(np.load(run_dir / 'train_probs.npy'), np.load(tmp_path / 'a' / 'runs' / 'r' / 'train_probs.npy'))


def test_cpu_runs_are_bit_for_bit_repeatable(tmp_path, digits):
    small = subset(digits, 400, 100)
    a, dir_a = run(cfg_for(tmp_path / 'a', '--nepoch', '6', '--warmup_epochs', '2'), lambda c: small)
    b, dir_b = run(cfg_for(tmp_path / 'b', '--nepoch', '6', '--warmup_epochs', '2'), lambda c: small)
    wa, wb = load_torch(os.path.join(dir_a, 'last.pt'))['model'], load_torch(os.path.join(dir_b, 'last.pt'))['model']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert np.array_equal(np.load(os.path.join(dir_a, 'train_probs.npy')), np.load(os.path.join(dir_b, 'train_probs.npy')))
    c, dir_c = run(cfg_for(tmp_path / 'c', '--nepoch', '6', '--warmup_epochs', '2', '--seed', '7'), lambda c: small)
    wc = load_torch(os.path.join(dir_c, 'last.pt'))['model']
    assert not torch.equal(wa['out.weight'], wc['out.weight'])


def test_probabilities_and_denoised_labels(tmp_path, digits):
    summary, run_dir = run(cfg_for(tmp_path, '--n_samples', '8', *LEARNS), lambda c: digits)
    probs = np.load(os.path.join(run_dir, 'train_probs.npy'))
    denoised = np.load(os.path.join(run_dir, 'train_denoised_labels.npy'))
    noisy = np.load(os.path.join(run_dir, 'train_noisy_labels.npy'))
    clean = digits.train_clean.numpy()
    assert probs.shape == (1197, 10) and np.allclose(probs.sum(1), 1) and probs.min() >= 0
    assert summary['samples_agree_with_denoised'] == pytest.approx(np.mean(probs.argmax(1) == denoised))
    assert 0.5 < summary['samples_agree_with_denoised'] < 1  # a trained model: mostly, not always, the same
    assert np.mean(denoised == clean) > np.mean(noisy == clean) + 0.2
    # where the given label is wrong, the samples put more mass on the clean label than on it:
    # what label-issue tools rely on
    flipped = noisy != clean
    rows = np.flatnonzero(flipped)
    assert probs[rows, clean[rows]].mean() > probs[rows, noisy[rows]].mean() + 0.15
    for name in ('accuracy.png', 'confusion_noisy_vs_denoised.png', 'confusion_clean_vs_denoised.png'):
        assert os.path.getsize(os.path.join(run_dir, name)) > 1000


def test_predict_mode_on_a_split_and_a_folder(tmp_path, digits, capsys, monkeypatch):
    from PIL import Image
    summary, run_dir = run(cfg_for(tmp_path, '--nepoch', '20', '--warmup_epochs', '5', '--n_samples', '3'),
                           lambda c: digits)
    predict.main([run_dir, '--split', 'val'])  # as many samples as the run drew: frequencies in thirds
    thirds = 3 * np.load(os.path.join(run_dir, 'predict_val_probs.npy'))
    assert np.array_equal(thirds, thirds.round()) and not np.array_equal(10 * thirds / 3, (10 * thirds / 3).round())
    capsys.readouterr()
    result = predict.main([run_dir, '--split', 'test', '--n_samples', '0'])
    assert result['accuracy'] == pytest.approx(summary['test_acc'])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == (f"predicted the test split: 400 images with the epoch-{summary['best_epoch']} best checkpoint, "
                    f"accuracy {100 * summary['test_acc']:.2f}%; wrote {run_dir}/predict_test_labels.npy, "
                    f"{run_dir}/predict_test.json")
    folder = tmp_path / 'images'
    folder.mkdir()
    for i in range(6):
        Image.fromarray(digits.test_images[i].permute(1, 2, 0).numpy()).save(folder / f'{i}.png')
    monkeypatch.chdir(tmp_path)
    result = predict.main([run_dir, '--folder', 'images', '--n_samples', '2'])  # given relative
    assert result['n'] == 6
    rows = open(os.path.join(run_dir, 'predict_folder.csv'), newline='').read().split('\n')
    assert rows[0] == 'path,label,class' and len(rows) == 8 and rows[-1] == ''
    # written absolute, as train_label_ranking.csv and predict_folder.json name theirs
    assert [row.split(',')[0] for row in rows[1:-1]] == [str(folder / f'{i}.png') for i in range(6)]
    assert all(row.split(',')[2] == digits.class_names[int(row.split(',')[1])] for row in rows[1:-1])
    halves = 2 * np.load(os.path.join(run_dir, 'predict_folder_probs.npy'))
    assert halves.shape == (6, 10) and np.array_equal(halves, halves.round())
    predict.main([run_dir, '--folder', 'images'])  # the same folder anew, with the run's own 3 samples
    thirds = 3 * np.load(os.path.join(run_dir, 'predict_folder_probs.npy'))
    assert np.array_equal(thirds, thirds.round()) and not np.array_equal(2 * thirds / 3, (2 * thirds / 3).round())


# ---- bad input: a clear message, and no run folder left behind --------------------------------------

def assert_refused(tmp_path, digits, flags, error, message, splits=None):
    with pytest.raises(error, match=message):
        run(cfg_for(tmp_path, *flags), lambda c: splits or digits)
    assert not (tmp_path / 'runs').exists()


def test_noise_file_of_wrong_length(tmp_path, digits):
    np.save(tmp_path / 'short.npy', np.zeros(10, np.int64))
    assert_refused(tmp_path, digits, ['--noise_type', str(tmp_path / 'short.npy')], ValueError,
                   'expected 1197 labels')


def test_noise_file_out_of_range(tmp_path, digits):
    np.save(tmp_path / 'range.npy', np.full(1197, 12))
    assert_refused(tmp_path, digits, ['--noise_type', str(tmp_path / 'range.npy')], ValueError, r'\[0, 9\]')


def test_noise_file_of_one_class(tmp_path, digits):
    np.save(tmp_path / 'one.npy', np.full(1197, 3))
    assert_refused(tmp_path, digits, ['--noise_type', str(tmp_path / 'one.npy')], ValueError,
                   'all 1197 labels are class 3')


def test_labels_that_never_use_the_top_class_train_and_plot(tmp_path, digits):
    """The confusion plots have the dataset's classes, not the labels' largest plus one (a square that
    did not match the class names crashed after training, and again on every resume)."""
    small = subset(digits, 200, 50)
    labels = small.train_clean.numpy().copy()
    labels[labels == 9] = 8
    np.save(tmp_path / 'no9.npy', labels)
    summary, run_dir = run(cfg_for(tmp_path, '--noise_type', str(tmp_path / 'no9.npy'), '--nepoch', '1',
                                   '--n_samples', '0'), lambda c: small)
    assert os.path.isfile(os.path.join(run_dir, 'confusion_noisy_vs_denoised.png'))


def test_unknown_noise_type(tmp_path, digits):
    """Refused with the flags (SetupError), before the dataset is read."""
    assert_refused(tmp_path, digits, ['--noise_type', 'digits-7-0.3'], SetupError, 'unknown --noise_type')


@pytest.mark.parametrize('flag, value', [('--fp_encoder', 'DINO'), ('--diff_encoder', 'vgg')])
def test_unknown_choices_are_named(flag, value, capsys):
    with pytest.raises(SystemExit):
        demo_digits.config([flag, value])
    assert f"invalid choice: '{value}'" in capsys.readouterr().err


def test_missing_simclr_checkpoint(tmp_path, digits):
    assert_refused(tmp_path, digits, ['--fp_encoder', 'SimCLR', '--fp_checkpoint', str(tmp_path / 'none.pt')],
                   RuntimeError, 'pretrain_SimCLR')


def test_k_too_large(tmp_path, digits):
    assert_refused(tmp_path, digits, ['--k', '20'], SetupError, 'lower --k', splits=subset(digits, 20, 10))


def test_out_of_memory_names_the_flags(tmp_path, digits, monkeypatch):
    def oom(self, splits):
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
    monkeypatch.setattr(Trainer, 'fit', oom)
    with pytest.raises(SetupError, match='lower --batch_size.*--eval_batch_size.*--encode_batch_size'):
        run(cfg_for(tmp_path, '--nepoch', '1'), lambda c: digits)


def test_corrupt_checkpoint_is_named_on_resume(tmp_path, digits):
    _, run_dir = run(cfg_for(tmp_path, '--nepoch', '2', '--n_samples', '0'), lambda c: digits)
    last = os.path.join(run_dir, 'last.pt')
    with open(last, 'r+b') as f:
        f.truncate(os.path.getsize(last) // 2)
    with pytest.raises(RuntimeError, match=r'last.pt is corrupt or truncated \(.*\); restore it from a copy if there is '
                                           r'one; otherwise start a new run under another name'):
        run(demo_digits.config(['--resume', run_dir]), lambda c: digits)
    save_torch([1, 2, 3], last)  # a file from something else
    with pytest.raises(SetupError, match='not an LRA-diffusion checkpoint'):
        run(demo_digits.config(['--resume', run_dir]), lambda c: digits)


def test_resume_of_a_folder_without_checkpoint(tmp_path, digits):
    """A folder that holds no run is named as such; a run stopped before its first epoch ended, as that."""
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SetupError, match=r'empty holds no training run \(no last.pt, config.json or log.jsonl\); '
                                         r'name the folder of a training run'):
        run(demo_digits.config(['--resume', str(tmp_path / 'empty')]), lambda c: digits)
    (tmp_path / 'empty' / 'log.jsonl').write_text('')
    with pytest.raises(SetupError, match=r'no last.pt there \(no finished epoch yet\); start a new run'):
        run(demo_digits.config(['--resume', str(tmp_path / 'empty')]), lambda c: digits)
    with pytest.raises(SetupError, match=r'no best.pt there yet \(no epoch evaluated\); predict once the run has '
                                         r'evaluated one'):  # predict.py: not "start a new run"
        predict.main([str(tmp_path / 'empty'), '--script', 'demo_digits.py'])
    (tmp_path / 'empty' / 'log.jsonl').write_text('{"epoch": 4, "val_acc": 0.5}\n')  # evaluated: best.pt lost
    with pytest.raises(SetupError, match=r'best.pt is missing, though the run has evaluated epochs \(log.jsonl\); '
                                         r'restore it from a copy of the run'):
        predict.main([str(tmp_path / 'empty'), '--script', 'demo_digits.py'])
    (tmp_path / 'empty' / 'k_trials').mkdir()  # stopped while choosing k: the same command goes on, not --resume
    with pytest.raises(SetupError, match=r'empty was stopped while choosing k, before its run began: run the command '
                                         r'that started it again \(the same flags and --run_name empty\)'):
        run(demo_digits.config(['--resume', str(tmp_path / 'empty')]), lambda c: digits)


def test_missing_dataset_leaves_no_run_folder(tmp_path):
    import train_CIFAR
    from utils.errors import DatasetMissing
    with pytest.raises(DatasetMissing, match='--data_root'):
        train_CIFAR.main(['--data_root', str(tmp_path / 'nothing'), '--no-download', '--out_dir', str(tmp_path / 'runs')])
    assert not (tmp_path / 'runs').exists()


def test_unknown_clip_type_leaves_no_run_folder(tmp_path, digits):
    assert_refused(tmp_path, digits, ['--fp_encoder', 'CLIP', '--CLIP_type', 'ViT-Q/7'], RuntimeError,
                   'unknown --CLIP_type')


def test_simclr_of_another_architecture_leaves_no_run_folder(tmp_path, digits):
    state = {'f.0.weight': torch.zeros(64, 3, 7, 7), 'g.0.weight': torch.zeros(512, 2048),
             'g.3.weight': torch.zeros(128, 512)}
    torch.save(state, tmp_path / 'odd.pt')
    assert_refused(tmp_path, digits, ['--fp_encoder', 'SimCLR', '--fp_checkpoint', str(tmp_path / 'odd.pt')],
                   RuntimeError, 'does not fit a SimCLR')
