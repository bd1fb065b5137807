"""Noise files, generated i.i.d. noise and the checks on bad label arrays."""
import re

import numpy as np
import pytest

from utils.data.noise import (asymmetric_map, dataset_of, noise_kind, noise_problem, noise_rate, resolve_noisy_labels,
                              uniform_noise)
from utils.errors import NoiseError, SetupError

CLEAN = np.random.default_rng(0).integers(0, 10, 20000)


def test_uniform_noise_rate_and_targets():
    noisy = uniform_noise(CLEAN, 0.4, 10, np.random.default_rng(1))
    assert noise_rate(noisy, CLEAN) == pytest.approx(0.4, abs=0.015)
    flipped = noisy != CLEAN
    # flipped labels land on the other classes evenly
    moved = (noisy[flipped] - CLEAN[flipped]) % 10
    counts = np.bincount(moved, minlength=10)[1:] / flipped.sum()
    assert counts == pytest.approx(np.full(9, 1 / 9), abs=0.02)


def test_cifar10_asymmetric_pairs():
    mapping = asymmetric_map('cifar10', 10)
    assert {9: 1, 2: 0, 3: 5, 5: 3, 4: 7} == {i: int(mapping[i]) for i in range(10) if mapping[i] != i}
    labels, _ = resolve_noisy_labels('cifar10-A-0.3', len(CLEAN), CLEAN, 10, seed=0)
    for src, dst in {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}.items():
        rows = CLEAN == src
        assert np.mean(labels[rows] == dst) == pytest.approx(0.3, abs=0.045)
        assert set(np.unique(labels[rows])) == {src, dst}
    untouched = np.isin(CLEAN, [0, 1, 6, 7, 8])
    assert np.array_equal(labels[untouched], CLEAN[untouched])


def test_cifar100_asymmetric_stays_in_superclass():
    coarse = np.arange(100) % 20  # 20 super-classes of 5
    mapping = asymmetric_map('cifar100', 100, coarse)
    assert np.all(coarse[mapping] == coarse) and np.all(mapping != np.arange(100))
    assert len(set(mapping.tolist())) == 100  # a cycle within each super-class


