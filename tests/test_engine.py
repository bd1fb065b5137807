"""The training loop end to end: learning on digits, run outputs, checkpoints, resume, failures."""
import json
import os
import subprocess
import sys

import pytest
import torch
from test_data import write_cifar10

import demo_digits
import train_CIFAR
import train_Food101N
from conftest import LEARNS, subset
from model_diffusion import Diffusion
from utils import engine
from utils.averaging import evaluated_weights
from utils.diff_encoders import build_model
from utils.engine import run
from utils.errors import NonFiniteLoss
from utils.prepare import prepare, use_k
from utils.runs.folders import CHECKPOINT_FORMAT, load_run, resumed_config
from utils.schedule import is_eval_epoch, learning_rate
from utils.storage.loading import load_torch
from utils.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_cfg(tmp_path, *flags):
    return demo_digits.config(['--out_dir', str(tmp_path / 'runs'), '--cache_dir',
                                                   str(tmp_path / 'cache'), '--run_name', 'r', *flags])


def test_learning_rate_warmup_then_half_cosine():
    assert learning_rate(0, 1e-3, 20, 1000) == 0
    assert learning_rate(10, 1e-3, 20, 1000) == pytest.approx(5e-4)
    assert learning_rate(20, 1e-3, 20, 1000) == pytest.approx(1e-3)
    assert learning_rate(510, 1e-3, 20, 1000) == pytest.approx(5e-4)
    assert learning_rate(1000, 1e-3, 20, 1000) == pytest.approx(0, abs=1e-12)
    # without warm-up the first step is at the peak (the warm-up is epochs < warmup_epochs, none here)
    assert learning_rate(0, 1e-3, 0, 1000) == 1e-3
    assert learning_rate(20 - 1e-9, 1e-3, 20, 1000) < learning_rate(20, 1e-3, 20, 1000) == 1e-3


def test_eval_schedule_follows_the_authors():
    cfg = train_CIFAR.config([])
    epochs = [e for e in range(cfg.nepoch) if is_eval_epoch(e, cfg.eval_from, cfg.eval_every)]
    assert epochs[0] == 5 and epochs[-1] == 195 and len(epochs) == 39  # every 5th from the end of warm-up
    assert train_CIFAR.config(['--warmup_epochs', '10']).eval_from == 10
    food = train_Food101N.config([])  # their image-file scripts evaluate every epoch, warm-up's too
    assert [e for e in range(12) if is_eval_epoch(e, food.eval_from, food.eval_every)] == list(range(12))
    # a run made before --eval_from was evaluated from the end of its warm-up, and a resume goes on so
    saved = {k: v for k, v in vars(train_CIFAR.config(['--warmup_epochs', '7'])).items() if k != 'eval_from'}
    resumed = resumed_config(train_CIFAR.config(['--resume', 'r']), {'config': saved, 'data_info': {}})
    assert (resumed.warmup_epochs, resumed.eval_from) == (7, 7)


# the schedule that learns (conftest.LEARNS), with one denoising pass for the outputs (their sampled
# probabilities are tested in test_robustness.py)
SHORT = (*LEARNS, '--n_samples', '0')


