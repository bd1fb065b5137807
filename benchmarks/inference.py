"""Seconds to classify 10k and 50k images (encoder + 10-step DDIM), the paper's timing table.

    python -m benchmarks.inference                         # one GPU: the full table
    python -m benchmarks.inference --sizes 64 --small      # CPU smoke test (tiny CLIP stand-in)
    python -m benchmarks.inference --columns ViT-L/14 --sizes 10000 --profile   # where its time goes
    python -m benchmarks.inference --columns ViT-B/32 ViT-B/16 ViT-L/14 --sizes 10000 --clip_towers clip fused

Columns: Standard (a ResNet-34 classifier), SimCLR (ResNet-50, CIFAR stem), CLIP ViT-B/32, ViT-B/16,
ViT-L/14. Each runs the package's inference path: uint8 32×32 images on the device → f_p (bf16,
channels-last; CLIP resizes bicubically to 224 on the device) → diffusion-encoder embedding →
10-step DDIM → class. Weights are random unless given (speed does not depend on them), written and
read through the real loaders. Prints seconds, images/s and peak GPU memory per column. The CLIP
columns run the fused tower (utils/encoders/clip_tower.py) unless --clip_towers names others: `clip fused`
times the clip package's tower and the fused one from the same weights on the same device, in one
process (each fused row then gains `vs_clip_tower`, the clip tower's seconds ÷ its own). With
--profile each column's smallest size is classified once more, after its timing, under torch.profiler:
its row gains the ops that took the most self time.
"""
import argparse
import json
import os
import tempfile

import torch

from benchmarks.common import AUTHORS_H100, device_line, peak_gib, profiled, random_images, reset_peak, timed
from model_diffusion import Denoiser, Diffusion
from utils.classifier import classify_standard
from utils.data.images import CIFAR_MEAN, CIFAR_STD, channels_last
from utils.diff_encoders import build_diff_encoder, diff_encoder_input
from utils.encoders.clip import CLIP_TOWERS, load_clip
from utils.encoders.random_weights import save_random_clip, save_random_simclr
from utils.encoders.simclr import load_simclr
from utils.evaluate import classify_images
from utils.networks import cifar_resnet
from utils.runtime.devices import resolve_device
from utils.storage.saving import save_json

COLUMNS = ('Standard', 'SimCLR', 'ViT-B/32', 'ViT-B/16', 'ViT-L/14')


def build_column(name, tower, args, device, folder):
    """(classify function, description) for one column of the table (`tower`: the CLIP tower, or None)."""
    if name == 'Standard':
        net = channels_last(cifar_resnet('resnet34', 10).to(device).eval(), device)
        return lambda images: classify_standard(images, net, CIFAR_MEAN, CIFAR_STD, args.batch_size), 'ResNet-34'
    if name == 'SimCLR':
        path = args.simclr or save_random_simclr('resnet18' if args.small else 'resnet50',
                                                 os.path.join(folder, 'simclr.pt'))
        encoder = load_simclr(path, device)
    else:
        arch = 'tiny' if args.small else name
        path = args.clip.get(name) or os.path.join(folder, arch.replace('/', '-') + '.pt')
        if not os.path.exists(path):  # one random checkpoint per architecture, whatever the towers
            save_random_clip(arch, path)
        encoder = load_clip(path, device, tower=tower)
    denoiser = Denoiser(10, encoder.dim, args.feature_dim,
                        build_diff_encoder(args.diff_encoder, args.feature_dim, encoder.dim, (3, 32, 32))).to(device).eval()
    denoiser = channels_last(denoiser, device)
    diffusion = Diffusion().to(device)
    diff_input = diff_encoder_input(args.diff_encoder)

    def classify(images):
        return classify_images(images, encoder, denoiser, diffusion, diff_input, CIFAR_MEAN, CIFAR_STD,
                               args.batch_size, args.ddim_n_step)
    tower = f', {tower} tower' if tower else ''
    return classify, f'{encoder.name} {encoder.dim}-d{tower} + {args.diff_encoder}'


def variants(args):
    """(column, CLIP tower or None) in the order they are timed."""
    return [(name, tower) for name in args.columns
            for tower in (args.clip_towers if name.startswith('ViT') else [None])]


