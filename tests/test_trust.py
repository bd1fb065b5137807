"""Trust nothing read from disk: no file the package loads can run code, and every refusal names the file."""
import errno
import functools
import hashlib
import http.server
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
from test_data import write_cifar10

import demo_digits
import predict
import pretrain_SimCLR
from conftest import subset
from utils.data.cifar import load_cifar
from utils.data.noise import resolve_noisy_labels
from utils.engine import run
from utils.errors import (
    CannotWrite,
    CorruptFile,
    DatasetMissing,
    EncoderError,
    Interrupted,
    NoiseError,
    NonFiniteLoss,
    SetupError,
    UnsafeFile,
)
from utils.encoders.cache import content_hash
from utils.prepare import prepare
from utils.runs.cli import run_cli
from utils.runtime.signals import StopSignals
from utils.storage.loading import load_torch
from utils.storage.saving import save_torch
from utils.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Marker:
    """Unpickling this creates a file: what a hostile checkpoint, cache or data file would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


def cfg_for(tmp_path, *flags):
    return demo_digits.config(['--out_dir', str(tmp_path / 'runs'), '--cache_dir',
                                                   str(tmp_path / 'cache'), '--run_name', 'r', *flags])


def demo(tmp_path, *flags):
    return [sys.executable, 'demo_digits.py', '--out_dir', str(tmp_path / 'runs'), '--cache_dir',
            str(tmp_path / 'cache'), '--run_name', 'r', *flags]


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / 'pwned'
    yield path
    assert not path.exists(), 'a file the package read ran code'


def test_hostile_checkpoint_is_refused_on_resume_and_predict(tmp_path, marker):
    run_dir = tmp_path / 'runs' / 'r'
    run_dir.mkdir(parents=True)
    for name in ('last.pt', 'best.pt'):
        torch.save({'format_version': 1, 'model': Marker(marker)}, run_dir / name)
    with pytest.raises(UnsafeFile, match=f'{run_dir / "last.pt"} refused: loading it would call (builtins|io).open'):
        run(demo_digits.config(['--resume', str(run_dir)]), lambda c: None)
    with pytest.raises(UnsafeFile, match=f'{run_dir / "best.pt"} refused'):
        predict.main([str(run_dir), '--script', 'demo_digits.py'])


class Shell:
    """Unpickled, it runs a shell command that makes the marker file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}',)


def test_a_checkpoint_that_would_run_a_shell_command_is_named_as_such(tmp_path, marker):
    """torch 2.14 words the refusal of os.system's global otherwise than of open's: the file was called damaged
    or another program's, not one that could run code."""
    torch.save({'format_version': 3, 'model': Shell(marker)}, tmp_path / 'last.pt')
    with pytest.raises(UnsafeFile, match=r'refused: loading it would call (posix|os)\.system, which no data file '
                                         r'needs \(it could run code\)'):
        load_torch(str(tmp_path / 'last.pt'))


def test_hostile_caches_are_refused_and_rebuilt(tmp_path, marker, digits):
    small = subset(digits, 200, 50)
    cfg = cfg_for(tmp_path, '--nepoch', '1', '--n_samples', '0')
    run(cfg, lambda c: small)
    names = sorted(os.listdir(tmp_path / 'cache'))
    assert len(names) == 4  # train, val, test features and the neighbour table
    for name in names:
        torch.save({'key': Marker(marker), 'value': Marker(marker)}, tmp_path / 'cache' / name)
    messages = []
    data = prepare(cfg, small, torch.device('cpu'), log=messages.append)
    assert sum('refused' in m and 'rebuilding' in m for m in messages) == 4
    assert data.features['train'].shape == (200, 3072)


def test_hostile_cifar_batch_is_refused(tmp_path, marker):
    write_cifar10(str(tmp_path))
    path = tmp_path / 'cifar-10-batches-py' / 'data_batch_2'
    with open(path, 'wb') as f:
        pickle.dump({'data': Marker(marker), 'labels': [0]}, f)
    with pytest.raises(UnsafeFile, match=f'CIFAR batch {path} refused: loading it would call (builtins|io).open'):
        load_cifar('cifar10', str(tmp_path), download=False)


def test_hostile_cifar_n_file_is_refused(tmp_path, marker):
    torch.save({'aggre_label': Marker(marker)}, tmp_path / 'CIFAR-10_human.pt')
    with pytest.raises(UnsafeFile, match='CIFAR-10_human.pt refused'):
        resolve_noisy_labels('cifar10n-aggre', 45000, None, 10, cifar_n_dirs=[str(tmp_path)],
                             noise_dir=str(tmp_path / 'none'))


def test_hostile_simclr_state_is_refused(tmp_path, marker):
    (tmp_path / 'simclr').mkdir()
    torch.save({'format_version': 1, 'args': Marker(marker)}, tmp_path / 'simclr' / 'state.pt')
    with pytest.raises(UnsafeFile, match='state.pt refused'):
        pretrain_SimCLR.main(['--resume', str(tmp_path / 'simclr')])


@pytest.mark.parametrize('env_override', [False, True])
def test_hostile_clip_checkpoint_is_refused(tmp_path, marker, monkeypatch, env_override):
    """The clip package's own loader falls back to a plain torch.load (torch lets an environment variable
    turn its default off): the package reads local CLIP files itself, weights only."""
    from utils.encoders.clip import load_clip
    if env_override:
        monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    path = tmp_path / 'ViT-B-32.pt'
    torch.save({'visual.conv1.weight': Marker(marker)}, path)
    with pytest.raises(UnsafeFile, match=f'CLIP checkpoint {path} refused'):
        load_clip(str(path))


@pytest.mark.parametrize('what', ['SimCLR', 'CC classifier', 'ResNet'])
def test_hostile_encoder_checkpoints_are_refused_in_one_line(tmp_path, marker, what):
    from utils.encoders.cc_net import load_cc
    from utils.encoders.imagenet import load_imagenet_resnet
    from utils.encoders.simclr import load_simclr
    load = {'SimCLR': load_simclr, 'CC classifier': load_cc,
            'ResNet': lambda p: load_imagenet_resnet('resnet18', weights=p)}[what]
    path = tmp_path / 'encoder.pt'
    torch.save({'f.conv1.weight': Marker(marker)}, path)
    with pytest.raises(UnsafeFile, match=f'{what} checkpoint {path} refused: loading it would call'):
        load(str(path))
    path.write_bytes(b'\x80\x02not a checkpoint')
    with pytest.raises((UnsafeFile, CorruptFile), match=f'{what} checkpoint {path} ') as refused:
        load(str(path))
    assert '\n' not in str(refused.value) and len(str(refused.value)) < 400


