"""Malformed dataset files (CIFAR-N label tables, CIFAR batch folders) and WebVision's --n_class are
refused before any work, in one line that names the file (or flag) and the fix."""
import os
import pickle

import numpy as np
import pytest
import torch
from test_data import write_cifar10, write_cifar100

import train_CIFAR
import train_WebVision
from benchmarks import layouts
from utils.data.cifar import load_cifar
from utils.data.noise import resolve_noisy_labels
from utils.data.webvision import read_webvision
from utils.errors import DatasetMissing, NoiseError, SetupError
from utils.runs.cli import one_line, run_cli
from utils.storage.loading import load_pickle


def refusal_line(exc_info):
    """The line run_cli prints for a refusal: None where it would print a traceback instead."""
    return one_line(exc_info.value)


def cli_refusal(main, argv, capsys):
    """(exit status, stderr) of a script run through run_cli."""
    with pytest.raises(SystemExit) as exited:
        run_cli(main, argv)
    return exited.value.code, capsys.readouterr().err


# ---- CIFAR-N label tables --------------------------------------------------------------------------

def cifar_n(tmp_path, table, noise='cifar10n-worse', n=45000):
    torch.save(table, tmp_path / 'CIFAR-10_human.pt')
    return resolve_noisy_labels(noise, n, None, 10, cifar_n_dirs=[str(tmp_path)], noise_dir=str(tmp_path / 'none'))


@pytest.mark.parametrize('table', [
    {'worse_label': None}, {'worse_label': 'abc'}, {'worse_label': {'a': 1}}, {'worse_label': 7},
    {'worse_label': [[1, 2], [3]]},                        # ragged
    {'worse_label': np.zeros((50000, 2), dtype=np.int64)},  # not 1-D
    {'worse_label': np.arange(100) % 10},                   # shorter than the training set
    {'worse_label': [2 ** 70] * 50000},                     # beyond int64
    {1: np.arange(50000) % 10, 'aggre_label': np.arange(50000) % 10},  # a key that is no label name
    {1: np.arange(50000) % 10, 'worse_label': np.arange(50000) % 10},
    {'worse_label': np.arange(50000) % 12},                 # out of range
    {'worse_label': np.full(50000, 0.5)},
], ids=['none', 'string', 'dict', 'int', 'ragged', '2d', 'short', 'huge', 'int-key', 'int-key-beside', 'range',
        'float'])
def test_malformed_cifar_n_table_is_refused_in_one_line(tmp_path, table):
    with pytest.raises(NoiseError) as refused:
        cifar_n(tmp_path, table)
    line = refusal_line(refused)
    assert line and str(tmp_path / 'CIFAR-10_human.pt') in line and 'fetch it again from the CIFAR-N release' in line


def test_a_well_formed_cifar_n_table_reads_as_before(tmp_path):
    worse = np.random.default_rng(0).integers(0, 10, 50000)
    labels, source = cifar_n(tmp_path, {'worse_label': worse.tolist(), 'clean_label': worse})
    assert labels.dtype == np.int64 and np.array_equal(labels, worse[:45000]) and 'CIFAR-N' in source
    labels, _ = cifar_n(tmp_path, {'worse_label': torch.from_numpy(worse)}, n=150)
    assert np.array_equal(labels, worse[:150])


def test_missing_cifar_n_key_lists_the_keys(tmp_path):
    with pytest.raises(NoiseError, match=r"has no 'worse_label'; keys are \['aggre_label'\]; fetch it again"):
        cifar_n(tmp_path, {'aggre_label': np.arange(50000) % 10})


# ---- CIFAR batch folders -----------------------------------------------------------------------------

def write_meta(root, obj, name='batches.meta', folder='cifar-10-batches-py'):
    path = os.path.join(root, folder, name)
    with open(path, 'wb') as f:
        pickle.dump(obj, f)
    return path


@pytest.mark.parametrize('meta', [['plane'] * 10, 3, {'label_names': 5}, {'label_names': None}],
                         ids=['list', 'int', 'int-names', 'none-names'])
def test_malformed_cifar_meta_is_refused_in_one_line(tmp_path, meta):
    write_cifar10(str(tmp_path))
    path = write_meta(str(tmp_path), meta)
    with pytest.raises(DatasetMissing) as refused:
        load_cifar('cifar10', str(tmp_path), download=False, n_train=150)
    line = refusal_line(refused)
    assert line and f'CIFAR meta {path}' in line and 're-download the dataset' in line


def test_cifar_meta_of_other_counts_still_gives_no_names(tmp_path):
    write_cifar10(str(tmp_path))
    write_meta(str(tmp_path), {'label_names': ['a', 'b']})
    assert load_cifar('cifar10', str(tmp_path), download=False, n_train=150).class_names == []
    write_meta(str(tmp_path), {'num_vis': 3072})
    assert load_cifar('cifar10', str(tmp_path), download=False, n_train=150).class_names == []


