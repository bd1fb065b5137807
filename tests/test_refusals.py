"""Every entry point refuses its worst inputs in one line (`error: ...`, exit 2, no traceback) and leaves
nothing behind; own-data labels are checked up front; prediction checks the run it is given; features
are finite after their cast to float32."""
import csv
import errno
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from test_fetch import npy_bytes, publish_as, server  # noqa: F401 -- the local HTTP server fixture
from test_run_folders import own_flags, snapshot
from test_trust import cfg_for

import demo_digits
import predict
import train_ImageFolder
from benchmarks import layouts
from conftest import subset
from utils import predict as predict_module
from utils.data.image_files import ImageFiles, image_batches
from utils.data.own_images import read_image_folder
from utils.encoders.feature_file import load_feature_file, save_feature_file
from utils.engine import run
from utils.errors import DatasetMissing, FeatureFileError, SetupError
from utils.predict import predict as predict_run
from utils.runs.cli import one_line, run_cli
from utils.runs.folders import LOCK_NAME, RunClaim, read_record
from utils.storage.saving import remove_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def oversized_png(path, side=20000):
    """A PNG whose header claims side × side pixels (beyond PIL's decompression-bomb limit): a few
    bytes on disk, refused as soon as its header is read."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)) +
                chunk(b'IDAT', zlib.compress(b'\0' * 8)) + chunk(b'IEND', b''))
    return str(path)


def csv_file(path, rows, header='path,label'):
    layouts.write(str(path), [header, *rows] if header else rows)
    return str(path)


@pytest.fixture(scope='module')
def own(tmp_path_factory):
    """A small own-data tree and a run trained on it (raw pixels as f_p, 8-px images, one epoch)."""
    root = tmp_path_factory.mktemp('refusals')
    layouts.own_data(str(root / 'own'), per_class=12, n_eval=2)
    _, run_dir = train_ImageFolder.main(['--train', str(root / 'own' / 'labels.csv'), '--val',
                                         str(root / 'own' / 'val'), *own_flags(root, '--nepoch', '1')])
    return root, run_dir


# ---- every entry point through the one refusal path ----------------------------------------------

def entry_point_cases(work, own_root, own_run, digits_run):
    """(entry, argv) pairs: each entry point's worst inputs, built from generated files under `work`."""
    images, classes = own_root / 'own' / 'images', work / 'classes.txt'
    fixed = ['--fp_encoder', 'raw', '--diff_encoder', 'fp_mlp', '--image_size', '8', '--num_workers', '1',
             '--device', 'cpu']
    ok = [f'{images}/cat_000.jpg,cat', f'{images}/dog_000.jpg,dog']
    (work / 'empty').mkdir()
    (work / 'broken.jpg').write_bytes(b'not an image')
    oversized_png(work / 'huge.png')
    (work / 'latin1.csv').write_bytes(f'path,label\n{images}/cat_000.jpg,cat\n{images}/dog_000.jpg,ch\xe9vre\n'
                                      .encode('latin-1'))
    layouts.write(str(classes), ['cat', 'dog', 'cat'])
    (work / 'bad_predict').mkdir()
    (work / 'bad_predict' / 'a.jpg').write_bytes(b'\xff\xd8 truncated')
    (work / 'no_run').mkdir()
    (work / 'corrupt_run').mkdir()
    (work / 'corrupt_run' / 'last.pt').write_bytes(b'PK\x03\x04 half a checkpoint')
    (work / 'simclr').mkdir()
    torch.save([1, 2, 3], work / 'simclr' / 'state.pt')
    np.save(work / 'short.npy', np.zeros(10, np.int64))
    np.savez(work / 'huge.npz', **{s: np.full((n, 4), 1e300) for s, n in (('train', 1197), ('val', 200),
                                                                            ('test', 400))})
    food = layouts.food101n(str(work / 'food'))
    (work / 'food' / 'Food-101N_release' / 'images' / 'churros' / 'churros_010.jpg').write_bytes(b'damaged')
    numbers = itertools.count()

    def train(rows, *more):
        return ['--train', csv_file(work / f'train{next(numbers)}.csv', rows), *more]
    return [
        ('train_CIFAR.py', ['--data_root', str(work / 'nothing'), '--no-download']),
        ('train_CIFAR.py', ['--k', '0']),
        ('train_CIFAR.py', ['--resume', str(work / 'no_run')]),
        ('train_CIFAR.py', ['--resume', str(work / 'corrupt_run')]),
        ('predict.py', [own_run, '--script', 'train_CIFAR.py']),  # a run of another script
        ('train_Food101N.py', ['--food101n_root', str(work / 'nothing')]),
        ('train_Food101N.py', ['--food101n_root', food[0], '--food101_root', food[1], '--k', '2', *fixed]),
        ('train_Clothing1M.py', ['--clothing1m_root', str(work / 'nothing')]),
        ('train_WebVision.py', ['--webvision_root', str(work / 'nothing')]),
        ('train_ImageFolder.py', []),
        ('train_ImageFolder.py', ['--train', str(work / 'empty')]),
        ('train_ImageFolder.py', train([*ok, f'{work}/broken.jpg,cat'])),
        ('train_ImageFolder.py', train([*ok, f'{work}/huge.png,cat'])),
        ('train_ImageFolder.py', train([*ok, f'{images}/cat_000.jpg,dog'])),
        ('train_ImageFolder.py', ['--train', csv_file(work / 'nolabel.csv', ok, 'path,class')]),
        ('train_ImageFolder.py', ['--train', str(work / 'latin1.csv')]),
        ('train_ImageFolder.py', train([f'{images}/cat_000.jpg,cat', f'{images}/cat_001.jpg,cat'])),
        ('train_ImageFolder.py', train([f'{images}/cat_000.jpg,0', f'{images}/cat_001.jpg,1',
                                        f'{images}/cat_002.jpg,1', f'{images}/dog_000.jpg,9'])),
        ('train_ImageFolder.py', train(ok, '--classes', str(classes))),
        ('train_ImageFolder.py', train(ok, '--image_size', '100000')),  # it had been killed for memory
        ('train_ImageFolder.py', train([*ok, f'{images}/fox_000.jpg,2'])),
        ('train_ImageFolder.py', train(ok, '--val', csv_file(work / 'val.csv', [f'{images}/cat_000.jpg,cat']))),
        ('train_ImageFolder.py', ['--resume', str(work / 'no_run')]),
        ('train_ImageFolder.py', ['--resume', str(work / 'corrupt_run')]),
        ('predict.py', [own_run, '--folder', str(work / 'bad_predict')]),
        ('predict.py', [own_run, '--folder', str(images), '--val', str(images)]),
        ('predict.py', [own_run, '--lr', '0.5']),
        ('predict.py', [str(work / 'no_run')]),
        ('demo_digits.py', ['--out_dir', os.path.dirname(digits_run), '--run_name', 'r', '--noise_type',
                            str(work / 'short.npy')]),  # the case: a finished run lost its last.pt
        ('demo_digits.py', ['--noise_type', str(work / 'short.npy'), '--run_name', 'fresh']),
        ('demo_digits.py', ['--fp_encoder', 'features', '--fp_checkpoint', str(work / 'huge.npz')]),
        ('predict.py', [own_run, '--script', 'demo_digits.py']),
        ('train_standard.py', ['--noise_type', 'digits-7-0.3']),
        ('pretrain_SimCLR.py', ['--resume', str(work / 'no_run')]),
        ('pretrain_SimCLR.py', ['--resume', str(work / 'simclr')]),
        ('-m noisy_label.fetch', ['cifar10-9-0.35']),
        ('-m noisy_label.fetch', ['--all', 'cifar10-1-0.35']),
        ('-m noisy_label.make_noise', ['hybrid', '--dataset', 'digits', '--base', 'cifar10-1-0.35', '--kind', 'U',
                                       '--rate', '0.3']),
        ('-m noisy_label.make_noise', ['hybrid', '--dataset', 'digits']),
    ]


