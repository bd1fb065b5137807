"""make_noise refuses bad flags before any work, names a hybrid by its seed, names every rate exactly, and
writes over no file it did not write, nor its own file of other settings, nor a name another make_noise is
writing."""
import fcntl
import json
import math
import os

import numpy as np
import pytest

from noisy_label import make_noise
from utils.data.noise import HYBRID_NAME, noise_rate, resolve_noisy_labels
from utils.data.pmd import pmd_noise
from utils.errors import NoiseError, SetupError
from utils.runs.cli import run_cli


def refusal(argv, capsys):
    """What `python -m noisy_label.make_noise ARGV` prints on stderr; it must exit 2."""
    with pytest.raises(SystemExit) as stopped:
        run_cli(make_noise.main, argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def no_work(monkeypatch):
    """Reading the data is work: a refusal must come before it."""
    def load_named(*args, **kwargs):
        raise AssertionError('data was read before the flags were checked')
    monkeypatch.setattr(make_noise, 'load_named', load_named)


@pytest.mark.parametrize('flags, said', [
    (['pmd', '--rate', 'nan'], '--rate nan must be a number in [0, 1) for PMD noise'),
    (['pmd', '--rate', '1.5'], '--rate 1.5 must be a number in [0, 1)'),
    (['pmd', '--rate', '-0.2'], '--rate -0.2 must be a number in [0, 1)'),
    (['pmd', '--rate', '-0'], '--rate -0.0 must be'),
    (['pmd', '--rate', '1'], '--rate 1.0 must be a number in [0, 1)'),
    (['pmd', '--rate', 'inf'], '--rate inf must be'),
    (['pmd', '--nepoch', '0'], '--nepoch 0 must be at least 1'),
    (['pmd', '--batch_size', '0'], '--batch_size 0 must be at least 1'),
    (['pmd', '--lr', 'nan'], '--lr nan must be a finite number above 0'),
    (['pmd', '--seed', '-1'], '--seed -1 must not be negative'),
    (['pmd', '--seed', str(2 ** 32)], f'--seed {2 ** 32} must be at most {2 ** 32 - 1}'),
    (['pmd', '--device', 'gpu0'], "--device 'gpu0' is not a device"),
    (['pmd', '--n_train', '0'], '--n_train 0 must be at least 1'),
    (['pmd', '--arch', 'foo'], "argument --arch: invalid choice: 'foo'"),
    (['hybrid', '--base', 'mybase', '--kind', 'U', '--rate', '1.2'], '--rate 1.2 must be a number in [0, 1] for'),
    (['hybrid', '--base', 'mybase', '--kind', 'U', '--rate', 'nan'], '--rate nan must be'),
    (['cifar10-set', '--nepoch', '0'], '--nepoch 0 must be at least 1'),
    (['cifar10-set', '--lr', '-1'], '--lr -1.0 must be a finite number above 0'),  # as pmd, it trains η
])
def test_bad_flags_are_refused_in_one_line_before_the_data_is_read(flags, said, tmp_path, capsys, no_work):
    assert said in refused_before_work([*flags, *folders(flags[0], tmp_path)], tmp_path, capsys)


def folders(command, tmp_path):
    """--out_dir, and --cache_dir where `command` reads it (a hybrid trains nothing, and refuses it)."""
    cache = [] if command == 'hybrid' else ['--cache_dir', str(tmp_path / 'cache')]
    return ['--out_dir', str(tmp_path / 'noise'), *cache]


def refused_before_work(argv, tmp_path, capsys):
    """The refusal of ARGV: one line, exit 2, no traceback, and nothing written, not even the folders."""
    err = refusal(argv, capsys)
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err
    assert list(tmp_path.iterdir()) == []
    return err


HYBRID = ['hybrid', '--base', 'mybase', '--kind', 'U']


@pytest.mark.parametrize('flag, value', [('--arch', 'small_cnn'), ('--nepoch', '5'), ('--batch_size', '64'),
                                         ('--lr', '0.05'), ('--device', 'cpu'), ('--cache_dir', 'cache')])
def test_a_hybrid_refuses_the_eta_classifiers_flags_it_would_ignore(flag, value, tmp_path, capsys, no_work):
    # a hybrid trains nothing: the flag, even a good value, had no effect on the file made
    err = refused_before_work([*HYBRID, flag, value, *folders('hybrid', tmp_path)], tmp_path, capsys)
    assert f'{flag} applies to pmd and cifar10-set only (hybrid trains nothing' in err and 'drop it' in err


def test_a_hybrid_checks_no_value_it_does_not_read_but_every_one_it_reads(tmp_path, capsys, no_work):
    # --lr -1 is refused as a flag to drop, not as a bad learning rate; the bad --rate is named in the same line
    err = refused_before_work([*HYBRID, '--lr', '-1', '--rate', '2', *folders('hybrid', tmp_path)], tmp_path, capsys)
    assert '--lr applies to pmd and cifar10-set only' in err and 'must be a finite number' not in err
    assert '--rate 2.0 must be a number in [0, 1] for hybrid noise' in err


@pytest.mark.parametrize('flag, value, readers', [
    ('--dataset', 'cifar100', 'pmd and hybrid'), ('--rate', '0.3', 'pmd and hybrid'), ('--type', '2', 'pmd'),
    ('--base', 'mybase', 'hybrid'), ('--kind', 'U', 'hybrid'), ('--inputs_dir', 'inputs', 'hybrid'),
    ('--dataset', 'cifar10', 'pmd and hybrid'),  # the value it makes anyway: still a flag it does not read
])
def test_the_cifar10_set_refuses_the_flags_of_one_file(flag, value, readers, tmp_path, capsys, no_work):
    # the set makes its fixed CIFAR-10 list: --dataset cifar100 made CIFAR-10 files all the same
    err = refused_before_work(['cifar10-set', flag, value, *folders('cifar10-set', tmp_path)], tmp_path, capsys)
    assert f'{flag} applies to {readers} only (cifar10-set makes its fixed CIFAR-10 list); drop it' in err


@pytest.mark.parametrize('flag, value', [('--base', 'mybase'), ('--kind', 'A')])
def test_pmd_refuses_the_hybrids_flags(flag, value, tmp_path, capsys, no_work):
    err = refused_before_work(['pmd', flag, value, *folders('pmd', tmp_path)], tmp_path, capsys)
    assert f'{flag} applies to hybrid only (pmd makes PMD noise, no hybrid); drop it' in err


@pytest.mark.parametrize('argv', [  # noisy_label/README.md's commands; the defaults of unread flags count for none
    ['pmd', '--dataset', 'cifar10', '--type', '1', '--rate', '0.35'],
    ['hybrid', '--base', 'cifar10-1-0.35-s0', '--kind', 'U', '--rate', '0.3'],
    ['hybrid', '--dataset', 'cifar100', '--base', 'cifar100-1-0.35-s0', '--kind', 'U', '--rate', '0.3'],
    ['cifar10-set'], ['cifar10-set', '--data_root', 'data', '--no-download'],
])
def test_the_documented_commands_pass_the_checks(argv, tmp_path, no_work):
    with pytest.raises(AssertionError, match='data was read'):  # no_work's stand-in: every check passed before it
        make_noise.main([*argv, *folders(argv[0], tmp_path)])


def test_an_out_dir_that_is_a_file_is_refused_before_work(tmp_path, capsys, no_work):
    (tmp_path / 'taken').write_text('')
    err = refusal(['pmd', '--dataset', 'digits', '--out_dir', str(tmp_path / 'taken' / 'noise')], capsys)
    assert '--out_dir' in err and 'is a file, not a folder' in err


def test_a_hybrid_of_the_published_form_is_refused_at_every_seed(capsys, no_work):
    err = refusal(['hybrid', '--dataset', 'digits', '--base', 'cifar10-1-0.35', '--kind', 'U', '--rate', '0.3',
                   '--seed', '1'], capsys)
    assert 'is a published file' in err


def test_a_hybrid_base_given_as_a_path_is_refused_naming_the_fix(tmp_path, capsys, no_work):
    for base in (str(tmp_path / 'mybase.npy'), 'mybase.npy', 'noise/mybase'):
        err = refusal(['hybrid', '--dataset', 'digits', '--base', base, '--kind', 'U', '--rate', '0.3', '--out_dir',
                       str(tmp_path / 'noise')], capsys)
        assert f'--base {base} is a path; --base takes a noise name' in err
    assert not (tmp_path / 'noise').exists()


def write_base(folder, digits, name='mybase'):
    """A base noise file for the digits' training labels (about 20% uniform noise), without training η."""
    clean = digits.train_clean.numpy()
    base = np.where(np.random.default_rng(0).random(len(clean)) < 0.2, (clean + 1) % 10, clean)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f'{name}.npy', base.astype(np.int64))
    return clean, base