def test_digits_run_beats_noisy_labels_and_writes_a_run_folder(tmp_path, digits):
    cfg = digits_cfg(tmp_path, *SHORT)
    summary, run_dir = run(cfg, lambda c: digits)
    assert summary['noisy_label_accuracy'] == pytest.approx(0.6, abs=0.03)
    # a clear gain on the clean test split: 15 points above the noisy labels' 60.5%, 10 below the worst seed
    assert summary['test_acc'] > summary['noisy_label_accuracy'] + 0.15
    for name in ('config.json', 'log.jsonl', 'best.pt', 'last.pt', 'summary.json'):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    log = [json.loads(line) for line in open(os.path.join(run_dir, 'log.jsonl'))]
    assert [r['epoch'] for r in log] == list(range(6, 30, 3))
    best = max(log, key=lambda r: r['val_acc'])  # first maximum wins, as in the loop
    assert summary['best_epoch'] == best['epoch'] and summary['test_acc'] == best['test_acc']
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['noise_type'] == 'digits-U-0.4' and config['n_train'] == 1197

    # checkpoint round trip: a fresh model from best.pt reproduces the logged validation accuracy; the
    # demo's improved recipe evaluates the moving average of the weights, which best.pt keeps beside them
    ckpt = load_torch(os.path.join(run_dir, 'best.pt'))
    assert ckpt['format_version'] == CHECKPOINT_FORMAT and ckpt['epoch'] == summary['best_epoch']
    assert ckpt['config']['noise_type'] == 'digits-U-0.4' and ckpt['config']['ema_decay'] == 0.999
    assert ckpt['ema']['updates'] == (ckpt['epoch'] + 1) * 24  # 24 steps an epoch (1,197 samples, batch 50)
    assert not torch.equal(ckpt['ema']['weights']['out.weight'], ckpt['model']['out.weight'])
    data = use_k(cfg, prepare(cfg, digits, torch.device('cpu'), log=lambda m: None), digits, log=lambda m: None)
    model = build_model(cfg, 10, data.info['fp_dim'], (3, 32, 32))
    model.load_state_dict(evaluated_weights(ckpt))
    trainer = Trainer(cfg, data, model, Diffusion(), run_dir, torch.device('cpu'))
    assert trainer.accuracy('val', digits.val_labels) == pytest.approx(summary['best_val_acc'])

    # a checkpoint written before the diffusion encoder's rename (format 1) reads as today's
    old = {**ckpt, 'format_version': 1,
           'model': {k.replace('diff_encoder.', 'x_encoder.', 1): v for k, v in ckpt['model'].items()}}
    assert any(k.startswith('x_encoder.') for k in old['model'])
    torch.save(old, os.path.join(run_dir, 'old.pt'))
    upgraded = load_run(run_dir, 'old.pt')
    assert upgraded['format_version'] == CHECKPOINT_FORMAT and list(upgraded['model']) == list(ckpt['model'])
    # format 2 differs only for the _l encoders (their one-layer head): other runs read as they were
    torch.save({**ckpt, 'format_version': 2}, os.path.join(run_dir, 'two.pt'))
    assert load_run(run_dir, 'two.pt')['format_version'] == CHECKPOINT_FORMAT
    torch.save({**ckpt, 'format_version': 2, 'config': {**ckpt['config'], 'diff_encoder': 'resnet50_l'}},
               os.path.join(run_dir, 'two_l.pt'))
    with pytest.raises(engine.SetupError, match='one-layer head on its resnet50_l diffusion encoder.*start a new run'):
        load_run(run_dir, 'two_l.pt')
    torch.save({**ckpt, 'format_version': 2, 'config': {**ckpt['config'], 'dataset': 'webvision'}},
               os.path.join(run_dir, 'two_webvision.pt'))
    with pytest.raises(engine.SetupError, match='webvision images resized bilinear.*start a new run'):
        load_run(run_dir, 'two_webvision.pt')


def run_interrupted_at(monkeypatch, epoch, cfg, splits):
    """A run stopped as epoch `epoch` begins (a KeyboardInterrupt); its folder keeps the epochs before."""
    original = Trainer.train_epoch

    def interrupted(self, e):
        if e == epoch:
            raise KeyboardInterrupt
        return original(self, e)
    monkeypatch.setattr(Trainer, 'train_epoch', interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, lambda c: splits)
    monkeypatch.setattr(Trainer, 'train_epoch', original)


def test_resume_after_interruption_gives_the_same_summary(tmp_path, digits, monkeypatch):
    flags = ['--nepoch', '12', '--warmup_epochs', '2', '--eval_every', '2', '--lr_horizon', '12', '--n_samples', '0']
    straight, _ = run(digits_cfg(tmp_path / 'a', *flags), lambda c: digits)
    run_interrupted_at(monkeypatch, 7, digits_cfg(tmp_path / 'b', *flags), digits)
    run_dir = str(tmp_path / 'b' / 'runs' / 'r')
    assert load_torch(os.path.join(run_dir, 'last.pt'))['epoch'] == 6
    first_prepare = load_torch(os.path.join(run_dir, 'last.pt'))['data_info']['prepare_s']
    resumed, _ = run(demo_digits.config(['--resume', run_dir]), lambda c: digits)
    for key in ('best_val_acc', 'best_epoch', 'test_acc'):
        assert resumed[key] == straight[key], key
    # the trained weights and their moving average (the demo's improved recipe) continue exactly
    ends = [load_torch(os.path.join(d, 'last.pt')) for d in (str(tmp_path / 'a' / 'runs' / 'r'), run_dir)]
    assert ends[0]['ema']['updates'] == ends[1]['ema']['updates'] == 12 * 24
    for part in (lambda c: c['model'], lambda c: c['ema']['weights']):
        assert all(torch.equal(part(ends[0])[k], part(ends[1])[k]) for k in part(ends[0]))
    assert resumed['seconds']['prepare'] > first_prepare  # both invocations' preparation
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert [r['after_epoch'] for r in config['resumes']] == [6] and config['n_train'] == 1197
    assert 'image_size' not in config and 'nepoch' in config  # only the flags of this script


