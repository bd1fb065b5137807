"""Feature-extraction throughput from a folder of JPEGs, decoding included (the image-file datasets' path).

    python -m benchmarks.extraction --n 20000 --workers 16                 # one GPU: CLIP ViT-L/14
    python -m benchmarks.extraction --n 64 --small --workers 2             # CPU smoke test

Writes --n random 256×256 JPEGs (or reads --folder), then runs the package's extraction
(DataLoader workers decode, resize and centre-crop to 224; the encoder runs in bf16 on the device)
and reports images/s. Then each half alone, so the two limits are told apart: decoding alone (the
same workers and batches, nothing encoded) and the encoder alone (the same number of 224-px uint8
images, already on the device). Random CLIP weights unless --clip is given (speed does not depend
on them).
"""
import argparse
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from benchmarks.common import device_line, peak_gib, random_images, report, reset_peak, timed
from utils.data.image_files import Decoding, image_batches
from utils.encoders.cache import encode_files
from utils.encoders.clip import CLIP_TOWERS, load_clip
from utils.encoders.random_weights import save_random_clip
from utils.runtime.devices import resolve_device


def write_jpegs(folder, n, size=256, seed=0):
    def one(i):
        rng = np.random.default_rng(seed + i)
        pixels = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)  # smooth-ish content
        image = Image.fromarray(pixels).resize((size, size), Image.BILINEAR)
        path = os.path.join(folder, f'{i // 1000:03d}', f'{i:06d}.jpg')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path, quality=90)
        return path
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(one, range(n)))


def decode_only(paths, args, device):
    """(images, seconds) of decoding alone: the extraction's workers and batches, nothing encoded."""
    def decode():
        return sum(len(b) for b in image_batches(paths, args.batch_size, args.workers, Decoding(args.image_size)))
    return timed(decode, device)


def encode_only(encoder, n, args, device):
    """Seconds the encoder takes for n uint8 images at the decoded size, already on the device."""
    batch = random_images(args.batch_size, size=args.image_size, device=device)
    def encode():
        for _ in range(math.ceil(n / args.batch_size)):
            encoder.encode(batch)
    return timed(encode, device)[1] * n / (math.ceil(n / args.batch_size) * args.batch_size)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=20000)
    p.add_argument('--folder', help='use the JPEGs under this folder instead of writing new ones')
    p.add_argument('--arch', default='ViT-L/14')
    p.add_argument('--clip', help='a real CLIP checkpoint')
    p.add_argument('--clip_tower', default='fused', choices=CLIP_TOWERS, help='how the CLIP tower runs')
    p.add_argument('--small', action='store_true', help='a tiny CLIP stand-in (CPU smoke test)')
    p.add_argument('--batch_size', type=int, default=512)
    p.add_argument('--workers', type=int, default=os.cpu_count())
    p.add_argument('--image_size', type=int, default=224)
    p.add_argument('--device', default='auto')
    p.add_argument('--out', help='write the result as JSON here')
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(args.folder) for f in fs if f.endswith('.jpg'))
        else:
            paths = write_jpegs(os.path.join(tmp, 'jpegs'), args.n)
        arch = 'tiny' if args.small else args.arch
        encoder = load_clip(args.clip or save_random_clip(arch, os.path.join(tmp, 'clip.pt')), device,
                            tower=args.clip_tower)
        encode_files([encoder], paths[:args.batch_size], args.batch_size, args.workers, Decoding(args.image_size),
                     'warm-up')
        reset_peak(device)
        (features,), seconds = timed(lambda: encode_files([encoder], paths, args.batch_size, args.workers,
                                                           Decoding(args.image_size), 'extract'), device)
        peak = peak_gib(device)
        decoded, decode_s = decode_only(paths, args, device)
        encode_s = encode_only(encoder, len(paths), args, device)
    assert decoded == len(paths) == len(features)
    result = {'images': len(paths), 'seconds': round(seconds, 2), 'images_per_s': round(len(paths) / seconds),
              'decode_images_per_s': round(len(paths) / decode_s), 'encode_images_per_s': round(len(paths) / encode_s),
              'bound_by': 'decoding' if decode_s > encode_s else 'the encoder',
              'encoder': f'CLIP {arch} ({args.clip_tower} tower)', 'feature_dim': features.shape[1],
              'workers': args.workers, 'peak_gib': round(peak, 2), 'device': device_line(device)}
    return report(result, args.out)


if __name__ == '__main__':
    main()