def hybrid(out, *flags):
    return make_noise.main(['hybrid', '--dataset', 'digits', '--base', 'mybase', '--kind', 'U', *flags,
                            '--out_dir', str(out)])


def test_a_hybrid_of_another_seed_is_its_own_file_drawn_with_that_seed(tmp_path, digits):
    out = tmp_path / 'noise'
    clean, base = write_base(out, digits)
    hybrid(out, '--rate', '0.3', '--seed', '0')
    seed0 = np.load(out / 'mybase_U_0.3.npy')  # the authors' name, at seed 0
    hybrid(out, '--rate', '0.3', '--seed', '1')
    seed1 = np.load(out / 'mybase_U_0.3-s1.npy')
    assert np.array_equal(np.load(out / 'mybase_U_0.3.npy'), seed0)  # seed 0's file left as it was
    assert json.load(open(out / 'mybase_U_0.3.json'))['seed'] == 0
    side = json.load(open(out / 'mybase_U_0.3-s1.json'))
    assert side['seed'] == 1 and '(seed 1)' in side['noise']
    # the labels are what seed 1 draws: the name as training draws it with --noise_seed 1, where no file is
    fresh = tmp_path / 'fresh'
    write_base(fresh, digits)
    for seed, labels in ((0, seed0), (1, seed1)):
        drawn, _ = resolve_noisy_labels('mybase_U_0.3', len(clean), clean, 10, seed=seed, noise_dir=str(fresh))
        assert np.array_equal(labels, drawn)
    assert not np.array_equal(seed0, seed1)
    assert side['realised_rate'] == pytest.approx(noise_rate(seed1, base)) == pytest.approx(0.3, abs=0.05)
    # a hybrid file of seed 1 is a noise name like any file of ours
    assert np.array_equal(resolve_noisy_labels('mybase_U_0.3-s1', len(clean), clean, 10, noise_dir=str(out))[0], seed1)