def test_short_cifar100_coarse_labels_are_refused(tmp_path):
    write_cifar100(str(tmp_path))
    path = os.path.join(tmp_path, 'cifar-100-python', 'train')
    batch = load_pickle(path, 'CIFAR batch', fix='rewrite it')  # the package's restricted reader
    batch['coarse_labels'] = batch['coarse_labels'][:-5]
    with open(path, 'wb') as f:
        pickle.dump(batch, f)
    with pytest.raises(DatasetMissing) as refused:
        load_cifar('cifar100', str(tmp_path), download=False, n_train=50)
    line = refusal_line(refused)
    assert line and f'{path} holds 60 images but 55 coarse_labels; re-download' in line


def test_cifar_folder_too_small_for_the_split_is_refused_before_work(tmp_path, capsys):
    write_cifar10(str(tmp_path / 'data'), n_per_batch=100)
    runs, cache = tmp_path / 'runs', tmp_path / 'cache'
    code, err = cli_refusal(train_CIFAR.main, [
        '--noise_type', 'cifar10-U-0.4', '--data_root', str(tmp_path / 'data'), '--no-download', '--device', 'cpu',
        '--out_dir', str(runs), '--cache_dir', str(cache)], capsys)
    folder = tmp_path / 'data' / 'cifar-10-batches-py'
    assert code == 2 and err.count('\n') == 1 and 'Traceback' not in err
    assert err.startswith(f'error: cifar10 under {folder} holds 500 training images') and 'more than 45000' in err
    assert not runs.exists() and not (cache.exists() and os.listdir(cache))


def test_empty_cifar_test_batch_is_refused(tmp_path):
    write_cifar10(str(tmp_path))
    with open(tmp_path / 'cifar-10-batches-py' / 'test_batch', 'wb') as f:
        pickle.dump({'data': np.zeros((0, 3072), dtype=np.uint8), 'labels': []}, f)
    with pytest.raises(DatasetMissing, match='holds no test images; re-download'):
        load_cifar('cifar10', str(tmp_path), download=False, n_train=150)


# ---- WebVision --n_class -------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def webvision(tmp_path_factory):
    folder = tmp_path_factory.mktemp('webvision')
    return layouts.webvision(str(folder / 'wv'), str(folder / 'imagenet'))  # classes 0-3 listed


@pytest.mark.parametrize('n_class', [1, 0, -2, 1001])
def test_webvision_n_class_out_of_range_is_refused_with_the_flags(n_class):
    with pytest.raises(SetupError, match=rf'--n_class {n_class}: .*2 <= N <= 1000; pass --n_class 50'):
        train_WebVision.config(['--n_class', str(n_class)])
    with pytest.raises(SetupError, match=rf'--n_class {n_class}:'):
        read_webvision('/nonexistent', '/nonexistent', n_class=n_class)


@pytest.mark.parametrize('n_class', ['1', '0'])
def test_webvision_script_refuses_n_class_before_work(webvision, tmp_path, capsys, n_class):
    root, imagenet = webvision
    code, err = cli_refusal(train_WebVision.main, [
        '--webvision_root', root, '--imagenet_val_root', imagenet, '--n_class', n_class, '--device', 'cpu',
        '--out_dir', str(tmp_path / 'runs'), '--cache_dir', str(tmp_path / 'cache')], capsys)
    assert code == 2 and err.startswith(f'error: --n_class {n_class}: ') and err.count('\n') == 1
    assert not (tmp_path / 'runs').exists()


def test_webvision_n_class_beyond_the_listed_classes_is_refused(webvision):
    root, imagenet = webvision
    path = os.path.join(root, 'info', 'train_filelist_google.txt')
    with pytest.raises(SetupError, match=rf'--n_class 5, but {path} names only 4 classes.*pass --n_class 4'):
        read_webvision(root, imagenet, n_class=5)
    assert read_webvision(root, imagenet, n_class=2).n_class == 2  # the smallest count still reads


def test_a_negative_label_in_a_webvision_list_is_refused_naming_its_line(tmp_path):
    root, imagenet = layouts.webvision(str(tmp_path / 'wv'), str(tmp_path / 'imagenet'))
    path = os.path.join(root, 'info', 'train_filelist_google.txt')
    lines = open(path).read().splitlines()
    lines[2] = lines[2].rsplit(' ', 1)[0] + ' -1'  # kept by `label < n_class`, it indexed no class
    layouts.write(path, lines)
    with pytest.raises(DatasetMissing, match=rf'{path}, line 3: expected "<image path> <class index 0, 1, ...>"'):
        read_webvision(root, imagenet, n_class=2)
    layouts.write(path, ['', *lines])  # a blank line before: the line as an editor numbers it
    with pytest.raises(DatasetMissing, match=rf'{path}, line 4: expected "<image path> <class index 0, 1, ...>"'):
        read_webvision(root, imagenet, n_class=2)