def test_every_entry_point_refuses_its_worst_inputs_in_one_line_and_leaves_nothing_behind(tmp_path, own, digits):
    own_root, own_run = own
    _, digits_run = run(cfg_for(tmp_path / 'digits', '--nepoch', '1', '--n_samples', '0'),
                        lambda c: subset(digits, 200, 50))
    os.remove(os.path.join(digits_run, 'last.pt'))
    work = tmp_path / 'work'
    work.mkdir()
    cases = entry_point_cases(work, own_root, own_run, digits_run)
    before, run_before, digits_before = snapshot(work), snapshot(own_run), snapshot(digits_run)
    # progress bars are not messages: a refusal during feature extraction would follow a cleared bar
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1', 'LRA_DIFFUSION_HOME': str(tmp_path / 'inputs'),
           'LRA_DIFFUSION_BASE_URL': 'http://127.0.0.1:9'}
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'run_entry_points.py')], cwd=work, env=env,
                          input=json.dumps([{'entry': e, 'argv': a} for e, a in cases]), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for result in json.loads(done.stdout):
        said = result['stderr']
        assert result['code'] == 2 and said.startswith('error: ') and said.count('\n') == 1 and \
            'Traceback' not in said, f"{result['entry']} {' '.join(result['argv'])}: exit {result['code']}\n{said}"
    assert snapshot(work) == before and snapshot(digits_run) == digits_before
    assert snapshot(own_run) == run_before and not (tmp_path / 'inputs').exists()