def test_a_hybrid_rate_the_old_name_rounded_is_named_and_drawn_exactly(tmp_path, digits):
    out = tmp_path / 'noise'
    _, base = write_base(out, digits)
    hybrid(out, '--rate', '0.125')
    assert not (out / 'mybase_U_0.12.npy').exists() and not (out / 'mybase_U_0.13.npy').exists()
    side = json.load(open(out / 'mybase_U_0.125.json'))
    assert side['noise'].startswith('uniform 0.125 on') and side['requested_rate'] == 0.125
    assert side['realised_rate'] == pytest.approx(0.125, abs=0.03)
    hybrid(out, '--rate', '0.001')  # was named, and drawn at, 0
    assert not (out / 'mybase_U_0.npy').exists()
    assert json.load(open(out / 'mybase_U_0.001.json'))['noise'].startswith('uniform 0.001 on')


@pytest.mark.parametrize('rate', [0.001, 0.125, 0.3, 0.35, 0.7, 1e-05, 0.1 + 0.2, 1 / 3, 0.0, 1.0])
def test_every_rate_name_reads_back_as_exactly_the_rate(rate):
    drawn_as, name = make_noise.hybrid_names('cifar10-1-0.35-s0', 'U', rate, 0)
    assert float(HYBRID_NAME.match(name).group(3)) == rate and drawn_as == name
    assert float(make_noise.pmd_name('cifar10', 1, rate, 0).split('-')[2]) == rate


