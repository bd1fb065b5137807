"""Exact kNN of N features against themselves at Clothing1M scale, chunked.

    python -m benchmarks.retrieval                          # one GPU: 1,000,000 × 768, k = 20
    python -m benchmarks.retrieval --n 5000 --dim 64        # CPU smoke test

Random features (speed does not depend on the values); reports seconds, peak GPU memory, and checks
that every sample is its own nearest neighbour and a sample of rows against torch.cdist.
"""
import argparse

import torch

from benchmarks.common import device_line, peak_gib, report, reset_peak, timed
from utils.retrieval import knn
from utils.runtime import resolve_device


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=1_000_000)
    p.add_argument('--dim', type=int, default=768)
    p.add_argument('--k', type=int, default=20)
    p.add_argument('--chunk_size', type=int, default=None, help='query rows per chunk (default: by free memory)')
    p.add_argument('--device', default='auto')
    p.add_argument('--out')
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    g = torch.Generator(device).manual_seed(0)
    features = torch.randn(args.n, args.dim, device=device, generator=g)
    knn(features[:256], features[:4096], args.k)  # warm-up
    reset_peak(device)
    (_, idx), seconds = timed(lambda: knn(features, features, args.k, chunk_size=args.chunk_size), device)
    self_first = float((idx[:, 0] == torch.arange(args.n, device=device)).float().mean())
    rows = torch.randperm(args.n, generator=torch.Generator().manual_seed(1))[:64].to(device)
    ref = torch.cdist(features[rows].double(), features.double()).topk(args.k, largest=False).indices
    agree = float((ref == idx[rows]).float().mean())
    result = {'n': args.n, 'dim': args.dim, 'k': args.k, 'seconds': round(seconds, 2),
              'peak_gib': round(peak_gib(device), 2), 'self_is_first': self_first, 'agreement_with_cdist': agree,
              'device': device_line(device)}
    return report(result, args.out)


if __name__ == '__main__':
    main()