# ---- the errors the refusal path did not know --------------------------------------------------------

def refusal_line(error):
    """What run_cli prints for `error`, as a user sees it."""
    def main(argv):
        raise error
    with pytest.raises(SystemExit) as stopped:
        run_cli(main, [])
    assert stopped.value.code == 2
    return one_line(error)


def test_an_oversized_or_damaged_image_decoded_in_a_worker_is_named_in_one_line(tmp_path, own):
    root, _ = own
    paths = [str(root / 'own' / 'images' / 'cat_000.jpg'), oversized_png(tmp_path / 'huge.png')]
    with pytest.raises(DatasetMissing) as raised:
        list(image_batches(paths, 2, 1))  # one DataLoader worker: its exception comes back wrapped
    line = refusal_line(raised.value)
    assert line.startswith(f'cannot read image {paths[1]} is too large to decode safely') and 'Traceback' not in line
    assert 'shrink it, or remove it from the list' in line
    (tmp_path / 'cut.jpg').write_bytes(open(paths[0], 'rb').read()[:200])
    with pytest.raises(DatasetMissing, match=f'cannot read image {tmp_path / "cut.jpg"}'):
        ImageFiles([str(tmp_path / 'cut.jpg')])[0]


def test_a_csv_or_class_list_that_is_not_utf8_names_the_file_and_row(tmp_path, own):
    root, _ = own
    images = root / 'own' / 'images'
    (tmp_path / 'labels.csv').write_bytes(f'path,label\n{images}/cat_000.jpg,cat\n{images}/dog_000.jpg,ch\xe9vre\n'
                                          .encode('latin-1'))
    with pytest.raises(DatasetMissing, match=f'{tmp_path / "labels.csv"}, row 3: not UTF-8 text .*save the file as '
                                             f'UTF-8'):
        read_image_folder(str(tmp_path / 'labels.csv'))
    (tmp_path / 'classes.txt').write_bytes('cat\ndog\n\xff\n'.encode('latin-1'))
    with pytest.raises(DatasetMissing, match='classes.txt, row 3: not UTF-8'):
        read_image_folder(csv_file(tmp_path / 'ok.csv', [f'{images}/cat_000.jpg,cat']),
                          classes_file=str(tmp_path / 'classes.txt'))


def test_a_full_disk_during_fetch_names_the_inputs_folder(server, tmp_path, monkeypatch, capsys):
    import utils.storage.saving
    from noisy_label import fetch
    data = npy_bytes(np.arange(300) % 10)
    server.put('cifar10-3-0.35', data)
    publish_as(monkeypatch, 'cifar10-3-0.35', data)

    def full(fd, mode):
        f = open(fd, mode)
        f.write = lambda block: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'No space left on device'))
        return f
    monkeypatch.setattr(utils.storage.saving.os, 'fdopen', full)
    with pytest.raises(SystemExit) as stopped:
        run_cli(fetch.main, ['cifar10-3-0.35', '--inputs_dir', str(tmp_path / 'inputs')])
    note, err = capsys.readouterr().err.splitlines()  # fetch says what it downloads, then refuses
    assert stopped.value.code == 2 and note.startswith('downloading ') and 'Traceback' not in err
    assert err.startswith(f'error: no space left on device writing {tmp_path / "inputs" / "cifar10-3-0.35.npy"}')
    assert err.endswith('or choose another --inputs_dir') and '--out_dir' not in err
    assert os.listdir(tmp_path / 'inputs') == []  # no partial download