def test_the_documented_names_are_kept():
    assert make_noise.pmd_name('cifar10', 1, 0.35, 0) == 'cifar10-1-0.35-s0'
    assert make_noise.pmd_name('cifar10', 1, 0.7, 2) == 'cifar10-1-0.70-s2'
    assert make_noise.hybrid_names('cifar10-1-0.35-s0', 'U', 0.3, 0) == ('cifar10-1-0.35-s0_U_0.3',) * 2
    assert make_noise.hybrid_names('cifar10-1-0.35-s0', 'A', 0.3, 7)[1] == 'cifar10-1-0.35-s0_A_0.3-s7'


def synthetic_eta(n, clean, seed=0):
    """Probabilities of a mostly right classifier, with margins spread over [0, 1]."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), clean] += rng.uniform(0, 6, n)
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize('rate', [math.nan, 1.5, -0.1])
def test_pmd_noise_refuses_a_rate_out_of_range(rate):
    clean = np.arange(500) % 10
    with pytest.raises(NoiseError, match='must be a finite number in'):
        pmd_noise(synthetic_eta(500, clean), clean, 1, rate)


def test_pmd_noise_refuses_an_unreachable_rate_and_an_unknown_type_as_noise_errors():
    clean = np.arange(2000) % 10
    eta = synthetic_eta(2000, clean)
    with pytest.raises(NoiseError, match=r'cannot produce that rate: choose a rate between 0\.\d+ and 0\.\d+'):
        pmd_noise(eta, clean, 1, 0.999)
    with pytest.raises(NoiseError, match='PMD type must be one of'):
        pmd_noise(eta, clean, 4, 0.3)


def test_an_unreachable_pmd_rate_is_one_line_and_writes_no_noise_file(tmp_path, digits, capsys):
    cache = tmp_path / 'cache'
    cache.mkdir()
    clean = digits.train_clean.numpy()
    # the cached η classifier, as make_noise would have trained and kept it
    np.savez(cache / f'eta_digits_n{len(clean)}_small_cnn_e1_s0.npz', eta=synthetic_eta(len(clean), clean),
             train_acc=1.0, val_acc=0.0, test_acc=0.0)
    err = refusal(['pmd', '--dataset', 'digits', '--arch', 'small_cnn', '--nepoch', '1', '--rate', '0.999',
                   '--out_dir', str(tmp_path / 'noise'), '--cache_dir', str(cache)], capsys)
    assert err.startswith('error: PMD type 1: the closest realised rate') and err.count('\n') == 1
    # the rates PMD reaches are the η classifier's: the refusal says how well it fits, and what trains it further
    assert ('The η classifier (small_cnn, 1 epochs) fits the clean training labels at 100.0% (validation 0.0%)'
            in err and '--nepoch' in err)
    assert not (tmp_path / 'noise').exists()


# ---- a file make_noise did not write is never written over ----------------------------------------------

PMD_DIGITS = ['pmd', '--dataset', 'digits', '--type', '1', '--rate', '0.9', '--arch', 'small_cnn', '--nepoch', '1']


def refused_over(argv, tmp_path, capsys, theirs):
    """The refusal of ARGV, which has `theirs` ({path: bytes}) in its way: one line, exit 2, no traceback, and
    nothing written: their files as they were, and nothing else there (no folder made, no η cached)."""
    for path, content in theirs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    before = sorted(tmp_path.rglob('*'))
    err = refusal(argv, capsys)
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err
    assert sorted(tmp_path.rglob('*')) == before and all(p.read_bytes() == c for p, c in theirs.items())
    assert 'move it away or choose another --out_dir' in err
    return err


def own_sidecar(name, command='python -m noisy_label.make_noise pmd'):
    return json.dumps({'file': name + '.npy', 'command': command}).encode()


@pytest.mark.parametrize('sidecar, said', [
    (None, 'no sidecar digits-1-0.90-s0.json beside it'),
    (b'not json', 'digits-1-0.90-s0.json beside it is not the sidecar make_noise writes'),
    (b'["a", "list"]', 'is not the sidecar make_noise writes'),
    (own_sidecar('digits-1-0.90-s0', 'python my_labels.py'), 'is not the sidecar make_noise writes'),
    (own_sidecar('digits-1-0.35-s0'), 'is not the sidecar make_noise writes'),  # make_noise's, of another file
])
def test_a_users_npy_at_the_target_is_refused_before_the_data_is_read(sidecar, said, tmp_path, capsys, no_work):
    out = tmp_path / 'noise'
    theirs = {out / 'digits-1-0.90-s0.npy': b'my precious\n'}
    if sidecar is not None:
        theirs[out / 'digits-1-0.90-s0.json'] = sidecar
    err = refused_over([*PMD_DIGITS, *folders('pmd', tmp_path)], tmp_path, capsys, theirs)
    assert err.startswith(f'error: {out / "digits-1-0.90-s0.npy"} already exists (') and said in err


def test_a_users_json_at_the_target_is_refused_before_the_data_is_read(tmp_path, capsys, no_work):
    out = tmp_path / 'noise'
    theirs = {out / 'digits-1-0.90-s0.json': b'{"my": "notes"}\n'}
    err = refused_over([*PMD_DIGITS, *folders('pmd', tmp_path)], tmp_path, capsys, theirs)
    assert f'{out / "digits-1-0.90-s0.json"} already exists (not a sidecar make_noise wrote)' in err


def test_a_folder_at_the_target_is_refused(tmp_path, capsys, no_work):
    (tmp_path / 'noise' / 'digits-1-0.90-s0.npy').mkdir(parents=True)
    err = refusal([*PMD_DIGITS, *folders('pmd', tmp_path)], capsys)
    assert 'digits-1-0.90-s0.npy already exists (not a file make_noise wrote)' in err


@pytest.mark.parametrize('seed, name', [('0', 'mybase_U_0.3'), ('2', 'mybase_U_0.3-s2')])
def test_a_users_file_at_a_hybrids_target_is_refused_before_the_base_is_read(seed, name, tmp_path, capsys,
                                                                            no_work):
    out = tmp_path / 'noise'
    theirs = {out / 'mybase.npy': b'the base', out / f'{name}.npy': b'my precious\n'}
    err = refused_over([*HYBRID, '--rate', '0.3', '--seed', seed, *folders('hybrid', tmp_path)], tmp_path,
                       capsys, theirs)
    assert err.startswith(f'error: {out / name}.npy already exists (no sidecar {name}.json beside it')


@pytest.mark.parametrize('name', ['cifar10-1-0.35-s0', 'cifar10-3-0.35-s0', 'cifar10-1-0.35-s0_A_0.3'])
def test_a_users_file_at_any_of_the_cifar10_sets_targets_is_refused_before_work(name, tmp_path, capsys, no_work):
    # the set writes seven files: each is checked before the first is made (the last, a hybrid, too)
    out = tmp_path / 'noise'
    theirs = {out / f'{name}.json': b'{}'}
    err = refused_over(['cifar10-set', *folders('cifar10-set', tmp_path)], tmp_path, capsys, theirs)
    assert f'{out / name}.json already exists (not a sidecar make_noise wrote)' in err


def test_the_first_file_in_the_way_is_named(tmp_path, capsys, no_work):
    out = tmp_path / 'noise'
    theirs = {out / 'cifar10-1-0.35-s0_U_0.6.npy': b'x', out / 'cifar10-2-0.35-s0.npy': b'y'}
    err = refused_over(['cifar10-set', *folders('cifar10-set', tmp_path)], tmp_path, capsys, theirs)
    assert 'cifar10-2-0.35-s0.npy already exists' in err and '_U_0.6' not in err


def pmd_settings(*flags):
    """The settings (make_noise.file_settings) of PMD_DIGITS's file, with `flags`."""
    return make_noise.target_settings(make_noise.parsed([*PMD_DIGITS, *flags]))[0]


