"""What bf16 does to the fused CLIP tower's features: each architecture with random weights (rounding
does not depend on them) encodes the same images in float32 with the clip package's own tower and in
bf16 with the fused one; printed are the smallest cosine between the two features of an image and the
share of top-10 neighbours (Euclidean, among the images) the two keep in common.

    python -m benchmarks.numerics --device cpu                     # ViT-B/32 and ViT-B/16, 320 images
    python -m benchmarks.numerics --device cuda --archs ViT-L/14

On CUDA this is the bf16 path training and inference run (tests/test_gpu_speed.py bounds it: cosine
≥ 0.999, overlap ≥ 0.98); on the CPU the same bf16 tower is called directly (the package's CPU path
computes in float32), so the figure is that of the rounding, computed by the CPU's kernels.
"""
import argparse
from types import SimpleNamespace

import torch

from benchmarks.common import device_line
from utils.encoders.clip import CLIPEncoder
from utils.encoders.random_weights import random_clip_visual


def smooth_images(n, seed=0, device='cpu'):
    """Random 4×4 colour fields enlarged to 32×32: images whose random-weight features spread out (uniform
    noise makes them all nearly alike, so neighbours would be decided by rounding)."""
    g = torch.Generator().manual_seed(seed)
    fields = torch.randint(0, 256, (n, 3, 4, 4), generator=g).float()
    return torch.nn.functional.interpolate(fields, size=32, mode='bilinear').round().to(torch.uint8).to(device)


def top10(features):
    d = torch.cdist(features, features)
    d.fill_diagonal_(float('inf'))
    return d.topk(10, largest=False).indices


def neighbour_overlap(a, b):
    """The share of each image's top-10 neighbours under features `a` that `b` keeps."""
    x, y = top10(a), top10(b)
    return sum(len(set(p.tolist()) & set(q.tolist())) for p, q in zip(x, y)) / x.numel()


def clip_encoder(arch, tower, device):
    """A CLIP encoder of the real architecture with random weights."""
    return CLIPEncoder(SimpleNamespace(visual=random_clip_visual(arch)), arch, tower).finish(device)


@torch.no_grad()
def bf16_effect(arch, images, batch_size=64):
    """(min cosine, top-10 overlap) of the fused tower in bf16 against the clip package's in float32."""
    device = images.device
    reference = clip_encoder(arch, 'clip', device)
    reference.bf16 = False
    ref = torch.cat([reference.encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    fused = clip_encoder(arch, 'fused', device)
    tower = fused.tower_in(torch.bfloat16)
    fast = torch.cat([tower(fused.preprocess(images[i:i + batch_size]).to(torch.bfloat16)).float()
                      for i in range(0, len(images), batch_size)])
    return float(torch.nn.functional.cosine_similarity(ref, fast).min()), neighbour_overlap(ref, fast)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=['ViT-B/32', 'ViT-B/16'])
    p.add_argument('--n', type=int, default=320, help='images')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    images = smooth_images(args.n, device=device)
    print(device_line(device))
    rows = []
    for arch in args.archs:
        cosine, overlap = bf16_effect(arch, images)
        rows.append({'arch': arch, 'min_cosine': round(cosine, 6), 'top10_overlap': round(overlap, 4)})
        print(f'{arch}: min cosine {cosine:.5f}, top-10 overlap {overlap:.3f} ({args.n} images)', flush=True)
    return rows


if __name__ == '__main__':
    main()