# ---- own-data labels, checked up front -------------------------------------------------------------

def test_own_labels_that_cannot_be_classes_are_refused_naming_label_and_row(tmp_path, own):
    root, _ = own
    images = root / 'own' / 'images'
    rows = [f'{images}/cat_00{i}.jpg,{i % 2}' for i in range(6)]
    cases = [
        ([*rows, f'{images}/dog_000.jpg,7'], None, r'row 8: index label 7 is out of range: the labels below it run '
                                                   r'0\.\.1 \(class 2 has no images\)'),
        ([*rows, f'{images}/dog_000.jpg,-1'], None, 'row 8: index label -1 is out of range: class indices count from 0'),
        ([*rows, f'{images}/dog_000.jpg,cat'], None, r"mixes class indices and class names \(row 2: '0', row 8: 'cat'\)"),
        ([f'{images}/cat_000.jpg,cat', f'{images}/cat_001.jpg,dog'], ['cat', 'dog', 'cat'],
         "lists 'cat' twice"),
        ([f'{images}/cat_000.jpg,cat', f'{images}/cat_001.jpg,3'], ['cat', 'dog', 'fox'],
         r'row 3: index label 3 is out of range: there are 3 classes \(0\.\.2\)'),
        ([f'{images}/cat_000.jpg,cat', f'{images}/cat_001.jpg,cat'], None, "has a single class 'cat'"),
        ([f'{images}/cat_000.jpg,cat', f'{images}/ca\0t.jpg,dog'], None, r'row 3: the image path .* holds a NUL '
                                                                        r'character; fix the path'),
        ([f'{images}/cat_000.jpg,cat', 'path,label', f'{images}/cat_001.jpg,dog'], None,
         r"row 3: the header again \('path,label'\); keep one header, on the first row"),
        # class codes, not indices: refused before 0..310000000 is listed (that filled memory)
        ([f'{images}/cat_00{i}.jpg,{310000000 + 10000000 * (i % 3)}' for i in range(6)], None,
         r"class '0' has no training images \(329999998 empty classes among the indices 0\.\.330000000\); number "
         r"the classes 0, 1, 2"),
    ]
    for number, (train_rows, classes, message) in enumerate(cases):
        classes_file = None
        if classes:
            classes_file = str(tmp_path / f'classes{number}.txt')
            layouts.write(classes_file, classes)
        with pytest.raises(DatasetMissing, match=message):
            read_image_folder(csv_file(tmp_path / f'train{number}.csv', train_rows), classes_file=classes_file)
    names = [f'{images}/cat_000.jpg,cat', f'{images}/dog_000.jpg,dog']
    with pytest.raises(DatasetMissing, match=r"val.csv, row 2: label '1' is an index, but the classes are names "
                                             r"\(cat, dog\)"):
        read_image_folder(csv_file(tmp_path / 'names.csv', names), csv_file(tmp_path / 'val.csv',
                                                                           [f'{images}/cat_001.jpg,1']))
    with pytest.raises(DatasetMissing, match=r"val.csv, row 2: label 'owl' is not a known class"):
        read_image_folder(csv_file(tmp_path / 'names.csv', names), csv_file(tmp_path / 'val.csv',
                                                                           [f'{images}/cat_001.jpg,owl']))