FACTS = {'realised_rate': 0.9, 'requested_rate': 0.9}


def test_a_file_put_in_the_way_during_the_work_is_not_written_over(tmp_path):
    # checked again with the writes: the η classifier may train for long after the first check
    (tmp_path / 'digits-1-0.90-s0.npy').write_bytes(b'my precious\n')
    with pytest.raises(SetupError, match='digits-1-0.90-s0.npy already exists'):
        make_noise.write_noise(np.zeros(3), pmd_settings(), FACTS, str(tmp_path), f'{make_noise.COMMAND} pmd')
    assert (tmp_path / 'digits-1-0.90-s0.npy').read_bytes() == b'my precious\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['digits-1-0.90-s0.npy']


def test_running_the_same_command_again_rewrites_its_own_files(tmp_path, digits):
    cache, out = tmp_path / 'cache', tmp_path / 'noise'
    cache.mkdir()
    clean = digits.train_clean.numpy()
    np.savez(cache / f'eta_digits_n{len(clean)}_small_cnn_e1_s0.npz', eta=synthetic_eta(len(clean), clean),
             train_acc=1.0, val_acc=0.0, test_acc=0.0)  # the cached η classifier: nothing to train
    pmd = [*PMD_DIGITS, '--out_dir', str(out), '--cache_dir', str(cache)]
    on_top = ['hybrid', '--dataset', 'digits', '--base', 'digits-1-0.90-s0', '--kind', 'U', '--rate', '0.3',
              '--out_dir', str(out)]
    names = ['digits-1-0.90-s0', 'digits-1-0.90-s0_U_0.3']
    for argv in (pmd, on_top):
        make_noise.main(argv)
    first = {name: np.load(out / f'{name}.npy') for name in names}
    for path in out.iterdir():
        os.utime(path, (0, 0))  # so that a rewrite shows
    # the same commands again, their flags in another order, defaults and --device typed: the same settings
    again = [*pmd[:3], *pmd[9:], *pmd[3:9], '--lr', '0.1', '--batch_size', '128', '--seed', '0', '--device', 'cpu']
    for argv in (again, on_top):
        make_noise.main(argv)
    for name in names:  # rewritten, the same seed giving the same labels
        assert np.array_equal(np.load(out / f'{name}.npy'), first[name])
        assert all((out / f'{name}{ext}').stat().st_mtime > 0 for ext in ('.npy', '.json'))
        assert json.load(open(out / f'{name}.json'))['file'] == f'{name}.npy'
    assert json.load(open(out / f'{names[1]}.json'))['settings'] == {
        'command': 'hybrid', 'dataset': 'digits', 'rate': 0.3, 'seed': 0, 'n_train': None,  # digits: its own split
        'base': 'digits-1-0.90-s0', 'kind': 'U'}
    # another η classifier's labels are not written over these: refused before any work, named
    before = {path: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(SetupError, match=r'already exists, made with other settings \(--batch_size 64 here, 128 there; '
                                         r'--lr 0\.05 here, 0\.1 there\)'):
        make_noise.main([*again, '--lr', '0.05', '--batch_size', '64', '--nepoch', '1'])
    assert {path: path.read_bytes() for path in out.iterdir()} == before
    # labels changed in place beside make_noise's sidecar are the user's now: refused, left as they are
    edited = first[names[0]].copy()
    edited[:3] = (edited[:3] + 1) % 10
    np.save(out / f'{names[0]}.npy', edited)
    before = (out / f'{names[0]}.npy').read_bytes()
    with pytest.raises(SetupError, match=f'{names[0]}.npy already exists \\(changed since make_noise wrote it: '
                                         f'{names[0]}.json records other contents\\)'):
        make_noise.main(pmd)
    assert (out / f'{names[0]}.npy').read_bytes() == before


# ---- nor make_noise's own file of other settings ---------------------------------------------------------

def test_the_settings_recorded_are_all_that_decide_a_pmd_files_labels():
    assert make_noise.target_settings(make_noise.parsed(['pmd', '--type', '2', '--device', 'cpu'])) == [{
        'command': 'pmd', 'dataset': 'cifar10', 'type': 2, 'rate': 0.35, 'seed': 0, 'n_train': 45000,
        'arch': 'preact_resnet34', 'nepoch': 25, 'batch_size': 128, 'lr': 0.1}]


def test_the_eta_cache_is_named_by_every_setting_that_decides_it(digits):
    def tag(*flags):
        return make_noise.eta_tag(make_noise.parsed([*PMD_DIGITS, *flags]), digits)
    # the defaults keep the name caches had before: a cache of another --lr was read as the default's
    assert tag('--lr', '0.1', '--batch_size', '128') == tag() == \
        f'eta_digits_n{len(digits.train_clean)}_small_cnn_e1_s0'
    assert len({tag(), tag('--lr', '0.05'), tag('--batch_size', '64'), tag('--seed', '1'), tag('--nepoch', '2')}) == 5


def own_file(out, argv, drop=(), n=5, command=None):
    """The .npy and sidecar make_noise writes for the (first) file of ARGV, `drop` left out of the sidecar
    (as one written before it was recorded), the .npy older than the sidecar as when make_noise wrote it;
    `command`: the argv the sidecar records instead (one today's make_noise may not parse). Returns the
    .npy's path."""
    settings = make_noise.target_settings(make_noise.parsed(argv))[0]
    name = make_noise.file_name(settings)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f'{name}.npy', np.zeros(n, dtype=np.int64))
    side = {'file': f'{name}.npy', 'sha1': make_noise.file_digest(str(out / f'{name}.npy')), 'n': n,
            'settings': settings, 'command': f'{make_noise.COMMAND} ' + ' '.join(command or argv)}
    (out / f'{name}.json').write_text(json.dumps({k: v for k, v in side.items() if k not in drop}))
    os.utime(out / f'{name}.npy', ns=(0, (out / f'{name}.json').stat().st_mtime_ns - 10 ** 9))
    return out / f'{name}.npy'