def measure(args):
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, tower in variants(args):
            classify, what = build_column(name, tower, args, device, folder)
            classify(random_images(min(args.batch_size, max(args.sizes)), device=device))  # warm-up
            for n in args.sizes:
                images = random_images(n, device=device, seed=n)
                reset_peak(device)
                labels, seconds = timed(lambda: classify(images), device)
                assert labels.shape == (n,)
                authors = AUTHORS_H100['inference_s'].get(n, {}).get(name)
                rows.append({'column': name, 'tower': tower, 'model': what, 'images': n, 'seconds': round(seconds, 3),
                             'images_per_s': round(n / seconds), 'peak_gib': round(peak_gib(device), 2),
                             'authors_s': authors,
                             'speedup': round(authors / seconds, 1) if authors and device.type == 'cuda' else None})
            if args.profile:  # untimed: the profiler slows what it watches
                smallest = min(args.sizes)
                images = random_images(smallest, device=device, seed=smallest)
                row = next(r for r in rows if (r['column'], r['tower'], r['images']) == (name, tower, smallest))
                row['profile'] = profiled(lambda: classify(images), device)[1]
            classify = None  # free this column's models before the next
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    compare_towers(rows)
    return rows, device


def compare_towers(rows):
    """Each fused-tower row gains the clip package's tower's seconds ÷ its own, where both were timed."""
    for row in rows:
        old = next((r for r in rows if r['tower'] == 'clip' and (r['column'], r['images']) ==
                    (row['column'], row['images'])), None)
        if row['tower'] == 'fused' and old is not None:
            row['clip_tower_s'] = old['seconds']
            row['vs_clip_tower'] = round(old['seconds'] / row['seconds'], 2)


def table(rows, sizes, args):
    both = len(args.clip_towers) > 1
    heads = [f'{c} ({t} tower)' if t and both else c for c, t in variants(args)]
    lines = ['| images | ' + ' | '.join(heads) + ' |', '|---' * (len(heads) + 1) + '|']
    for n in sizes:
        cells = []
        for c, t in variants(args):
            r = next(r for r in rows if (r['column'], r['tower'], r['images']) == (c, t, n))
            ratio = f' ({r["speedup"]}×)' if r['speedup'] else ''
            cells.append(f'{r["seconds"]:.2f} s{ratio}')
        lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', type=int, nargs='+', default=[10000, 50000])
    p.add_argument('--columns', nargs='+', default=list(COLUMNS), choices=COLUMNS)
    p.add_argument('--batch_size', type=int, default=1000)
    p.add_argument('--diff_encoder', default='resnet18', help='diffusion encoder in the SimCLR/CLIP columns')
    p.add_argument('--feature_dim', type=int, default=256)
    p.add_argument('--ddim_n_step', type=int, default=10)
    p.add_argument('--device', default='auto')
    p.add_argument('--simclr', help='a real SimCLR checkpoint (default: random ResNet-50 weights)')
    p.add_argument('--clip_b32', help='a real CLIP ViT-B/32 checkpoint'), p.add_argument('--clip_b16'),
    p.add_argument('--clip_l14')
    p.add_argument('--clip_towers', nargs='+', default=['fused'], choices=CLIP_TOWERS,
                   help="the CLIP tower(s) each CLIP column runs: fused (utils/encoders/clip_tower.py) and/or clip (the clip "
                        "package's own module); both: an A/B on the same device")
    p.add_argument('--small', action='store_true', help='tiny CLIP and ResNet-18 SimCLR stand-ins (CPU smoke test)')
    p.add_argument('--out', help='write the rows as JSON here')
    p.add_argument('--profile', action='store_true', help="profile each column's smallest size: its ops by self time")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    args.clip = {'ViT-B/32': args.clip_b32, 'ViT-B/16': args.clip_b16, 'ViT-L/14': args.clip_l14}
    rows, device = measure(args)
    print(f'device: {device_line(device)}')
    print(table(rows, args.sizes, args))
    for r in rows:
        print(json.dumps(r))
    if args.out:
        save_json({'device': device_line(device), 'args': {k: v for k, v in vars(args).items() if k != 'clip'},
                   'rows': rows}, args.out)
    return rows


if __name__ == '__main__':
    main()