def test_a_signal_in_the_last_epoch_stops_before_the_outputs(tmp_path, digits, monkeypatch):
    """A SIGTERM during the last epoch's evaluation: the epoch ends and is saved, as any other, and the command
    stops there. It went on to denoise every training image (minutes on a large dataset) and ended with exit 0,
    as if no one had asked it to stop. The resume writes the outputs."""
    import signal
    from utils.errors import Interrupted
    small = subset(digits, 200, 50)
    original = Trainer.evaluate

    def signalled(self, epoch, *args):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, epoch, *args)
    monkeypatch.setattr(Trainer, 'evaluate', signalled)
    run_dir = tmp_path / 'runs' / 'r'
    with pytest.raises(Interrupted, match=rf'SIGTERM after epoch 2, the last; {run_dir}/last.pt holds it, the outputs '
                                          rf'are not written. Continue with --resume {run_dir}$'):
        run(digits_cfg(tmp_path, '--nepoch', '3', '--warmup_epochs', '1', '--n_samples', '0'), lambda c: small)
    monkeypatch.undo()
    assert load_torch(str(run_dir / 'last.pt'))['epoch'] == 2 and not (run_dir / 'summary.json').exists()
    summary, _ = run(demo_digits.config(['--resume', str(run_dir)]), lambda c: small)
    assert summary['epochs'] == 3 and (run_dir / 'train_denoised_labels.npy').exists()


def test_a_best_pt_newer_than_last_pt_stays_the_runs_best(tmp_path, digits, monkeypatch):
    """Stopped between the two writes of an evaluated epoch, best.pt is ahead of last.pt. The resume redoes that
    epoch; where its evaluation came out lower (a GPU's nondeterminism, here made so), best.pt kept that
    epoch's weights while the summary named an earlier epoch and its test accuracy."""
    import shutil
    small = subset(digits, 200, 50)
    flags = ['--nepoch', '12', '--lr_horizon', '12', '--warmup_epochs', '2', '--eval_every', '1', '--lr', '3e-3',
             '--n_samples', '0']
    run_interrupted_at(monkeypatch, 4, digits_cfg(tmp_path, *flags), small)
    run_dir = tmp_path / 'runs' / 'r'
    shutil.copy(run_dir / 'last.pt', tmp_path / 'last_after_3.pt')
    summary, _ = run(demo_digits.config(['--resume', str(run_dir)]), lambda c: small)
    assert summary['best_epoch'] >= 4  # best.pt is of an epoch after that last.pt
    shutil.copy(tmp_path / 'last_after_3.pt', run_dir / 'last.pt')  # as if stopped before the last.pt after it
    later = os.path.getmtime(run_dir / 'last.pt') + 1
    os.utime(run_dir / 'best.pt', (later, later))
    original = Trainer.accuracies
    monkeypatch.setattr(Trainer, 'accuracies', lambda self, split, labels: (
        lambda acc, top5: (acc - 0.5 if split == 'val' else acc, top5))(*original(self, split, labels)))
    again, _ = run(demo_digits.config(['--resume', str(run_dir)]), lambda c: small)
    assert again['best_epoch'] == load_torch(str(run_dir / 'best.pt'))['epoch'] == summary['best_epoch']
    assert (again['best_val_acc'], again['test_acc']) == (summary['best_val_acc'], summary['test_acc'])


def test_non_finite_loss_stops_and_names_the_step(tmp_path, digits, monkeypatch):
    original = Trainer.train_step
    calls = {'n': 0}
    def poisoned(self, idx, *decoded):
        loss = original(self, idx, *decoded)
        calls['n'] += 1
        return loss * float('nan') if calls['n'] == 24 + 4 else loss  # epoch 1, step 3 (0-based)
    monkeypatch.setattr(Trainer, 'train_step', poisoned)
    with pytest.raises(NonFiniteLoss, match='epoch 1, step 3'):
        run(digits_cfg(tmp_path, '--nepoch', '3'), lambda c: digits)
    # the last good checkpoint (epoch 0) is kept
    assert load_torch(str(tmp_path / 'runs' / 'r' / 'last.pt'))['epoch'] == 0