CIFAR_PMD = ['pmd', '--dataset', 'cifar10', '--type', '1', '--rate', '0.35']
CIFAR_HYBRID = ['hybrid', '--dataset', 'cifar10', '--base', 'cifar10-1-0.35-s0', '--kind', 'U', '--rate', '0.3']


@pytest.mark.parametrize('made, argv, said', [
    (CIFAR_PMD, [*CIFAR_PMD, '--n_train', '20000'], '--n_train 20000 here, 45000 there'),
    ([*CIFAR_PMD, '--arch', 'small_cnn'], CIFAR_PMD, '--arch preact_resnet34 here, small_cnn there'),
    ([*CIFAR_PMD, '--nepoch', '5'], CIFAR_PMD, '--nepoch 25 here, 5 there'),
    ([*CIFAR_PMD, '--lr', '0.05'], ['cifar10-set'], '--lr 0.1 here, 0.05 there'),  # the set's first file
    (CIFAR_HYBRID, [*CIFAR_HYBRID, '--n_train', '40000'], '--n_train 40000 here, 45000 there'),
    (['hybrid', '--dataset', 'cifar100', '--base', 'mybase', '--kind', 'U'], [*HYBRID, '--rate', '0.35'],
     '--dataset cifar10 here, cifar100 there'),
])
def test_own_files_of_other_settings_are_refused_before_work(made, argv, said, tmp_path, capsys, no_work):
    out = tmp_path / 'noise'
    npy = own_file(out, made)
    before = {path: path.read_bytes() for path in out.iterdir()}
    err = refusal([*argv, *folders(argv[0], tmp_path)], capsys)
    assert err.startswith(f'error: {npy} already exists, made with other settings (') and said in err
    assert f'move it and {npy.stem}.json away, or choose another --out_dir' in err and err.count('\n') == 1
    assert {path: path.read_bytes() for path in out.iterdir()} == before


