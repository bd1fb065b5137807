"""Food-101N, Clothing1M and WebVision: official layouts read, scripts run end to end, torchrun."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import predict
import train_Clothing1M
import train_Food101N
import train_WebVision
from benchmarks import layouts
from utils.data.clothing1m import cc_select_files, read_clothing1m
from utils.data.food101n import read_food101n
from utils.data.image_files import KEYS_VIEW_EPOCH, Decoding, ImageFiles
from utils.data.images import CLOTHING1M_MEAN, CLOTHING1M_STD
from utils.data.webvision import read_webvision
from utils.encoders.clip import load_clip
from utils.encoders.imagenet import load_imagenet_resnet
from utils.errors import DatasetMissing, PublishedInputError
from utils.prepare import KEYS_VIEW_SEED
from utils.storage.loading import load_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_flags(tmp_path, tiny_clip_path, *more):
    # a tiny CLIP as f_p for every dataset (Clothing1M's default, the CC ResNet-50, is tested in test_cc_net.py)
    return ['--fp_encoder', 'CLIP', '--CLIP_type', tiny_clip_path, '--diff_encoder', 'resnet18_l',
            '--diff_encoder_weights', 'random',
            '--image_size', '32', '--k', '5', '--nepoch', '2', '--warmup_epochs', '1', '--batch_size', '32',
            '--feature_dim', '64', '--num_workers', '0', '--n_samples', '2', '--device', 'cpu',
            '--out_dir', str(tmp_path / 'runs'), '--cache_dir', str(tmp_path / 'cache'), '--run_name', 'r', *more]


def test_food101n_layout(tmp_path):
    n_root, f_root = layouts.food101n(str(tmp_path))
    s = read_food101n(n_root, f_root)
    assert s.resample == 'bicubic'  # the authors' Food-101N and WebVision loaders resize bicubic
    assert s.n_class == 3 and len(s.test_paths) == 24 and s.class_names[0] == 'apple_pie'
    # verified-correct entries are the validation split and are held out of training
    assert len(s.val_paths) == 9 and not set(s.val_paths) & set(s.train_paths)
    assert len(s.train_paths) == 72 - 9 and all(os.path.isfile(p) for p in s.train_paths + s.test_paths)
    assert s.train_labels[0] == 0 and s.test_labels[-1] == 2


def test_clothing1m_layout_and_subset(tmp_path):
    root = layouts.clothing1m(str(tmp_path))
    s = read_clothing1m(root)
    assert (len(s.train_paths), len(s.val_paths), len(s.test_paths), s.n_class) == (96, 16, 16, 4)
    assert s.resample == 'bilinear'  # the authors' torchvision Resize
    # their loader's statistics for every network it feeds, the diffusion encoder's ResNet-50 too
    assert (s.mean, s.std) == (CLOTHING1M_MEAN, CLOTHING1M_STD)
    assert s.train_labels[0] == 1 and s.train_labels[1] == 1  # key 0 flipped, key 1 clean
    layouts.write(os.path.join(root, 'subset.txt'), ['images/1/01/00001.jpg', 'images/2/02/00002.jpg 3'])
    s = read_clothing1m(root, os.path.join(root, 'subset.txt'))
    assert s.train_labels.tolist() == [1, 3] and s.train_paths[0].endswith('00001.jpg')


def test_clothing1m_cc_select_pairs_keys_with_the_label_file(tmp_path):
    root = layouts.clothing1m(str(tmp_path))
    keys, labels = cc_select_files(root)  # found in annotations/, the authors' layout
    s = read_clothing1m(root, keys, labels)
    assert len(s.train_paths) == 80 and len(s.val_paths) == 16
    # key 0's noisy label is 1; the selection file labels it 0, and its label wins
    assert s.train_paths[0].endswith('00000.jpg') and s.train_labels[0] == 0
    assert s.train_labels.tolist() == [i % 4 for i in range(96) if i % 6 != 5]
    layouts.write(labels, ['0'] * 79)
    with pytest.raises(DatasetMissing, match='80 images but .* 79 labels'):
        read_clothing1m(root, keys, labels)
    layouts.write(labels, ['0'] * 79 + ['4'])
    with pytest.raises(DatasetMissing, match=r'line 80: expected a label in 0\.\.3'):
        read_clothing1m(root, keys, labels)
    os.remove(labels)
    with pytest.raises(PublishedInputError, match=r'could not download .*cc_select_img\.txt.*copy that file to'):
        cc_select_files(root)  # not in the dataset folder: the published pair is fetched (offline here)


def test_webvision_layout_keeps_the_first_classes(tmp_path):
    root, imagenet = layouts.webvision(str(tmp_path / 'wv'), str(tmp_path / 'imagenet'))
    s = read_webvision(root, imagenet, n_class=3)
    assert s.resample == 'bicubic'
    assert len(s.train_paths) == 60 and s.train_labels.max() == 2
    assert len(s.val_paths) == 15 and len(s.test_paths) == 15 and s.test_labels.tolist() == sorted(s.test_labels)


@pytest.mark.parametrize('form', layouts.ILSVRC_LABEL_FORMS)
def test_webvision_reads_the_flat_ilsvrc2012_folder_with_its_label_file(tmp_path, form):
    """The official flat validation folder, its label file read directly: the images of the first classes
    (an image of a class beyond them is left out), labelled through WordNet ids or class indices."""
    root, imagenet = layouts.webvision(str(tmp_path / 'wv'), str(tmp_path / 'val'), flat=form)
    by_folders = read_webvision(*layouts.webvision(str(tmp_path / 'wv2'), str(tmp_path / 'folders')), n_class=3)
    # a file of another name is named by the flag; the known names are found beside the images
    named = os.path.join(imagenet, 'labels.txt') if form == 'wnid' else None
    s = read_webvision(root, imagenet, n_class=3, val_labels=named)
    # 4 classes interleaved, 5 images each: the 15 of classes 0-2, in file order
    expected = [(f'ILSVRC2012_val_{i:08d}.JPEG', (i - 1) % 4) for i in range(1, 21) if (i - 1) % 4 < 3]
    assert [(os.path.basename(p), c) for p, c in zip(s.test_paths, s.test_labels.tolist())] == expected
    assert sorted(s.test_labels.tolist()) == sorted(by_folders.test_labels.tolist())
    assert 'test_labels' in s.notes


def test_webvision_flat_folder_refusals_name_the_fix(tmp_path):
    root, imagenet = layouts.webvision(str(tmp_path / 'wv'), str(tmp_path / 'val'), flat='authors')
    labels = os.path.join(imagenet, 'ILSVRC2012_val_label.txt')
    os.remove(os.path.join(imagenet, 'ILSVRC2012_val_00000002.JPEG'))  # class 1
    with pytest.raises(DatasetMissing, match=r'lacks 1 of the 15 validation images .*ILSVRC2012_val_00000002'):
        read_webvision(root, imagenet, n_class=3)
    os.remove(os.path.join(imagenet, 'ILSVRC2012_val_00000004.JPEG'))  # class 3: not a test image, not needed
    with pytest.raises(DatasetMissing, match='ILSVRC2012_val_00000002'):
        read_webvision(root, imagenet, n_class=3, val_labels=labels)
    layouts.write(labels, ['ILSVRC2012_val_00000001.JPEG 12'])
    with pytest.raises(DatasetMissing, match=r'line 1: expected .*index below 4'):
        read_webvision(root, imagenet, n_class=3)
    os.remove(labels)  # no label file: the authors' published one is fetched (offline here: its path is named)
    with pytest.raises(PublishedInputError, match=r'could not download .*ILSVRC2012_val_label\.txt.*copy that file to'):
        read_webvision(root, imagenet, n_class=3)
    devkit = layouts.webvision(str(tmp_path / 'wv3'), str(tmp_path / 'val3'), flat='devkit')[1]
    os.remove(os.path.join(devkit, 'ILSVRC2012_devkit_t12', 'data', 'meta.mat'))
    with pytest.raises(DatasetMissing, match="meta.mat, not found"):
        read_webvision(root, devkit, n_class=3)
    with pytest.raises(DatasetMissing, match='labels a flat folder'):
        read_webvision(*layouts.webvision(str(tmp_path / 'wv4'), str(tmp_path / 'f4')), n_class=3, val_labels=labels)


def test_missing_and_malformed_files_are_named(tmp_path):
    root = layouts.clothing1m(str(tmp_path))
    os.remove(os.path.join(root, 'clean_val_key_list.txt'))
    with pytest.raises(DatasetMissing, match='clean_val_key_list.txt'):
        read_clothing1m(root)
    layouts.write(os.path.join(root, 'clean_val_key_list.txt'), ['images/0/00/99999.jpg'])
    with pytest.raises(DatasetMissing, match='no label in clean_label_kv.txt'):
        read_clothing1m(root)
    layouts.write(os.path.join(root, 'noisy_label_kv.txt'), ['images/0/00/00000.jpg one'])
    with pytest.raises(DatasetMissing, match='line 1: expected'):
        read_clothing1m(root)
    with pytest.raises(DatasetMissing, match='Food-101N class list'):
        read_food101n(str(tmp_path / 'nothing'), str(tmp_path / 'nothing'))


def test_food101n_script_end_to_end(tmp_path, tiny_clip_path):
    n_root, f_root = layouts.food101n(str(tmp_path / 'data'))
    summary, run_dir = train_Food101N.main(['--food101n_root', n_root, '--food101_root', f_root,
                                            *small_flags(tmp_path, tiny_clip_path, '--seed', '7')])
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert (config['n_train'], config['n_val'], config['n_test'], config['n_class']) == (63, 9, 24, 3)
    assert config['noise_source'] == 'food101n labels' and config['fp_dim'] == 32
    assert config['candidates'] == 'neighbours' and 'per_class_drawn' not in config  # the authors' Food-101N rule
    assert 0 <= summary['test_acc'] <= 1 and np.load(os.path.join(run_dir, 'train_probs.npy')).shape == (63, 3)
    # the authors' encoder: it reads the streamed crops, in training mode, and is never optimised
    assert (config['diff_backbone'], config['freeze_diff_encoder'], config['eval_bn']) == ('tuned', True, 'batch')
    start = load_imagenet_resnet('resnet18', 'random', seed=config['seed']).net.state_dict()
    trained = load_torch(os.path.join(run_dir, 'last.pt'))['model']
    weights = [k for k in start if 'running_' not in k and 'num_batches' not in k]
    assert all(torch.equal(trained['diff_encoder.' + k], start[k]) for k in weights)
    assert not torch.equal(trained['diff_encoder.bn1.running_mean'], start['bn1.running_mean'])  # training mode
    # its retrieval keys: f_p of one random crop + flip of each training image, drawn from the fixed key
    # seed whatever the run's (the authors cached one view), the evaluation splits' of the centre crops
    cache = tmp_path / 'cache'
    cached = sorted(f.split('_')[1:3] for f in os.listdir(cache) if f.startswith('food101n_'))
    assert cached == [['test', 'center'], ['train', 'augmented'], ['val', 'center']]
    fp = load_clip(tiny_clip_path, 'cpu')
    paths = read_food101n(n_root, f_root).paths('train')
    # Food-101N's images are resized bicubic, as the authors' loader does
    decoding = Decoding(32, 'bicubic')
    keys = fp.encode(torch.stack([ImageFiles(paths, decoding, augment=(KEYS_VIEW_SEED, KEYS_VIEW_EPOCH))[i]
                                  for i in range(4)]))
    centre = fp.encode(torch.stack([ImageFiles(paths, decoding)[i] for i in range(4)]))
    stored = load_torch(str(next(cache / f for f in os.listdir(cache) if f.startswith('food101n_train_augmented'))))
    assert torch.allclose(stored['value'][:4], keys, atol=1e-5)
    assert not torch.allclose(stored['value'][:4], centre, atol=1e-3)


def test_clothing1m_script_with_a_classifier_as_f_p(tmp_path, tiny_clip_path):
    root = layouts.clothing1m(str(tmp_path / 'data'))
    import torchvision
    torch.manual_seed(0)
    ckpt = tmp_path / 'cc_resnet18.pt'
    net = torchvision.models.resnet18(num_classes=4)
    torch.save({'module.' + k: v for k, v in net.state_dict().items()}, ckpt)  # as saved from DataParallel
    flags = small_flags(tmp_path, tiny_clip_path)
    del flags[flags.index('--CLIP_type'):flags.index('--CLIP_type') + 2]  # a classifier reads no CLIP file
    summary, run_dir = train_Clothing1M.main(['--clothing1m_root', root, *flags, '--fp_encoder', 'classifier',
                                              '--fp_checkpoint', str(ckpt), '--fp_arch', 'resnet18'])
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['fp_dim'] == 512 and config['n_train'] == 80  # the cc_select subset
    # the authors' balanced draw: 10,000 per class asked, lowered to the smallest class (16 of 80)
    assert config['per_class_drawn'] == 16 and config['candidate_weights'] == 'uniform'
    assert summary['best_epoch'] is not None


def test_webvision_script_end_to_end(tmp_path, tiny_clip_path):
    """The flat ILSVRC2012 folder as published, and top-5 beside top-1 (6 classes: top-5 is measured)."""
    root, imagenet = layouts.webvision(str(tmp_path / 'wv'), str(tmp_path / 'imagenet'), n_class=6, flat='authors')
    summary, run_dir = train_WebVision.main(['--webvision_root', root, '--imagenet_val_root', imagenet,
                                             '--n_class', '6', *small_flags(tmp_path, tiny_clip_path)])
    assert json.load(open(os.path.join(run_dir, 'config.json')))['n_test'] == 30
    assert summary['test_labels'].endswith('ILSVRC2012_val_label.txt (<file> [<index>] <WordNet id>)')
    log = [json.loads(line) for line in open(os.path.join(run_dir, 'log.jsonl'))]
    best = next(r for r in log if r['epoch'] == summary['best_epoch'])
    assert (summary['test_top5_acc'], summary['best_val_top5']) == (best['test_top5'], best['val_top5'])
    assert all(r['test_top5'] >= r['test_acc'] and r['val_top5'] >= r['val_acc'] for r in log)


def test_a_cifar_stem_diffusion_encoder_reads_decoded_files_too(tmp_path, tiny_clip_path):
    root = layouts.clothing1m(str(tmp_path / 'data'))
    flags = small_flags(tmp_path, tiny_clip_path, '--nepoch', '1')
    flags[flags.index('resnet18_l')] = 'resnet18'
    at = flags.index('--diff_encoder_weights')
    del flags[at:at + 2]  # a CIFAR-stem encoder has no ImageNet backbone to take weights
    summary, run_dir = train_Clothing1M.main(['--clothing1m_root', root, *flags])
    assert json.load(open(os.path.join(run_dir, 'config.json')))['fp_train_view'] == 'augmented'
    assert summary['epochs'] == 1 and os.path.isfile(os.path.join(run_dir, 'best.pt'))


def cache_tensors(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith(('clothing1m_', 'food101n_')):
            out[name] = load_torch(os.path.join(folder, name))['value']
    return out


@pytest.mark.parametrize('dataset', ['clothing1m', 'food101n'])
def test_torchrun_two_processes_build_the_same_feature_cache(tmp_path, tiny_clip_path, dataset):
    if dataset == 'clothing1m':  # f_p and the ResNet's features of the centre crops, three splits each
        script, data, more, n_caches = train_Clothing1M, ['--clothing1m_root', layouts.clothing1m(
            str(tmp_path / 'data'))], ['--diff_backbone', 'cached'], 6
    else:  # the authors' recipe: f_p keys of one seeded augmented view; a streamed, frozen ResNet
        n_root, f_root = layouts.food101n(str(tmp_path / 'data'))
        script, data, more, n_caches = train_Food101N, ['--food101n_root', n_root, '--food101_root', f_root], [], 3
    script.main([*data, *small_flags(tmp_path / 'one', tiny_clip_path, *more)])  # one process: this one
    # --standalone: a free port each time (a fixed one clashed with the other dataset's run on another worker)
    two = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.basename(script.__file__), *data, *small_flags(tmp_path / 'two', tiny_clip_path, *more)]
    done = subprocess.run(two, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = cache_tensors(tmp_path / 'one' / 'cache'), cache_tensors(tmp_path / 'two' / 'cache')
    assert one.keys() == two.keys() and len(one) == n_caches
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=1e-5)
    assert not [n for n in os.listdir(tmp_path / 'two' / 'cache') if '.part' in n]
    summary = json.load(open(tmp_path / 'two' / 'runs' / 'r' / 'summary.json'))
    config = json.load(open(tmp_path / 'two' / 'runs' / 'r' / 'config.json'))
    assert config['world_size'] == 2 and summary['epochs'] == 2


def test_predict_with_a_clothing1m_run(tmp_path, tiny_clip_path):
    root = layouts.clothing1m(str(tmp_path / 'data'))
    summary, run_dir = train_Clothing1M.main(['--clothing1m_root', root, *small_flags(tmp_path, tiny_clip_path)])
    result = predict.main([run_dir, '--split', 'test', '--clothing1m_root', root, '--n_samples', '0', '--device', 'cpu'])
    assert result['accuracy'] == pytest.approx(summary['test_acc'])
