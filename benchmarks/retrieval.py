"""Exact kNN of N features against themselves at Clothing1M scale, chunked; or the per-step search.

    python -m benchmarks.retrieval                          # one GPU: 1,000,000 × 768, k = 20
    python -m benchmarks.retrieval --n 5000 --dim 64        # CPU smoke test
    python -m benchmarks.retrieval --per_step               # 200 queries × 45,000 keys × 2048, k = 10
    python -m benchmarks.retrieval --per_step --data_root data   # keys: CIFAR-10 pixels, augmented

Random features (speed does not depend on the values); reports seconds, peak GPU memory, and checks
that every sample is its own nearest neighbour and a sample of rows against torch.cdist.

--per_step times the search the authors' SimCLR path makes every training step (a batch of augmented
queries against the cached keys, their norms kept for the run): in float32, and as the engine runs
it in bf16, shortlisted on tensor cores and ranked in float32 (utils/retrieval.shortlisted). It
reports milliseconds a search and how often each returns the float32 search's top-k set, also for a
bf16 search alone, over --queries queries: CIFAR-like feature clusters (SimCLR's 2048 dimensions),
or with --data_root the normalised pixels of CIFAR-10's 45,000 training images (one augmented view)
and of other augmented views of some of them. On the CPU the bf16 products are a float32 matmul of
the rounded inputs: its agreement is the figure, not its time.
"""
import argparse

import torch

from benchmarks.common import cifar_like_features, device_line, peak_gib, report, reset_peak, same_sets, timed
from utils.retrieval import SearchKeys, bf16_products, knn
from utils.runtime.devices import resolve_device


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, help='features (default 1,000,000; --per_step: 45,000 keys)')
    p.add_argument('--dim', type=int, help='their width (default 768; --per_step: 2048, SimCLR\'s)')
    p.add_argument('--k', type=int, help='neighbours (default 20; --per_step: 10)')
    p.add_argument('--chunk_size', type=int, default=None, help='query rows per chunk (default: by free memory)')
    p.add_argument('--device', default='auto')
    p.add_argument('--per_step', action='store_true', help='time the per-step search, float32 and bf16 shortlist')
    p.add_argument('--queries', type=int, default=2000, help='--per_step: queries its agreement is taken over')
    p.add_argument('--batch_size', type=int, default=200, help='--per_step: queries a search (a training batch)')
    p.add_argument('--data_root', help='--per_step: CIFAR-10 pixels from the folder holding cifar-10-batches-py/')
    p.add_argument('--out')
    args = p.parse_args(argv)
    defaults = (45000, 2048, 10) if args.per_step else (1_000_000, 768, 20)
    args.n, args.dim, args.k = (v if v is not None else d for v, d in zip((args.n, args.dim, args.k), defaults))
    device = resolve_device(args.device)
    if args.per_step:
        return report(per_step(args, device), args.out)
    g = torch.Generator(device).manual_seed(0)
    features = torch.randn(args.n, args.dim, device=device, generator=g)
    knn(features[:256], features[:4096], args.k)  # warm-up
    reset_peak(device)
    (_, idx), seconds = timed(lambda: knn(features, features, args.k, chunk_size=args.chunk_size), device)
    peak = round(peak_gib(device), 2)  # the search's, before the float64 check below allocates its own
    self_first = float((idx[:, 0] == torch.arange(args.n, device=device)).float().mean())
    rows = torch.randperm(args.n, generator=torch.Generator().manual_seed(1))[:64].to(device)
    ref = torch.cdist(features[rows].double(), features.double()).topk(args.k, largest=False).indices
    agree = float((ref == idx[rows]).float().mean())
    result = {'n': args.n, 'dim': args.dim, 'k': args.k, 'seconds': round(seconds, 2),
              'peak_gib': peak, 'self_is_first': self_first, 'agreement_with_cdist': agree,
              'device': device_line(device)}
    return report(result, args.out)


def per_step(args, device, steps=20):
    k = args.k
    if args.data_root:
        keys, queries = cifar_pixels(args.data_root, args.queries)
    else:
        keys, queries = cifar_like_features(args.n, args.queries, args.dim)
    keys, queries = keys.to(device), queries.to(device)
    exact, short = SearchKeys(keys), SearchKeys(keys, shortlist=True)
    result = {'per_step': True, 'keys': keys.shape[0], 'dim': keys.shape[1], 'k': k, 'batch': args.batch_size,
              'features': 'CIFAR-10 pixels' if args.data_root else 'CIFAR-like clusters', 'device': device_line(device)}
    found = {}
    for name, stored in (('float32', exact), ('shortlist', short)):
        def search(rows):
            return knn(queries[rows], stored, k, chunk_size=args.batch_size, exact_ties=False)[1]
        batches = [slice(i, i + args.batch_size) for i in range(0, len(queries), args.batch_size)]
        search(batches[0])  # warm-up
        found[name], seconds = timed(lambda: torch.cat([search(rows) for rows in batches]), device)
        result[f'{name}_ms'] = round(1000 * seconds / len(batches), 3)
    rough = torch.topk(short.sq_norms - 2 * bf16_products(queries, short.bf16), k, dim=1, largest=False).indices
    result.update(shortlist_agreement=same_sets(found['shortlist'], found['float32']),
                  bf16_alone_agreement=same_sets(rough, found['float32']))
    return result


def cifar_pixels(data_root, n_queries, seed=0):
    """Normalised, L2-normalised pixels of one augmented view of CIFAR-10's 45,000 training images, and
    of other augmented views of `n_queries` of them."""
    from utils.data.cifar import load_cifar
    from utils.data.images import normalize_images, random_crop_flip
    splits = load_cifar('cifar10', data_root, download=False)
    images, g = splits.images('train'), torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(images), generator=g)[:n_queries]

    def pixels(batch):
        return torch.nn.functional.normalize(normalize_images(batch, splits.mean, splits.std).flatten(1), dim=1)
    return pixels(random_crop_flip(images, generator=g)), pixels(random_crop_flip(images[picked], generator=g))


if __name__ == '__main__':
    main()