def test_generated_names_are_seeded_and_hybrids_layer_on_top():
    a, _ = resolve_noisy_labels('cifar10-U-0.35', len(CLEAN), CLEAN, 10, seed=3)
    b, _ = resolve_noisy_labels('cifar10-U-0.35', len(CLEAN), CLEAN, 10, seed=3)
    c, _ = resolve_noisy_labels('cifar10-U-0.35', len(CLEAN), CLEAN, 10, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    hybrid, source = resolve_noisy_labels('cifar10-U-0.35_U_0.3', len(CLEAN), CLEAN, 10, seed=3)
    # 35% then 30% more of the rest → about 1 − 0.65·0.7·... each layer flips 30% of labels
    assert noise_rate(hybrid, a) == pytest.approx(0.3, abs=0.015)
    assert 'uniform 0.3 on' in source


def test_noise_file_by_name_and_path(tmp_path):
    labels = (CLEAN[:100] + 1) % 10
    np.save(tmp_path / 'cifar10-x.npy', labels)
    got, _ = resolve_noisy_labels('cifar10-x', 100, CLEAN[:100], 10, noise_dir=str(tmp_path))
    assert np.array_equal(got, labels)
    got, _ = resolve_noisy_labels(str(tmp_path / 'cifar10-x.npy'), 100, CLEAN[:100], 10)
    assert np.array_equal(got, labels)


@pytest.mark.parametrize('bad, message', [
    (np.zeros(99, np.int64), 'expected 100 labels'),
    (np.full(100, 10), r'must lie in \[0, 9\]'),
    (np.full(100, -1), r'must lie in \[0, 9\]'),
    (np.full(100, 0.5), 'must be integers'),
])
def test_bad_noise_files_are_refused(tmp_path, bad, message):
    np.save(tmp_path / 'bad.npy', bad)
    with pytest.raises(NoiseError, match=message):
        resolve_noisy_labels(str(tmp_path / 'bad.npy'), 100, CLEAN[:100], 10)


def test_unknown_noise_name_says_where_it_looked(tmp_path):
    with pytest.raises(NoiseError, match='unknown --noise_type .*noisy_label.fetch --help.*make_noise pmd'):
        resolve_noisy_labels('cifar10-1-0.33', 100, CLEAN[:100], 10, noise_dir=str(tmp_path))


def test_dataset_of_names():
    assert dataset_of('cifar10-1-0.35_U_0.3') == 'cifar10'
    assert dataset_of('cifar100-2-0.35') == 'cifar100'
    assert dataset_of('cifar10n-worse') == 'cifar10'
    assert dataset_of('cifar100n-noisy') == 'cifar100'


@pytest.mark.parametrize('noise_type, message', [
    ('cifar10-1-0.33', r"unknown --noise_type 'cifar10-1-0.33'"),
    ('cifar10-1-0.35-s9_U_0.3', r"cifar10-1-0.35-s9_U_0.3 adds noise to cifar10-1-0.35-s9, and unknown"),
    ('cifar10-1-0.35-s9_U_0.3_A_0.2', r"adds noise to cifar10-1-0.35-s9_U_0.3, and cifar10-1-0.35-s9_U_0.3 adds"),
    ('cifar10n-worse', r'needs CIFAR-10_human.pt'),
    ('missing/labels.npy', r'noise file missing/labels.npy does not exist'),
    # the noise of another dataset than --dataset: that, not the file the name would need, is the problem
    ('cifar10n-worse --dataset cifar100', r'--noise_type cifar10n-worse is a noise of cifar10, and this run trains '
                                          r'on cifar100: name a cifar100 noise'),
])
def test_a_noise_name_that_names_no_labels_is_refused_before_the_data_is_read(tmp_path, noise_type, message):
    """Checked with the flags: training reads (or downloads, 170 MB) CIFAR before it resolves the labels."""
    import train_CIFAR
    argv = ['--noise_type', *noise_type.split(), '--data_root', str(tmp_path / 'no-data'), '--cifar_n_dir', str(tmp_path)]
    with pytest.raises(SetupError, match=message):
        train_CIFAR.config(argv)


def test_a_noise_file_gone_since_the_check_is_named_in_one_line(tmp_path):
    """Between the flags' check and the read (a long CIFAR download), or for a caller without the check."""
    for path, said in ((tmp_path / 'gone.npy', 'does not exist'), (tmp_path, 'does not exist (it is a folder)')):
        with pytest.raises(NoiseError, match=f'^noise file {path} {re.escape(said)}$'):
            resolve_noisy_labels(str(path), 10, np.zeros(10, dtype=np.int64), 10)


@pytest.mark.parametrize('noise_type', ['cifar10-1-0.35', 'cifar10-1-0.35_U_0.3', 'cifar10-U-0.4',
                                        'cifar10-clean', 'cifar10-U-0.4_A_0.2', 'mine_U_0.3'])
def test_names_that_name_labels_pass_the_check(tmp_path, noise_type):
    (tmp_path / 'mine.npy').write_bytes(b'')  # a file in the noise folder: its content is checked with the data
    assert noise_problem(noise_type, noise_dir=str(tmp_path)) is None
    assert noise_kind('mine', str(tmp_path)) == 'noise file'


def test_the_digits_demo_refuses_the_flags_of_a_dataset_it_does_not_read():
    """The demo trains on the digits whatever --dataset says: it says so, rather than ignoring the flag
    (or refusing its digits noise as a noise of another dataset)."""
    import demo_digits
    with pytest.raises(SetupError, match=r"^--dataset does not apply to demo_digits.py, which trains on scikit-learn's "
                                         r"bundled digits; drop it \(train_CIFAR.py reads it\); --data_root does not"):
        demo_digits.config(['--dataset', 'cifar10', '--data_root', 'x'])
    with pytest.raises(SetupError, match=r'^--noise_type cifar10-U-0.4 is a noise of cifar10, and this run trains on '
                                         r'digits: name a digits noise'):  # its dataset is the script's
        demo_digits.config(['--noise_type', 'cifar10-U-0.4'])