@pytest.mark.parametrize('made, argv', [
    (CIFAR_PMD, ['pmd', '--rate', '0.35', '--lr', '0.1', '--type', '1', '--n_train', '45000', '--device', 'cpu']),
    (CIFAR_PMD, ['cifar10-set']),  # the set's first file is the same command's
    (CIFAR_HYBRID, [*CIFAR_HYBRID, '--inputs_dir', 'elsewhere']),  # a published base is the same from any folder
    (['pmd', '--dataset', 'digits', '--n_train', '500'], ['pmd', '--dataset', 'digits']),  # digits: its own split
])
def test_the_same_settings_pass_whatever_flags_say_them(made, argv, tmp_path, no_work):
    own_file(tmp_path / 'noise', made)
    with pytest.raises(AssertionError, match='data was read'):  # no_work's stand-in: every check passed
        make_noise.main([*argv, *folders(argv[0], tmp_path)])


@pytest.mark.parametrize('made, argv, said', [  # sidecars from before settings were recorded: their command's
    (CIFAR_PMD, ['pmd', '--type', '1'], None),
    (['pmd', '--datas', 'cifar10', '--ty', '1', '--ra', '0.35'], CIFAR_PMD, None),  # prefixes, as read then
    ([*CIFAR_PMD, '--n_train', '20000'], CIFAR_PMD, 'made with other settings (--n_train 45000 here, 20000 there)'),
    ([*CIFAR_PMD, '--epochs', '25'], CIFAR_PMD, 'whose settings cannot be told'),  # --nepoch's old name
    ([*CIFAR_PMD, '--rate', '0.351'], CIFAR_PMD, 'whose settings cannot be told'),  # names another file today
])
def test_an_old_sidecars_settings_are_read_from_its_command(made, argv, said, tmp_path, capsys, no_work):
    own_file(tmp_path / 'noise', CIFAR_PMD, drop=('settings',), command=made)  # cifar10-1-0.35-s0, by `made`
    if said is None:
        with pytest.raises(AssertionError, match='data was read'):
            make_noise.main([*argv, *folders(argv[0], tmp_path)])
    else:
        err = refusal([*argv, *folders(argv[0], tmp_path)], capsys)
        assert said in err and err.count('\n') == 1 and 'move it and cifar10-1-0.35-s0.json away' in err