def test_a_plain_pickle_is_refused_without_torchs_warning_before_the_line(tmp_path):
    """torch warns of a pickle protocol it did not write (two lines on stderr) before the refusal: the
    refusal alone is said."""
    path = tmp_path / 'last.pt'
    with open(path, 'wb') as f:
        pickle.dump({'epoch': 1}, f, protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with pytest.raises(UnsafeFile, match=f'checkpoint {path} refused: it is not a file torch reads'):
            load_torch(str(path))
    assert not caught


def named_by_its_sha256(path):
    """`path` renamed as torchvision names its releases (<arch>-<first 8 hex digits of its SHA-256>.pth)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    return path.rename(path.with_name(f'{path.stem}-{digest}.pth'))


def test_the_imagenet_weights_are_the_authors_torchvision_release():
    from utils.encoders import imagenet
    names = {arch: os.path.basename(url) for arch, url in imagenet.IMAGENET_URLS.items()}
    # the files the authors' ResNet_for_224 loads; torchvision's DEFAULT for resnet50 is its V2 (11ad3fa6)
    assert names == {'resnet18': 'resnet18-5c106cde.pth', 'resnet34': 'resnet34-333f7ec4.pth',
                     'resnet50': 'resnet50-19c8e357.pth'}


def test_torchvisions_cached_imagenet_weights_are_checked_read_weights_only_and_named(tmp_path, marker,
                                                                                        monkeypatch):
    from utils.encoders import imagenet
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))

    def offline(url, **kwargs):
        raise OSError('<urlopen error [Errno -3]\nTemporary failure in name resolution>')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    with pytest.raises(EncoderError, match=r'ImageNet weights for resnet18 are not cached in .*hub/checkpoints and '
                                           r'could not be downloaded \(<urlopen error \[Errno -3\]\)') as refused:
        imagenet.load_imagenet_resnet('resnet18')
    assert '\n' not in str(refused.value)
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    cached = tmp_path / 'hub' / 'checkpoints' / 'resnet18.pth'
    torch.save(imagenet.load_imagenet_resnet('resnet18', 'random', seed=3).net.state_dict(), cached)
    cached = named_by_its_sha256(cached)
    monkeypatch.setitem(imagenet.IMAGENET_URLS, 'resnet18', f'http://127.0.0.1:9/models/{cached.name}')
    from_cache = imagenet.load_imagenet_resnet('resnet18')
    assert torch.equal(from_cache.net.conv1.weight, torch.load(cached, weights_only=True)['conv1.weight'])
    torch.save(imagenet.load_imagenet_resnet('resnet18', 'random', seed=4).net.state_dict(), cached)
    with pytest.raises(CorruptFile, match=f'cached ImageNet weights for resnet18 {cached} are not the file of that '
                                          f'name .*; delete it to download it again') as refused:
        imagenet.load_imagenet_resnet('resnet18')  # other weights under the release's name
    assert '\n' not in str(refused.value)
    hostile = tmp_path / 'hub' / 'checkpoints' / 'hostile.pth'
    torch.save({'conv1.weight': Marker(marker)}, hostile)
    hostile = named_by_its_sha256(hostile)
    monkeypatch.setitem(imagenet.IMAGENET_URLS, 'resnet18', f'http://127.0.0.1:9/models/{hostile.name}')
    with pytest.raises(UnsafeFile, match=f'cached ImageNet weights for resnet18 {hostile} refused: loading it would '
                                         f'call'):
        imagenet.load_imagenet_resnet('resnet18')


def test_imagenet_weights_are_downloaded_only_when_their_sha256_matches_their_name(tmp_path, monkeypatch):
    """Against a server on 127.0.0.1: the release is fetched into torch.hub's cache and loaded; a file whose
    bytes are not the name's is refused in one line and not kept."""
    from utils.encoders import imagenet
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    served = tmp_path / 'served'
    served.mkdir()
    release = served / 'resnet18.pth'
    torch.save(imagenet.load_imagenet_resnet('resnet18', 'random', seed=5).net.state_dict(), release)
    release = named_by_its_sha256(release)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()
    try:
        url = f'http://127.0.0.1:{httpd.server_address[1]}/{release.name}'
        monkeypatch.setitem(imagenet.IMAGENET_URLS, 'resnet18', url)
        fetched = imagenet.load_imagenet_resnet('resnet18')
        assert fetched.source == f'torchvision resnet18 ImageNet ({release.name})'
        assert torch.equal(fetched.net.conv1.weight, torch.load(release, weights_only=True)['conv1.weight'])
        assert (tmp_path / 'hub' / 'checkpoints' / release.name).read_bytes() == release.read_bytes()
        impostor = served / 'resnet34-00000000.pth'
        shutil.copy(release, impostor)
        monkeypatch.setitem(imagenet.IMAGENET_URLS, 'resnet34', url.replace(release.name, impostor.name))
        with pytest.raises(EncoderError, match=r'ImageNet weights for resnet34 are not cached in .* and could not be '
                                               r'downloaded \(invalid hash value') as refused:
            imagenet.load_imagenet_resnet('resnet34')
        assert '\n' not in str(refused.value)
        assert not (tmp_path / 'hub' / 'checkpoints' / impostor.name).exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_clip_file_that_is_no_clip_model_is_named(tmp_path):
    from utils.encoders.clip import load_clip
    torch.save({'weight': torch.zeros(2)}, tmp_path / 'other.pt')
    torch.save([torch.zeros(2)], tmp_path / 'list.pt')
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(EncoderError, match='other.pt is not a CLIP checkpoint the clip package can build'):
        load_clip(str(tmp_path / 'other.pt'))
    with pytest.raises(EncoderError, match='list.pt holds a list, not the state dict'):
        load_clip(str(tmp_path / 'list.pt'))
    with pytest.raises(UnsafeFile, match=r'junk.pt refused: it is not a file torch reads without running code \(Unsupported operand'):
        load_clip(str(tmp_path / 'junk.pt'))


def test_cifar_batch_whose_counts_differ_is_refused(tmp_path):
    from utils.errors import DatasetMissing
    content = write_cifar10(str(tmp_path))
    path = tmp_path / 'cifar-10-batches-py' / 'data_batch_1'
    data, labels = content['data_batch_1']
    with open(path, 'wb') as f:
        pickle.dump({'data': data, 'labels': labels[:-1]}, f)
    with pytest.raises(DatasetMissing, match=f'{path} holds 40 images but 39 labels'):
        load_cifar('cifar10', str(tmp_path), download=False)


def test_truncated_cifar_batch_names_its_path(tmp_path):
    write_cifar10(str(tmp_path))
    path = tmp_path / 'cifar-10-batches-py' / 'test_batch'
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(RuntimeError, match=f'CIFAR batch {path} is corrupt or truncated'):
        load_cifar('cifar10', str(tmp_path), download=False)


# ---- flags and labels checked before any work ------------------------------------------------------

def never_read(cfg):
    raise AssertionError('data was read before the flags were checked')


@pytest.mark.parametrize('flag, value, message', [
    ('--batch_size', '0', '--batch_size 0 must be at least 1'),
    ('--eval_batch_size', '-5', '--eval_batch_size -5 must be at least 1'),
    ('--encode_batch_size', '0', '--encode_batch_size 0 must be at least 1'),
    ('--k', '0', '--k 0 must be at least 1'),
    ('--k_choices', '0', '--k_choices 0 must be at least 1'),
    ('--feature_dim', '0', '--feature_dim 0 must be at least 1'),
    ('--ddim_n_step', '0', r'--ddim_n_step 0 must lie in \[1, --n_timesteps 1000\]'),
    ('--ddim_n_step', '1001', r'--ddim_n_step 1001 must lie in \[1'),
    ('--n_timesteps', '0', '--n_timesteps 0 must be at least 1'),
    ('--eval_every', '0', '--eval_every 0 must be at least 1'),
    ('--checkpoint_every', '0', '--checkpoint_every 0 must be at least 1'),
    ('--lr', 'nan', '--lr nan must be a finite number above 0'),
    ('--lr', '-0.001', '--lr -0.001 must be a finite number above 0'),
    ('--lr', '1e300', "--lr 1e\\+300 must be at most 3.403e\\+38, float32's largest"),  # a traceback in Adam
    ('--lr_horizon', '-5', r'--lr_horizon -5 must be a finite number above 0 \(or 0: --nepoch\)'),
    ('--grad_clip', '0', '--grad_clip 0.0 must be a finite number above 0'),
    ('--ema_decay', '1', r'--ema_decay 1.0 must lie in \[0, 1\) \(0: no average\)'),
    ('--ema_decay', '-0.5', r'--ema_decay -0.5 must lie in \[0, 1\)'),
    ('--n_samples', '-1', '--n_samples -1 must not be negative'),
    ('--n_samples', '100000000000', r'--n_samples 100000000000 must be at most 10000 \(frequencies to 1/10000'),
    ('--n_layers', '100000', r'--n_layers 100000 must be at most 64 \(far past'),  # 20 GB, then killed
    ('--feature_dim', '10000000', r'--feature_dim 10000000 must be at most 16384 \(far past'),
    ('--seed', '-3', '--seed -3 must not be negative'),
    ('--noise_seed', '-1', '--noise_seed -1 must not be negative'),
    ('--seed', '4294967296', '--seed 4294967296 must be at most 4294967295'),
    ('--device', 'gpu', "--device 'gpu' is not a device"),
    ('--nepoch', '0', '--nepoch 0 must be at least 1'),
    ('--out_dir', '', r"--out_dir '' names no folder; give a path \(\. for this folder\)"),  # had run in the cwd
    ('--cache_dir', '', "--cache_dir '' names no folder"),
    ('--noise_type', 'digits-U-1.5', r'the U noise rate 1.5 in --noise_type digits-U-1.5 is out of range: rates lie in \[0, 1\]'),
    ('--noise_type', 'digits-U-0.3_A_-0.2', 'the A noise rate -0.2 .* is out of range'),
    ('--run_name', '../elsewhere', "--run_name '../elsewhere' must be a plain folder name inside --out_dir"),
    ('--n_layers', '1', r'--n_layers 1 must be at least 2 \(the x_e gate sits after the first\)'),
    # the digits' diffusion encoder has no ImageNet backbone: its weights flag would be ignored
    ('--diff_encoder_weights', 'random', r'--diff_encoder_weights applies to the \*_l diffusion encoders only'),
    ('--diff_backbone', 'tuned', r'--diff_backbone applies to the \*_l diffusion encoders only'),
    # the digits' f_p is raw pixels: an encoder's file or model would be ignored
    ('--CLIP_type', 'ViT-B/32', '--CLIP_type applies to --fp_encoder CLIP only, not raw; drop it'),
    ('--fp_checkpoint', 'x.pt', '--fp_checkpoint applies to --fp_encoder SimCLR / classifier / CC / features / timm'),
    ('--fp_model', 'resnet50', '--fp_model applies to --fp_encoder timm / open_clip only, not raw'),
])
def test_bad_flags_are_refused_before_data_is_read(tmp_path, flag, value, message):
    with pytest.raises(SetupError, match=message):
        run(cfg_for(tmp_path, flag, value), never_read)
    assert not os.listdir(tmp_path)


def test_k_beside_k_choices_is_refused_rather_than_ignored(tmp_path):
    with pytest.raises(SetupError, match=r"--k applies only without --k_choices \(they choose the run's k among "
                                         r"1 10\); drop one of them"):
        run(cfg_for(tmp_path, '--k', '5', '--k_choices', '1', '10'), never_read)
    assert not os.listdir(tmp_path)
    assert demo_digits.config(['--k_choices', '1', '10']).k_choices == [1, 10]  # k's default is no matter
    # without retrieval no k is used: a k given, or chosen (and written into the summary), was ignored
    for flags, named in ((['--k', '5'], '--k'), (['--k_choices', '1', '5', '--k_select', 'model'], '--k_choices')):
        with pytest.raises(SetupError, match=f"{named} applies only where the neighbours' labels are candidates "
                                             f"\\(--candidates own trains on each image's own noisy label alone\\)"):
            run(cfg_for(tmp_path, '--candidates', 'own', *flags), never_read)
    assert not os.listdir(tmp_path)


def test_a_cache_dir_a_file_stands_in_the_way_of_is_refused_before_work(tmp_path):
    (tmp_path / 'a_file').write_text('mine\n')
    with pytest.raises(SetupError, match=f'--cache_dir {tmp_path}/a_file/cache: {tmp_path}/a_file is a file, '
                                         f'not a folder; choose another --cache_dir'):
        run(cfg_for(tmp_path, '--cache_dir', str(tmp_path / 'a_file' / 'cache')), never_read)
    assert os.listdir(tmp_path) == ['a_file']


def test_a_noise_seed_for_a_noise_read_from_a_file_is_refused_before_work(tmp_path, digits):
    small = subset(digits, 200, 50)
    np.save(tmp_path / 'mine.npy', small.train_clean.numpy())
    for noise in (str(tmp_path / 'mine.npy'), 'digits-clean'):
        with pytest.raises(SetupError, match=f'--noise_seed 3 draws generated noise, and --noise_type {noise} is '
                                             f'read as it is'):
            run(cfg_for(tmp_path, '--noise_type', noise, '--noise_seed', '3'), lambda c: small)
    assert sorted(os.listdir(tmp_path)) == ['mine.npy']
    summary, _ = run(cfg_for(tmp_path, '--noise_seed', '3', '--nepoch', '1', '--n_samples', '0'), lambda c: small)
    assert summary['epochs'] == 1  # digits-U-0.4 is drawn here, with that seed


def test_val_fraction_beside_val_is_refused():
    import train_ImageFolder
    with pytest.raises(SetupError, match='--val_fraction applies only without --val'):
        train_ImageFolder.config(['--train', 'train', '--val', 'val', '--val_fraction', '0.2'])
    assert train_ImageFolder.config(['--train', 'train', '--val_fraction', '0.2']).val_fraction == 0.2


@pytest.mark.parametrize('noise', ['cifar10n-worse', 'cifar100-U-0.4', 'cifar10-1-0.35_U_0.3'])
def test_a_noise_named_for_another_dataset_is_refused_before_work(tmp_path, digits, noise):
    with pytest.raises(SetupError, match=f'--noise_type {noise} is a noise of cifar10.*, and this run trains on '
                                         f'digits: name a digits noise'):
        run(cfg_for(tmp_path, '--noise_type', noise), lambda c: digits)
    assert not os.listdir(tmp_path)


def test_a_refusal_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(demo(tmp_path, '--k', '0'), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: --k 0 must be at least 1'
    assert not os.listdir(tmp_path)
    result = subprocess.run(demo(tmp_path, '--k', '0', '--debug'), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and 'Traceback' in result.stderr
    assert result.stderr.strip().splitlines()[-1] == 'error: --k 0 must be at least 1'



@pytest.mark.parametrize('command', [['train_CIFAR.py', '--k', 'x'], ['predict.py'], ['pretrain_SimCLR.py', '--bogus'],
                                     ['-m', 'noisy_label.fetch', '--inputs_dir']])
def test_a_usage_error_is_one_line_and_exit_2(command):
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count('\n') == 1, result.stderr
    assert result.stderr.startswith('error: ') and result.stderr.endswith('; --help lists the flags\n')


@pytest.mark.parametrize('command', [['train_CIFAR.py', '--nepoc', '5'], ['-m', 'noisy_label.make_noise', 'pmd',
                                                                      '--rat', '0.3']])
def test_a_flag_is_matched_by_its_whole_name_not_a_prefix(command):
    """argparse's default takes --nepoc for --nepoch: a typo would run, and a command recorded today would
    change meaning once a flag sharing its prefix is added."""
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f'error: unrecognized arguments: {command[-2]} {command[-1]}; --help lists the flags\n'


@pytest.mark.parametrize('error', [
    NoiseError('noise file x.npy is empty: save the labels with numpy.save'),
    DatasetMissing('CIFAR folder d is incomplete'),
    EncoderError('unknown --CLIP_type'),
    CorruptFile('checkpoint a.pt is corrupt or truncated'),
    NonFiniteLoss('the loss became non-finite'),
    OSError(errno.ENOSPC, 'No space left on device', '/data/runs/r/last.pt'),
    OSError(errno.EROFS, 'Read-only file system', '/data/runs'),
    torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB\nmore'),
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 400000000000 bytes. Error code 12 (Cannot allocate memory)"),  # a width of 10^8 on the CPU
    MemoryError(),
])
def test_every_known_refusal_is_one_line_and_exit_2(error, capsys):
    def main(argv):
        raise error
    with pytest.raises(SystemExit) as stopped:
        run_cli(main, [])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err
    if isinstance(error, OSError) and error.errno:
        assert os.strerror(error.errno).split()[0].lower() in err.lower() and error.filename in err


def test_an_unknown_error_keeps_its_traceback():
    def main(argv):
        raise ZeroDivisionError('a bug')
    with pytest.raises(ZeroDivisionError):
        run_cli(main, [])


def test_disk_full_names_the_folder_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import utils.storage.saving
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, 'No space left on device')
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
    monkeypatch.setattr(utils.storage.saving.os, 'fdopen', lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(CannotWrite, match=f'no space left on device writing {tmp_path / "x.pt"}: free space .* '
                                          f'in {tmp_path}'):
        save_torch({'w': torch.zeros(10000)}, str(tmp_path / 'x.pt'))
    assert os.listdir(tmp_path) == []


def test_dataset_flag_names_the_dataset_of_any_noise_file(tmp_path, monkeypatch):
    import train_CIFAR
    write_cifar10(str(tmp_path / 'data'))
    monkeypatch.setattr(train_CIFAR, 'load_cifar', functools.partial(load_cifar, n_train=150))  # 200 images
    np.save(tmp_path / 'my_noise.npy', np.zeros(150, np.int64))  # a noise file must exist to be named
    flags = ['--data_root', str(tmp_path / 'data'), '--noise_type', str(tmp_path / 'my_noise.npy')]
    splits = train_CIFAR.load_splits(train_CIFAR.config([*flags, '--dataset', 'cifar10']))
    assert splits.name == 'cifar10' and splits.n_class == 10
    with pytest.raises(SetupError, match="unknown CIFAR dataset 'my_noise.npy'.*pass --dataset cifar10"):
        train_CIFAR.load_splits(train_CIFAR.config(flags))


@pytest.mark.parametrize('split', ['val', 'test'])
def test_out_of_range_evaluation_labels_are_refused(tmp_path, digits, split):
    small = subset(digits, 200, 50)
    labels = small.labels(split).clone()
    labels[3] = 12
    setattr(small, f'{split}_labels', labels)
    with pytest.raises(NoiseError, match=rf'{small.name} {split} labels: labels must lie in \[0, 9\], found range'):
        run(cfg_for(tmp_path), lambda c: small)
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'cache').exists()


def test_whole_float_labels_are_read_and_a_huge_one_is_named_as_it_is():
    from utils.data.noise import check_labels
    assert check_labels(np.array([0., 1., 2.]), 3, 3, 'f').tolist() == [0, 1, 2]
    with pytest.raises(NoiseError, match=r'f: labels must lie in \[0, 2\], found range \[0.0, 1e\+300\]'):
        check_labels(np.array([0., 1., 1e300]), 3, 3, 'f')


def test_out_of_range_file_dataset_labels_are_refused():
    from utils.data.splits import FileSplits
    from utils.prepare import check_split_labels
    splits = FileSplits('clothing1m', 14, ['a', 'b'], np.array([0, 14]), ['c'], np.array([1]), ['d'], np.array([2]))
    with pytest.raises(NoiseError, match=r'clothing1m train labels: labels must lie in \[0, 13\]'):
        check_split_labels(splits)


@pytest.mark.parametrize('content, says', [
    (b'', 'is empty'),
    (b'1 2 3\n', 'is not a .npy array'),
    ('npz', 'is a .npz archive'),
])
def test_noise_file_that_is_not_an_npy_array_is_named_with_the_fix(tmp_path, digits, content, says):
    path = tmp_path / 'my_noise.npy'
    if content == 'npz':
        np.savez(tmp_path / 'labels.npz', labels=np.zeros(1197, np.int64))
        os.rename(tmp_path / 'labels.npz', path)
    else:
        path.write_bytes(content)
    with pytest.raises(NoiseError, match=f'{path} {says}.*: save the labels with numpy.save') as refused:
        run(cfg_for(tmp_path, '--noise_type', str(path)), lambda c: digits)
    assert 'allow_pickle' not in str(refused.value)
    assert not (tmp_path / 'runs').exists()


# ---- runs that never mix -----------------------------------------------------------------------------

def test_a_second_run_with_the_same_name_is_refused_while_the_first_holds_it(tmp_path):
    from utils.runs.folders import RunClaim
    run_dir = tmp_path / 'runs' / 'r'
    claim = RunClaim(str(run_dir), fresh=True)  # this process is the first run
    try:
        result = subprocess.run(demo(tmp_path, '--nepoch', '1'), cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2
        assert result.stderr.strip() == f'error: {run_dir} is in use by another run right now; wait for it to ' \
                                         f'finish, or choose another --run_name'
        assert os.listdir(run_dir) == ['.lock']
    finally:
        claim.release()
    assert not (tmp_path / 'runs').exists()  # the claim made the folder and nothing was written: gone


def test_read_only_out_dir_and_cache_dir_are_refused_before_work(tmp_path, monkeypatch):
    import utils.runs.folders
    monkeypatch.setattr(utils.runs.folders.os, 'access', lambda path, mode: False)
    with pytest.raises(SetupError, match=f'--cache_dir {tmp_path / "cache"} is not writable'):
        run(cfg_for(tmp_path), never_read)
    (tmp_path / 'cache').mkdir()
    monkeypatch.setattr(utils.runs.folders.os, 'access', lambda path, mode: path != str(tmp_path))
    with pytest.raises(SetupError, match=f'--out_dir {tmp_path / "runs" / "r"} is not writable'):
        run(cfg_for(tmp_path), never_read)
    assert os.listdir(tmp_path) == ['cache']
    # a run to go on with, or to predict with, is not chosen anew ("choose another the run folder", before)
    from utils.runs.folders import check_writable
    for named in ('--resume', 'the run folder'):
        with pytest.raises(SetupError, match=f'{named} {tmp_path} is not writable \\(.*\\); make it writable, or go '
                                             f'on with a writable copy of the run$'):
            check_writable(str(tmp_path), named)


def test_non_finite_loss_in_the_first_epoch_claims_no_checkpoint(tmp_path, digits, monkeypatch):
    original = Trainer.train_step
    monkeypatch.setattr(Trainer, 'train_step', lambda self, idx, *decoded: original(self, idx, *decoded) * float('nan'))
    with pytest.raises(NonFiniteLoss, match='no checkpoint had been written yet') as stopped:
        run(cfg_for(tmp_path, '--nepoch', '2'), lambda c: subset(digits, 200, 50))
    assert 'last.pt' not in str(stopped.value)


# ---- resume that refuses what changed ------------------------------------------------------------------

SHORT = ['--nepoch', '8', '--warmup_epochs', '2', '--eval_every', '2', '--lr_horizon', '8', '--n_samples', '2']


def resume(run_dir, *flags):
    return demo_digits.config(['--resume', str(run_dir), *flags])


@pytest.mark.parametrize('epoch', [4, 0])  # 0: no epoch finished yet, the run's last.pt holds a partial one alone
def test_sigterm_stops_after_the_step_and_resume_equals_an_uninterrupted_run(tmp_path, digits, monkeypatch, epoch):
    small = subset(digits, 300, 100)  # 6 steps an epoch
    straight, _ = run(cfg_for(tmp_path / 'a', *SHORT), lambda c: small)
    original = Trainer.train_step
    steps = []

    def signalled(self, idx, *decoded):
        steps.append(1)
        if len(steps) == epoch * 6 + 3:  # step 3 (1-based) of the epoch: the step finishes, then the run stops
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, idx, *decoded)
    monkeypatch.setattr(Trainer, 'train_step', signalled)
    run_dir = tmp_path / 'b' / 'runs' / 'r'
    with pytest.raises(Interrupted, match=f'SIGTERM at epoch {epoch}, step 3 of 6; .*last.pt holds it. Continue with '
                                          f'--resume {run_dir}'):
        run(cfg_for(tmp_path / 'b', *SHORT), lambda c: small)
    saved = load_torch(str(run_dir / 'last.pt'))
    assert saved['epoch'] == epoch - 1 and saved['partial_epoch']['steps_done'] == 3 and len(steps) == epoch * 6 + 3
    assert not (run_dir / 'summary.json').exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(Trainer, 'train_step', original)
    resumed, _ = run(resume(run_dir), lambda c: small)
    for key in ('best_val_acc', 'best_epoch', 'test_acc', 'denoised_label_accuracy'):
        assert resumed[key] == straight[key], key
    assert np.array_equal(np.load(run_dir / 'train_probs.npy'),
                          np.load(tmp_path / 'a' / 'runs' / 'r' / 'train_probs.npy'))


def test_cli_interruption_exits_non_zero_and_says_how_to_resume(capsys):
    def main(argv):
        raise Interrupted('SIGTERM after epoch 3; runs/r/last.pt holds it. Continue with --resume runs/r',
                          signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        run_cli(main, [])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert '--resume runs/r' in capsys.readouterr().err



def test_sigterm_before_training_unwinds_as_ctrl_c_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    """SIGTERM while the inputs are prepared (features extracted, say): its default action had ended the
    process at once, without a line, leaving a run folder holding only its lock."""
    from utils import engine
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a script starts (a test runner may set one)
    try:
        def terminated(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError('SIGTERM must unwind the command')
        monkeypatch.setattr(engine, 'prepare', terminated)
        argv = ['--out_dir', str(tmp_path / 'runs'), '--cache_dir', str(tmp_path / 'cache'), '--run_name', 'r']
        with pytest.raises(SystemExit) as stopped:
            run_cli(demo_digits.main, argv)
        assert stopped.value.code == 128 + signal.SIGTERM
        assert capsys.readouterr().err.splitlines()[-1] == 'stopped: interrupted (SIGTERM)'
        assert not (tmp_path / 'runs' / 'r').exists()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command's own, given back
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_second_signal_or_a_plain_ctrl_c_stops_in_one_line(capsys):
    def twice(argv):
        with StopSignals():
            os.kill(os.getpid(), signal.SIGTERM)  # the first: the step would finish
            os.kill(os.getpid(), signal.SIGTERM)  # the second: at once
            raise AssertionError('a second signal must stop the run')
    with pytest.raises(SystemExit) as stopped:
        run_cli(twice, [])
    said = capsys.readouterr().err.splitlines()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert said[-1] == 'stopped: second SIGTERM: stopped at once; the last checkpoint written is kept'

    def ctrl_c(argv):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as stopped:
        run_cli(ctrl_c, [])
    assert stopped.value.code == 128 + signal.SIGINT
    assert capsys.readouterr().err == 'stopped: interrupted (SIGINT)\n'


@pytest.fixture
def finished(tmp_path, digits):
    """A finished 2-epoch run on a small digits set, its noise from a file."""
    small = subset(digits, 200, 50)
    noise = tmp_path / 'noise.npy'
    np.save(noise, small.train_clean.numpy())
    _, run_dir = run(cfg_for(tmp_path, '--noise_type', str(noise), '--nepoch', '2', '--warmup_epochs', '1',
                             '--n_samples', '0'), lambda c: small)
    return small, noise, run_dir


def test_resume_refuses_changed_flags_with_a_list_and_allows_the_rest(finished):
    small, _, run_dir = finished
    with pytest.raises(SetupError, match=r"cannot change --feature_dim 64 \(the run has 128\), --lr 0.5 "
                                         r"\(the run has 0.001\): drop those flags"):
        run(resume(run_dir, '--lr', '0.5', '--feature_dim', '64', '--device', 'cpu'), lambda c: small)
    out_dir = os.path.dirname(run_dir) + '/'  # the same folder, typed with a slash: no other flag
    summary, _ = run(resume(run_dir, '--nepoch', '3', '--eval_batch_size', '7', '--device', 'cpu',
                            '--out_dir', out_dir), lambda c: small)
    assert summary['epochs'] == 3 and load_torch(os.path.join(run_dir, 'last.pt'))['epoch'] == 2


def test_resume_keeps_the_evaluation_batch_where_batch_statistics_decide_predictions(tmp_path, digits):
    small = subset(digits, 200, 50)
    _, run_dir = run(cfg_for(tmp_path, '--nepoch', '1', '--n_samples', '0', '--eval_bn', 'batch'), lambda c: small)
    with pytest.raises(SetupError, match=r'cannot change --eval_batch_size 7'):
        run(resume(run_dir, '--nepoch', '2', '--eval_batch_size', '7', '--device', 'cpu'), lambda c: small)


def test_resume_refuses_changed_inputs_naming_them(finished):
    small, noise, run_dir = finished
    labels = small.train_clean.numpy().copy()
    labels[:10] = (labels[:10] + 1) % 10
    np.save(noise, labels)
    with pytest.raises(SetupError, match='the training labels differ from those the run was made with'):
        run(resume(run_dir), lambda c: small)
    np.save(noise, small.train_clean.numpy())
    other = subset(small, 200, 40)
    with pytest.raises(SetupError, match='the dataset differ'):
        run(resume(run_dir), lambda c: other)


DAMAGED_CHECKPOINTS = [
    (lambda c: c.pop('epoch'), 'epoch is missing'),
    (lambda c: c.update(epoch='1'), "epoch is str '1', not an epoch"),
    (lambda c: c.pop('data_info'), 'data_info is missing'),
    (lambda c: c.update(model=[1]), 'model is list'),
    (lambda c: c.update(best=[1]), 'best is list'),
    (lambda c: c.update(best={}), "best is dict '{}', not the best evaluation"),
    (lambda c: c.update(history=[{'foo': 1}]), 'history is list "[{\'foo\': 1}]", not a list of evaluations'),
    (lambda c: c['data_info'].update(n_class='10'), 'data_info.n_class is str'),
    (lambda c: c['config'].update(seed='123'), "config: --seed '123' is not a value of the flag"),
    (lambda c: c['config'].update(k=2.5), 'config: --k 2.5 is not a value of the flag'),
    (lambda c: c['config'].update(diff_encoder=3), 'config: --diff_encoder 3 is not a value of the flag'),
    (lambda c: c['config'].update(diff_encoder='resnet19'), "config: --diff_encoder 'resnet19' is not a value"),
    (lambda c: c['config'].update(k=0), 'config: --k 0 must be at least 1'),
    (lambda c: c.pop('config'), 'config is missing'),
    (lambda c: c.update(config=[1]), 'config is list'),
    (lambda c: c['config'].update(lr=None), 'config: --lr None is not a value of the flag'),
    (lambda c: c['config'].update(ddim_n_step=None), 'config: --ddim_n_step None is not a value of the flag'),
    (lambda c: c['config'].update(device=None), 'config: --device None is not a value of the flag'),
    # fields read where present: a traceback, before
    (lambda c: c.update(partial_epoch='junk'), "partial_epoch is str 'junk', not None or the steps of an epoch"),
    (lambda c: c.update(partial_epoch={'epoch': 6}), 'partial_epoch is dict'),
    (lambda c: c.update(partial_epoch={'epoch': 1, 'steps_done': 1, 'of': 4, 'loss_sum': 0.5, 'rng': None}),
     'partial_epoch is dict'),
    (lambda c: c.update(eval_bn_shares=0), "eval_bn_shares is int '0', not a number of parts"),
    (lambda c: c.update(epoch_times=[1, 2]), "epoch_times is list '[1, 2]', not a list of epochs' seconds"),
    (lambda c: c.update(timed_epochs='x'), "timed_epochs is str 'x', not a number of epochs"),
    (lambda c: c['data_info'].update(class_names=5), "data_info.class_names is int '5', not a list of names"),
]


def damage_checkpoints(run_dir, damage, ema=True):
    """`damage` done to the run's last.pt and best.pt; ema False: without the average kept beside the weights
    (predict.py then evaluates the damaged weights themselves)."""
    for name in ('last.pt', 'best.pt'):
        ckpt = load_torch(os.path.join(run_dir, name))
        damage(ckpt)
        ckpt['ema'] = ckpt['ema'] if ema else None
        save_torch(ckpt, os.path.join(run_dir, name))


@pytest.mark.parametrize('damage, says', DAMAGED_CHECKPOINTS, ids=[says for _, says in DAMAGED_CHECKPOINTS])
def test_a_damaged_checkpoint_is_refused_naming_the_field_on_resume_and_predict(finished, damage, says, capsys):
    small, _, run_dir = finished
    damage_checkpoints(run_dir, damage)
    with pytest.raises(SetupError, match=f'last.pt is damaged or was edited \\({re.escape(says)}'):
        run(resume(run_dir, '--nepoch', '3'), lambda c: small)
    with pytest.raises(SystemExit) as exited:
        run_cli(predict.main, [run_dir, '--script', 'demo_digits.py'])
    assert exited.value.code == 2 and 'best.pt is damaged or was edited' in capsys.readouterr().err


def test_a_damaged_best_checkpoint_is_refused_before_a_resume_trains(finished):
    """best.pt is read at the end, for the outputs: a damaged one was found after the training, once the resume
    had removed the finished run's outputs, and every later resume failed the same way."""
    small, _, run_dir = finished
    best = os.path.join(run_dir, 'best.pt')
    with open(best, 'r+b') as f:
        f.truncate(100)
    os.utime(best, (1, 1))  # older than last.pt: not read as a newer best either
    files = {name: open(os.path.join(run_dir, name), 'rb').read() for name in sorted(os.listdir(run_dir))
             if os.path.isfile(os.path.join(run_dir, name))}
    with pytest.raises(CorruptFile, match=f'checkpoint {best} is corrupt or truncated'):
        run(resume(run_dir, '--nepoch', '3'), lambda c: small)
    assert {name: open(os.path.join(run_dir, name), 'rb').read() for name in sorted(os.listdir(run_dir))
            if os.path.isfile(os.path.join(run_dir, name))} == files


NOT_FITTING = [
    (lambda c: c['model'].update({k: v[:1] for k, v in list(c['model'].items())[:1]}), 'size mismatch'),
    (lambda c: c['model'].pop(next(iter(c['model']))), 'Missing key'),
    (lambda c: c['model'].update(extra=torch.zeros(1)), 'Unexpected key'),
    (lambda c: c['optimizer'].update(param_groups=[]), 'parameter groups'),
]


@pytest.mark.parametrize('damage, says', NOT_FITTING, ids=[says for _, says in NOT_FITTING])
def test_weights_that_do_not_fit_the_networks_are_refused_in_one_line(finished, damage, says, capsys):
    """Each field of the right kind, but weights of another shape or name: a traceback, before."""
    small, _, run_dir = finished
    damage_checkpoints(run_dir, damage, ema=False)
    with pytest.raises(SetupError, match=f'last.pt does not fit the networks its configuration builds \\(.*'
                                         f'{says}.*\\); it is damaged or was edited') as refused:
        run(resume(run_dir, '--nepoch', '3'), lambda c: small)
    assert '\n' not in str(refused.value)
    with pytest.raises(SystemExit) as exited:
        run_cli(predict.main, [run_dir, '--script', 'demo_digits.py'])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count('\n') == 1
    assert says == 'parameter groups' or 'best.pt does not fit the networks' in err


def test_predict_and_resume_name_what_they_were_given_instead_of_a_run(tmp_path, capsys):
    (tmp_path / 'a_file').write_text('')
    (tmp_path / 'simclr').mkdir()
    torch.save({}, tmp_path / 'simclr' / 'state.pt')
    for given, says in (('absent', 'is absent, not a run folder'), ('a_file', 'is a file, not a run folder'),
                        ('simclr', 'holds a SimCLR pre-training run (state.pt), not a training run')):
        with pytest.raises(SystemExit) as exited:
            run_cli(predict.main, [str(tmp_path / given), '--script', 'demo_digits.py'])
        assert exited.value.code == 2 and capsys.readouterr().err == \
            f'error: {tmp_path / given} {says}; name the folder of a training run\n'
        with pytest.raises(SetupError, match=re.escape(f'{tmp_path / given} {says}')):
            run(resume(tmp_path / given), never_read)


def test_predict_with_another_script_says_how_to_predict(finished):
    _, _, run_dir = finished
    with pytest.raises(SetupError, match=re.escape(f'the run was made by demo_digits.py, not train_CIFAR.py; run that '
                                                   f'script instead (python predict.py {run_dir} --script '
                                                   f'demo_digits.py, or without --script)')):
        predict.main([run_dir, '--script', 'train_CIFAR.py'])


def test_a_run_recorded_before_scripts_were_recorded_resumes_despite_its_removed_flags(finished):
    """A format-2 run names no script: the flags only another script has tell one apart, and the flags
    it recorded that no script has any more (--fp_features, --predict...) are not among them."""
    small, _, run_dir = finished
    last = os.path.join(run_dir, 'last.pt')
    ckpt = load_torch(last)
    del ckpt['config']['script']
    ckpt['format_version'] = 2
    removed = {'fp_features': None, 'predict': False, 'predict_split': 'test', 'predict_folder': None}
    ckpt['config'].update(removed)
    ckpt['config']['script_flags'] = sorted([*ckpt['config']['script_flags'], *removed])
    save_torch(ckpt, last)
    summary, _ = run(resume(run_dir, '--nepoch', '3'), lambda c: small)
    assert summary['epochs'] == 3
    ckpt = load_torch(last)  # and one with a flag that only another script has is still refused
    del ckpt['config']['script']
    ckpt['config']['script_flags'] = sorted([*ckpt['config']['script_flags'], 'val_fraction'])
    save_torch(ckpt, last)
    with pytest.raises(SetupError, match=f'--resume {re.escape(run_dir)}: the run was made by another script '
                                         f'\\(one with the flags --val_fraction\\); run the script that made it'):
        run(resume(run_dir, '--nepoch', '4'), never_read)


def test_a_resume_refuses_a_run_folder_holding_files_no_run_wrote(finished):
    """A user's file in the run folder (under an output's name it would be replaced when the run
    finishes): refused before any work, the folder as it was; moved away, the run goes on."""
    small, _, run_dir = finished
    with open(os.path.join(run_dir, 'train_probs.npy.mine'), 'w') as f:
        f.write('my notes\n')
    os.remove(os.path.join(run_dir, 'summary.json'))  # as if stopped before it finished...
    with open(os.path.join(run_dir, 'summary.json'), 'w') as f:  # ...and the user wrote one
        f.write('{"mine": 1}\n')
    record = json.load(open(os.path.join(run_dir, '.written.json')))
    record['files'].remove('summary.json')
    json.dump(record, open(os.path.join(run_dir, '.written.json'), 'w'))
    before = {name: open(os.path.join(run_dir, name), 'rb').read() for name in os.listdir(run_dir)}
    with pytest.raises(SetupError, match=re.escape(f'{run_dir} holds files no run of this package recorded writing '
                                                   f'there (summary.json, train_probs.npy.mine), and --resume')):
        run(resume(run_dir, '--nepoch', '3'), never_read)
    assert {name: open(os.path.join(run_dir, name), 'rb').read() for name in os.listdir(run_dir)} == before
    for name in ('summary.json', 'train_probs.npy.mine'):
        os.remove(os.path.join(run_dir, name))
    summary, _ = run(resume(run_dir, '--nepoch', '3'), lambda c: small)
    assert summary['epochs'] == 3


def test_a_resume_may_name_its_noise_file_by_another_path_but_not_other_labels(finished, tmp_path):
    """From another folder, or with the file moved, the same labels resume; other labels are refused."""
    small, noise, run_dir = finished
    os.makedirs(tmp_path / 'moved')
    os.rename(noise, tmp_path / 'moved' / 'noise.npy')
    summary, _ = run(resume(run_dir, '--nepoch', '3', '--noise_type', str(tmp_path / 'moved' / 'noise.npy')),
                     lambda c: small)
    assert summary['epochs'] == 3
    other = small.train_clean.numpy().copy()
    other[:5] = (other[:5] + 1) % 10
    np.save(tmp_path / 'other.npy', other)
    with pytest.raises(SetupError, match='the training labels differ from those the run was made with'):
        run(resume(run_dir, '--nepoch', '4', '--noise_type', str(tmp_path / 'other.npy')), lambda c: small)


def test_a_run_made_before_fingerprints_may_not_name_another_noise_file(finished, tmp_path):
    """Without recorded fingerprints nothing would tell other labels: the noise file stays the run's."""
    small, noise, run_dir = finished
    last = os.path.join(run_dir, 'last.pt')
    ckpt = load_torch(last)
    del ckpt['data_info']['input_fingerprints']
    save_torch(ckpt, last)
    np.save(tmp_path / 'other.npy', small.train_clean.numpy())
    with pytest.raises(SetupError, match=re.escape(f"cannot change --noise_type '{tmp_path / 'other.npy'}'")):
        run(resume(run_dir, '--nepoch', '3', '--noise_type', str(tmp_path / 'other.npy')), never_read)


def test_a_run_saved_with_sizes_past_todays_limits_is_not_taken_for_damaged(finished):
    from utils.runs.folders import load_run
    _, _, run_dir = finished
    last = os.path.join(run_dir, 'last.pt')
    ckpt = load_torch(last)
    ckpt['config']['n_samples'] = 20000  # a run made before --n_samples had a limit
    save_torch(ckpt, last)
    assert load_run(run_dir)['config']['n_samples'] == 20000
    with pytest.raises(SetupError, match='--n_samples 20000 must be at most 10000'):  # given now: refused
        run(resume(run_dir, '--nepoch', '3', '--n_samples', '20000'), never_read)


def test_a_run_recorded_with_the_old_cuda_graph_switch_still_resumes(finished):
    small, _, run_dir = finished
    last = os.path.join(run_dir, 'last.pt')
    ckpt = load_torch(last)
    ckpt['config']['cuda_graph'] = False
    save_torch(ckpt, last)
    summary, _ = run(resume(run_dir, '--nepoch', '3'), lambda c: small)
    assert summary['epochs'] == 3


def test_a_damaged_config_json_is_replaced_on_resume(finished):
    small, _, run_dir = finished
    path = os.path.join(run_dir, 'config.json')
    config = json.load(open(path))
    json.dump({**config, 'resumes': 5}, open(path, 'w'))
    run(resume(run_dir, '--nepoch', '3'), lambda c: small)
    assert [r['after_epoch'] for r in json.load(open(path))['resumes']] == [1]


def test_a_flag_added_after_the_run_was_made_takes_its_default(finished):
    small, _, run_dir = finished
    last = os.path.join(run_dir, 'last.pt')
    ckpt = load_torch(last)
    del ckpt['config']['n_samples'], ckpt['config']['checkpoint_every']  # an older package had neither
    save_torch(ckpt, last)
    summary, _ = run(resume(run_dir, '--nepoch', '3'), lambda c: small)
    assert summary['epochs'] == 3


def test_a_run_made_before_the_weight_average_resumes_without_one(finished):
    small, _, run_dir = finished  # the digits demo's improved recipe: today it averages its weights
    last = os.path.join(run_dir, 'last.pt')
    ckpt = load_torch(last)
    assert ckpt['config']['ema_decay'] == 0.999 and ckpt['ema'] is not None
    del ckpt['config']['ema_decay'], ckpt['ema']  # as an older package wrote it
    save_torch(ckpt, last)
    with pytest.raises(SetupError, match=r"cannot change --ema_decay 0.999 \(the run has 0.0\)"):
        run(resume(run_dir, '--ema_decay', '0.999'), lambda c: small)
    run(resume(run_dir, '--nepoch', '3'), lambda c: small)
    resumed = load_torch(last)
    assert resumed['config']['ema_decay'] == 0 and resumed['ema'] is None and resumed['epoch'] == 2


def test_altered_cache_is_detected_by_its_content_hash_and_rebuilt(tmp_path, digits):
    small = subset(digits, 200, 50)
    cfg = cfg_for(tmp_path, '--nepoch', '1', '--n_samples', '0')
    run(cfg, lambda c: small)
    for name in os.listdir(tmp_path / 'cache'):
        blob = load_torch(str(tmp_path / 'cache' / name))
        blob['value'] = blob['value'].flip(0)  # same key, same shape, other values
        save_torch(blob, str(tmp_path / 'cache' / name))
    messages = []
    data = prepare(cfg, small, torch.device('cpu'), log=messages.append)
    assert sum('does not match its content hash' in m for m in messages) == 4
    assert torch.equal(data.features['train'], prepare(cfg, small, torch.device('cpu'), log=print).features['train'])
    # the very bytes cached, read as another dtype or shape: the same bytes, other features
    for name in os.listdir(tmp_path / 'cache'):
        blob = load_torch(str(tmp_path / 'cache' / name))
        value = blob['value']
        blob['value'] = value.view(torch.int32 if value.dtype == torch.float32 else torch.float32) \
            if value.element_size() == 4 else value.reshape(-1)
        save_torch(blob, str(tmp_path / 'cache' / name))
    messages = []
    again = prepare(cfg, small, torch.device('cpu'), log=messages.append)
    assert sum('does not match its content hash' in m for m in messages) == 4
    assert torch.equal(again.features['train'], data.features['train'])
    # a forged file: another dtype of the same values, its hash made to match (its writer can hash it too)
    for name in os.listdir(tmp_path / 'cache'):
        blob = load_torch(str(tmp_path / 'cache' / name))
        blob['value'] = blob['value'].double() if blob['value'].is_floating_point() else blob['value'].int()
        blob['content'] = content_hash(blob['value'])
        save_torch(blob, str(tmp_path / 'cache' / name))
    messages = []
    forged = prepare(cfg, small, torch.device('cpu'), log=messages.append)
    assert sum('does not fit' in m or 'rebuilding' in m for m in messages) == 4, messages
    assert torch.equal(forged.features['train'], data.features['train'])


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='needs /proc')
def test_an_out_dir_in_a_pseudo_file_system_is_refused_before_work(tmp_path):
    """/proc passes a permission check as root (os.access says writable) and no folder can be made there."""
    with pytest.raises(SetupError, match=re.escape('--out_dir /proc/lra-runs/r is not writable (')):
        run(cfg_for(tmp_path, '--out_dir', '/proc/lra-runs'), never_read)
    assert not os.listdir(tmp_path)


def test_a_run_folder_that_cannot_be_made_leaves_no_parent_folder_behind(tmp_path, digits):
    """A --run_name too long for the file system: refused in one line, and the --out_dir folders made on
    the way to it are removed again."""
    with pytest.raises(SetupError, match=r'cannot create the run folder .*\(File name too long\); choose another'):
        run(cfg_for(tmp_path, '--out_dir', str(tmp_path / 'od' / 'o9'), '--run_name', 'a' * 300),
            lambda c: subset(digits, 200, 50))
    assert not (tmp_path / 'od').exists()