def test_a_missing_own_data_file_is_refused_with_the_flag_that_names_it(tmp_path, own):
    root, _ = own
    with pytest.raises(DatasetMissing, match='training images not found: nothere. Give --train a folder of class '
                                             'folders or a CSV of path,label rows'):
        read_image_folder('nothere')
    with pytest.raises(DatasetMissing, match='val images not found: nothere. Give --val a folder'):
        read_image_folder(str(root / 'own' / 'labels.csv'), val='nothere')
    with pytest.raises(DatasetMissing, match='class list not found: nofile.txt. Give --classes a text file of the '
                                             'class names, one a line'):
        read_image_folder(str(root / 'own' / 'labels.csv'), classes_file='nofile.txt')


def test_a_label_csv_without_a_header_reads(tmp_path, own):
    root, _ = own
    images = sorted((root / 'own' / 'images').iterdir())
    rows = [f'{p},{"cat" if i % 2 else "dog"}' for i, p in enumerate(images[:20])]
    splits = read_image_folder(csv_file(tmp_path / 'bare.csv', rows, header=None), log=lambda line: None)
    assert splits.class_names == ['cat', 'dog'] and len(splits.train_paths) + len(splits.val_paths) == 20


def test_a_stray_class_or_a_typo_of_a_class_is_named_with_how_to_pin_the_classes(tmp_path, own):
    root, _ = own
    images = sorted((root / 'own' / 'images').iterdir())
    rows = [f'{p},{"cat" if i % 2 else "dog"}' for i, p in enumerate(images[:40])]
    said = []
    splits = read_image_folder(csv_file(tmp_path / 'clean.csv', rows), log=said.append)
    assert splits.class_names == ['cat', 'dog'] and said == []
    clean = list(rows)
    rows += [f'{images[40]},Cat', f'{images[41]},dgo', f'{images[42]},dog ']
    splits = read_image_folder(csv_file(tmp_path / 'stray.csv', rows), log=said.append)
    assert splits.class_names == ['Cat', 'cat', 'dgo', 'dog']  # trailing spaces are stripped, the rest stays
    assert said[0].startswith("warning: ") and "2 class(es) far smaller than the rest (median 10.5 images): 'Cat' " \
        "(1 image), 'dgo' (1 image)" in said[0]
    assert any("class 'Cat' (1 image) looks like a typo of 'cat' (20 images)" in line for line in said)
    assert any("class 'dgo' (1 image) looks like a typo of 'dog' (21 images)" in line for line in said)
    assert all(line.endswith('pass --classes FILE (one class name per line, in index order) to fix the class list')
               for line in said)
    numbered = [f'{p},class{i % 3}' for i, p in enumerate(images[:30])]
    said.clear()
    read_image_folder(csv_file(tmp_path / 'numbered.csv', numbered), log=said.append)
    assert said == []  # class0, class1, class2 are not typos of each other
    said.clear()  # a stray that sorts after the class it misspells is still the one named as the typo
    read_image_folder(csv_file(tmp_path / 'cta.csv', clean + [f'{images[43]},cta']), log=said.append)
    assert any("class 'cta' (1 image) looks like a typo of 'cat' (20 images)" in line for line in said)
    said.clear()  # one name in two Unicode forms (a file system storing it decomposed) prints as one name
    composed, decomposed = 'caf\u00e9', 'cafe\u0301'
    unicode_rows = [f'{p},{composed if i % 2 else "dog"}' for i, p in enumerate(images[:40])]
    read_image_folder(csv_file(tmp_path / 'nfd.csv', unicode_rows + [f'{images[44]},{decomposed}']), log=said.append)
    assert any(f"class {decomposed!r} (1 image) looks like a typo of {composed!r} (20 images)" in line for line in said)
    said.clear()
    layouts.write(str(tmp_path / 'classes.txt'), ['Cat', 'cat', 'dgo', 'dog'])
    read_image_folder(str(tmp_path / 'stray.csv'), classes_file=str(tmp_path / 'classes.txt'), log=said.append)
    assert said == []  # pinned: the list is the user's


# ---- prediction checks its run -------------------------------------------------------------------