@pytest.mark.parametrize('change, said', [  # sidecars from before sha1s were recorded (nor settings)
    (None, None),
    ('edited', 'changed since make_noise wrote it: it is newer than cifar10-1-0.35-s0.json, which is from before'),
    ('shorter', 'not the 5 labels cifar10-1-0.35-s0.json records'),
])
def test_an_old_sidecar_without_sha1_keeps_what_it_can_check(change, said, tmp_path, capsys, no_work):
    out = tmp_path / 'noise'
    npy = own_file(out, CIFAR_PMD, drop=('settings', 'sha1'))
    if change == 'edited':  # labels changed in place: the file is newer than its sidecar
        np.save(npy, np.ones(5, dtype=np.int64))
    elif change == 'shorter':  # and its time set back: the length still tells
        mtime = npy.stat().st_mtime_ns
        np.save(npy, np.zeros(4, dtype=np.int64))
        os.utime(npy, ns=(0, mtime))
    if said is None:
        with pytest.raises(AssertionError, match='data was read'):
            make_noise.main([*CIFAR_PMD, *folders('pmd', tmp_path)])
    else:
        err = refused_over([*CIFAR_PMD, *folders('pmd', tmp_path)], tmp_path, capsys, {})
        assert err.startswith(f'error: {npy} already exists (') and said in err


# ---- nor a name another make_noise is writing ------------------------------------------------------------

def test_a_second_writer_of_a_name_is_refused_in_one_line_naming_the_first(tmp_path):
    out, first = str(tmp_path), f'{make_noise.COMMAND} pmd --first'
    with make_noise.name_lock(out, 'digits-1-0.90-s0', first):
        with pytest.raises(SetupError) as refused:
            make_noise.write_noise(np.zeros(3), pmd_settings(), FACTS, out, f'{make_noise.COMMAND} pmd --second')
        said = str(refused.value)
        assert f'digits-1-0.90-s0.npy is being written by another make_noise right now (pid {os.getpid()}: {first})' \
               in said and 'wait for it to finish and run again, or choose another --out_dir' in said
        assert '\n' not in said and sorted(p.name for p in tmp_path.iterdir()) == ['.digits-1-0.90-s0.lock']
    assert list(tmp_path.iterdir()) == []  # its holder removed the lock file


def test_the_check_before_the_write_is_made_under_the_lock(tmp_path, monkeypatch):
    checked, check = [], make_noise.check_may_write

    def check_held(out_dir, targets):
        fd = os.open(os.path.join(out_dir, '.digits-1-0.90-s0.lock'), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # another process could not take it now
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        checked.append(targets)
        check(out_dir, targets)
    monkeypatch.setattr(make_noise, 'check_may_write', check_held)
    (tmp_path / '.digits-1-0.90-s0.lock').write_text('pid 1: a make_noise killed while writing')  # stale
    make_noise.write_noise(np.zeros(3), pmd_settings(), FACTS, str(tmp_path), f'{make_noise.COMMAND} pmd')
    assert checked == [[pmd_settings()]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['digits-1-0.90-s0.json', 'digits-1-0.90-s0.npy']