def test_existing_run_folder_is_not_overwritten(tmp_path, digits):
    run(digits_cfg(tmp_path, '--nepoch', '1'), lambda c: digits)
    with pytest.raises(engine.SetupError, match='--resume'):
        run(digits_cfg(tmp_path, '--nepoch', '1'), lambda c: digits)


def test_features_are_cached_once_and_rebuilt_for_other_weights(tmp_path, digits, monkeypatch, tiny_clip_path):
    import utils.encoders.cache
    calls = []
    original = utils.encoders.cache.encode_all
    monkeypatch.setattr(utils.encoders.cache, 'encode_all', lambda *a, **k: calls.append(1) or original(*a, **k))
    small = subset(digits, 300, 100)
    flags = ['--fp_encoder', 'CLIP', '--CLIP_type', tiny_clip_path, '--nepoch', '1']
    run(digits_cfg(tmp_path / 'a', *flags), lambda c: small)
    assert len(calls) == 3  # train, val, test
    run(demo_digits.config(['--out_dir', str(tmp_path / 'b'), '--cache_dir', str(tmp_path / 'a' / 'cache'),
                                                *flags]), lambda c: small)
    assert len(calls) == 3  # all three read from the cache
    from utils.encoders.random_weights import save_random_clip
    other = save_random_clip('tiny', tmp_path / 'other.pt', seed=1)
    run(demo_digits.config(['--out_dir', str(tmp_path / 'c'), '--cache_dir', str(tmp_path / 'a' / 'cache'),
                                                '--fp_encoder', 'CLIP', '--CLIP_type', str(other), '--nepoch', '1']),
        lambda c: small)
    assert len(calls) == 6


def test_augmented_keys_are_one_view_for_every_seed(tmp_path, digits, monkeypatch):
    """The authors' keys were one cached view: runs of other seeds reuse it instead of re-encoding."""
    import utils.encoders.cache
    views = []
    original = utils.encoders.cache.augmented_view
    monkeypatch.setattr(utils.encoders.cache, 'augmented_view', lambda images, seed, **k: views.append(seed) or
                        original(images, seed, **k))
    small = subset(digits, 100, 40)
    keys = [prepare(digits_cfg(tmp_path, '--recipe', 'authors', '--seed', seed), small,
                    torch.device('cpu'), log=lambda *a: None).features['train'] for seed in ('1', '2')]
    assert views == [123]  # drawn once, from the fixed key seed, then read from the cache
    assert torch.equal(keys[0], keys[1])
    clean = prepare(digits_cfg(tmp_path, '--recipe', 'improved'), small, torch.device('cpu'),
                    log=lambda *a: None).features['train']
    assert not torch.equal(keys[0], clean)  # an augmented view it is


def test_corrupt_cache_is_rebuilt(tmp_path, digits):
    small = subset(digits, 200, 50)
    cfg = digits_cfg(tmp_path, '--nepoch', '1')
    run(cfg, lambda c: small)
    for name in os.listdir(tmp_path / 'cache'):
        path = tmp_path / 'cache' / name
        path.write_bytes(path.read_bytes()[:100])  # truncate every cache file
    messages = []
    data = prepare(cfg, small, torch.device('cpu'), log=messages.append)
    assert any('corrupt or truncated' in m for m in messages)
    assert data.features['train'].shape == (200, 3072)


def test_simclr_path_with_augmented_views_and_resnet_diffusion_encoder(tmp_path, digits, simclr18_path):
    small = subset(digits, 120, 40, size=16)
    summary, run_dir = run(digits_cfg(tmp_path, '--fp_encoder', 'SimCLR', '--fp_checkpoint', simclr18_path,
                                      '--diff_encoder', 'resnet18', '--nepoch', '2', '--batch_size', '40',
                                      '--recipe', 'authors'),
                           lambda c: small)
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['fp_train_view'] == 'augmented' and config['fp_dim'] == 512
    assert 0 <= summary['test_acc'] <= 1