def test_prediction_with_data_that_does_not_fit_the_run_is_refused(tmp_path, digits):
    _, run_dir = run(cfg_for(tmp_path, '--nepoch', '1', '--n_samples', '0'), lambda c: subset(digits, 200, 50))
    with pytest.raises(SetupError, match=f'predict.py {run_dir}: the run was trained on digits-sub200, this command '
                                         f'reads digits; predict with data of the dataset the run was trained on'):
        predict.main([run_dir])
    small = subset(digits, 200, 50, size=16)
    small.name = 'digits-sub200'
    with pytest.raises(SetupError, match=r"its images are \(3, 16, 16\), the run's \(3, 32, 32\)"):
        predict_run(demo_digits.config([]), lambda c: small, run_dir)
    with pytest.raises(SetupError, match=f'predict.py {run_dir} applies the run as it was trained and does not take '
                                         f'--k 3 \\(the run has 10\\): drop those flags'):
        predict.main([run_dir, '--k', '3'])
    with pytest.raises(SetupError, match=f"predict.py {run_dir} labels images with the run's best checkpoint and "
                                         f"trains nothing, so --nepoch would do nothing: drop it \\(python "
                                         f"demo_digits.py --resume {run_dir} trains on\\)"):
        predict.main([run_dir, '--nepoch', '5'])  # a resume may change it: it was taken and ignored
    with pytest.raises(SetupError, match='so --cuda_graph, --frozen_kernels would do nothing: drop them'):
        predict.main([run_dir, '--cuda_graph', 'off', '--frozen_kernels', 'eager'])


def test_prediction_with_other_f_p_weights_than_the_run_was_trained_with_is_refused(tmp_path, digits):
    """A features file (or an encoder file, which a pre-training's --resume exports over) replaced after the run
    was trained: its features would be denoised as if they were the run's, to labels near chance."""
    small = subset(digits, 200, 50)
    rng = np.random.default_rng(0)
    feats = {s: rng.normal(size=(n, 8)).astype(np.float32) for s, n in (('train', 200), ('val', 50), ('test', 50))}
    path = tmp_path / 'feats.npz'
    save_feature_file(path, feats, {})
    _, run_dir = run(cfg_for(tmp_path, '--nepoch', '1', '--n_samples', '0', '--fp_encoder', 'features',
                             '--fp_checkpoint', str(path)), lambda c: small)
    assert predict_run(demo_digits.config([]), lambda c: small, run_dir)['n'] == 50
    save_feature_file(path, dict(feats, test=feats['test'][::-1].copy()), {})
    os.remove(os.path.join(run_dir, 'predict_test_labels.npy'))
    with pytest.raises(SetupError, match=f'predict.py {run_dir}: the f_p encoder \\(--fp_encoder features '
                                         f'--fp_checkpoint {path}\\) is not the one the run was trained with '
                                         f'\\(weights [0-9a-f]+ now, [0-9a-f]+ then\\); put the run\'s encoder back'):
        predict_run(demo_digits.config([]), lambda c: small, run_dir)
    assert not os.path.exists(os.path.join(run_dir, 'predict_test_labels.npy'))


def test_split_flags_given_with_predict_are_used(tmp_path, own):
    root, run_dir = own
    images = root / 'own' / 'images'
    named = [f'{root}/own/test/{c}/test_{c}_{i}.jpg' for c in ('cat', 'dog') for i in range(2)]
    other = csv_file(tmp_path / 'other.csv', [f'{path},{path.split("/")[-2]}' for path in named])
    result = predict.main([run_dir, '--test', other, '--n_samples', '0'])
    assert result['split'] == 'test' and result['n'] == 4  # the images --test names, not the run's test split
    labels = np.load(os.path.join(run_dir, 'predict_test_labels.npy'))
    assert result['accuracy'] == pytest.approx(np.mean(labels == [0, 0, 1, 1]))
    with open(os.path.join(run_dir, 'predict_test.csv'), newline='') as f:  # which image each label is of
        rows = list(csv.reader(f))
    assert rows == [['path', 'label', 'class'],
                    *([path, str(y), ('cat', 'dog')[y]] for path, y in zip(named, labels.tolist()))]
    # the run's own test split, where the labels of the --test list stand: refused, not replaced unnoticed
    before = snapshot(run_dir)
    with pytest.raises(SetupError, match=f'{run_dir} holds the labels predicted for another test split \(4 images\), '
                                         f'and labelling this one \(\d+ images: other files'):
        predict.main([run_dir, '--n_samples', '0'])
    assert snapshot(run_dir) == before
    moved = tmp_path / 'moved'  # the same images, copied elsewhere: the same list, labelled anew
    shutil.copytree(root / 'own' / 'test', moved / 'test')
    csv_file(tmp_path / 'other_moved.csv', [f'{moved}/test/{c}/test_{c}_{i}.jpg,{c}' for c in ('cat', 'dog')
                                            for i in range(2)])
    assert predict.main([run_dir, '--test', str(tmp_path / 'other_moved.csv'), '--n_samples', '0'])['n'] == 4
    remove_files(run_dir, [f'predict_test{suffix}' for suffix in ('_labels.npy', '.csv', '.json')])
    with pytest.raises(SetupError, match='--folder labels the images under .*, but --test names a split'):
        predict.main([run_dir, '--folder', str(images), '--test', other])
    with pytest.raises(SetupError, match="the classes differ \\('dog' here, 'cat' in the run; 'cat' here, 'dog' in "
                                         "the run\\)"):  # another order: other indices
        predict.main([run_dir, '--test', other, '--classes',
                                csv_file(tmp_path / 'classes.txt', ['dog', 'cat', 'fox', 'owl'], header=None)])