def test_frozen_diffusion_encoder_is_not_updated(tmp_path, digits):
    small = subset(digits, 100, 40, size=16)
    cfg = digits_cfg(tmp_path, '--diff_encoder', 'linear', '--freeze_diff_encoder', '--nepoch', '1')
    _, run_dir = run(cfg, lambda c: small)
    torch.manual_seed(cfg.seed)
    ckpt = load_torch(os.path.join(run_dir, 'last.pt'))
    fresh = build_model(cfg, 10, 768, (3, 16, 16)).state_dict()
    trained = {k: v for k, v in ckpt['model'].items() if k.startswith('diff_encoder.') and 'weight' in k
               and 'running' not in k and v.dim() == 2}
    assert trained and all(torch.equal(v, fresh[k]) for k, v in trained.items())
    assert not torch.equal(ckpt['model']['lin1.linear.weight'], fresh['lin1.linear.weight'])


def test_train_cifar_script_on_a_full_size_local_cifar10(tmp_path, tiny_clip_path):
    write_cifar10(str(tmp_path / 'data'), n_per_batch=10000)
    summary, run_dir = train_CIFAR.main([
        '--data_root', str(tmp_path / 'data'), '--no-download', '--noise_type', 'cifar10-U-0.4',
        '--fp_encoder', 'CLIP', '--CLIP_type', tiny_clip_path, '--diff_encoder', 'fp_mlp', '--nepoch', '1',
        '--feature_dim', '64',  # a narrow denoiser: its 45k-image passes, not its width, are what this checks
        '--n_samples', '0',  # one denoising pass over the 45k labels (the sampled ones are tested on digits)
        '--device', 'cpu', '--out_dir', str(tmp_path / 'runs'), '--cache_dir', str(tmp_path / 'cache')])
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert (config['n_train'], config['n_val'], config['n_test']) == (45000, 5000, 10000)
    assert config['noisy_label_accuracy'] == pytest.approx(0.6, abs=0.01)
    assert summary['best_epoch'] == 0


def test_help_lists_the_authors_flags():
    out = subprocess.run([sys.executable, 'train_CIFAR.py', '--help'], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    for flag in ('--noise_type', '--nepoch', '--batch_size', '--device', '--num_workers', '--warmup_epochs',
                 '--feature_dim', '--k', '--ddim_n_step', '--fp_encoder', '--CLIP_type', '--diff_encoder',
                 '--seed', '--data_root', '--out_dir'):
        assert flag in out, flag


def test_cuda_requested_but_absent_is_refused(tmp_path, digits):
    if torch.cuda.is_available():
        pytest.skip('CUDA is present')
    with pytest.raises(engine.SetupError, match='--device cpu'):
        run(digits_cfg(tmp_path, '--device', 'cuda'), lambda c: digits)


def test_k_not_smaller_than_training_set_is_refused(tmp_path, digits):
    small = subset(digits, 20, 10)
    with pytest.raises(engine.SetupError, match='lower --k'):
        run(digits_cfg(tmp_path, '--k', '20', '--nepoch', '1'), lambda c: small)
    with pytest.raises(engine.SetupError, match=r'--k_choices 20 is not smaller than the training set \(20 samples\); '
                                                r'lower --k_choices'):
        run(digits_cfg(tmp_path, '--k_choices', '5', '20', '--nepoch', '1'), lambda c: small)


def test_k_chosen_on_validation_is_what_the_run_uses_and_records(tmp_path, digits, monkeypatch):
    from utils import prepare as prepare_module
    searches = []
    original = prepare_module.neighbour_majority_accuracy
    monkeypatch.setattr(prepare_module, 'neighbour_majority_accuracy', lambda *a, **kw: searches.append(a[3]) or
                        original(*a, **kw))
    cfg = digits_cfg(tmp_path, '--nepoch', '1', '--n_samples', '0', '--k_choices', '1', '5', '20')
    summary, run_dir = run(cfg, lambda c: subset(digits, 300, 60))
    assert searches == [[1, 5, 20]]  # the f_p check reports the selection's figure at the chosen k
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    scores = {int(k): a for k, a in config['k_selection'].items()}
    assert sorted(scores) == [1, 5, 20] and config['k'] == max(scores, key=lambda k: (scores[k], -k))
    assert load_torch(os.path.join(run_dir, 'last.pt'))['config']['k'] == config['k']
    assert config['val_neighbour_majority_accuracy'] == scores[config['k']]