def test_prediction_records_its_files_and_overwrites_none_it_did_not_write(own, monkeypatch):
    root, run_dir = own
    mine = os.path.join(run_dir, 'predict_val_labels.npy')
    np.save(mine, np.arange(3))  # a user's file under the name a prediction would take
    before = snapshot(run_dir)
    with pytest.raises(SetupError, match=f'{mine} is there and was not written by this package, and predict.py '
                                         f'would write over it: move it away'):
        predict.main([run_dir, '--split', 'val', '--n_samples', '0'])
    assert snapshot(run_dir) == before
    os.remove(mine)
    predict.main([run_dir, '--split', 'val', '--n_samples', '2'])  # labels and sampled probabilities
    assert {'predict_val_labels.npy', 'predict_val_probs.npy'} <= read_record(run_dir)
    predict.main([run_dir, '--split', 'val', '--n_samples', '0'])  # labels only: the earlier probabilities go
    probs = os.path.join(run_dir, 'predict_val_probs.npy')
    assert not os.path.exists(probs) and 'predict_val_probs.npy' not in read_record(run_dir)
    np.save(probs, np.ones(3))  # a user's file under the name the package removed: theirs, not the package's
    before = snapshot(run_dir)
    with pytest.raises(SetupError, match=f'{probs} is there and was not written by this package'):
        predict.main([run_dir, '--split', 'val', '--n_samples', '0'])
    assert snapshot(run_dir) == before
    os.remove(probs)
    assert LOCK_NAME not in os.listdir(run_dir)
    training = RunClaim(run_dir, fresh=False)  # a run going on in the folder: refused before any work
    monkeypatch.setattr(predict_module, 'label_images', lambda *a: pytest.fail('labelled before the claim'))
    try:
        with pytest.raises(SetupError, match='is in use by another run right now'):
            predict.main([run_dir, '--split', 'val', '--n_samples', '0'])
    finally:
        training.release()


# ---- features finite after their cast -----------------------------------------------------------

def test_features_beyond_float32_are_refused_naming_the_file(tmp_path, digits):
    path = tmp_path / 'big.npz'
    np.savez(path, train=np.full((200, 4), 1e39), val=np.ones((50, 4)), test=np.ones((50, 4)))
    with pytest.raises(FeatureFileError, match=f"features file {path}: split train holds values beyond float32's "
                                               f"range"):
        load_feature_file(str(path))
    with pytest.raises(FeatureFileError, match='beyond float32'):
        run(cfg_for(tmp_path, '--fp_encoder', 'features', '--fp_checkpoint', str(path)), lambda c: subset(digits, 200, 50))
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'cache').exists()
    save_feature_file(str(path), {'train': np.ones((200, 4)), 'val': np.ones((50, 4)), 'test': np.ones((50, 4))}, {})
    assert load_feature_file(str(path))[0]['train'].dtype == np.float32
