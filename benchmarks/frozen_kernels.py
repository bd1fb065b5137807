"""The frozen image networks of the authors' CIFAR step on their own, each --frozen_kernels way against eager.

    python -m benchmarks.frozen_kernels                       # one GPU: batch 200, 32×32, bf16
    python -m benchmarks.frozen_kernels --ways eager fused    # without the compiles
    python -m benchmarks.frozen_kernels --small               # CPU smoke test

What a step of the authors' SimCLR path spends its time on (docs/RESULTS.md): the SimCLR f_p (ResNet-50,
eval-mode BatchNorm) re-encoding the augmented uint8 batch, and the diffusion encoder (the CIFAR-stem
ResNet-34, frozen, BatchNorm in training mode) embedding it; the ViT-L/14 path runs the second alone.
Each runs as the step runs it (bf16 weights stored once, channels-last, bf16 autocast), eager, fused
(f_p only: a training-mode BatchNorm does not fold) and compiled. Random weights, with BatchNorm
statistics away from the identity so that folding is exercised (speed does not depend on the values).

Per network and way: milliseconds a call (median of --repeats timed calls after --warmup), the first
call apart (cuDNN autotuning, the compile), GFLOP a call and the rate, the speed-up over eager, and
agreement: the smallest cosine between a row and the same row computed in float32 eagerly, beside
eager bf16's own (what bf16 rounding alone costs).
"""
import argparse
import contextlib
import statistics
import time

import torch

from benchmarks.common import device_line, random_images, report, synchronize
from utils.data.images import CIFAR_MEAN, CIFAR_STD, normalize_images
from utils.encoders.simclr import SimCLREncoder
from utils.networks import cifar_resnet
from utils.runtime.devices import resolve_device
from utils.runtime.frozen_kernels import FROZEN_KERNELS, compile_forward
from utils.runtime.graphs import prepare_cuda, store_frozen_bf16

NETWORKS = ('fp_simclr', 'diff_encoder')


def spread_batchnorm(module, seed):
    """BatchNorm statistics and affine weights away from the identity, as a trained network's."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for tensor, low, high in ((m.running_mean, -0.3, 0.3), (m.running_var, 0.5, 2.0),
                                      (m.weight, 0.5, 1.5), (m.bias, -0.2, 0.2)):
                tensor.data.copy_(torch.empty(tensor.shape).uniform_(low, high, generator=g))
    return module


def build(network, way, args, device):
    """A callable uint8 images → float32 rows, the network set up as a training step has it."""
    bf16 = device.type == 'cuda' and way != 'float32'
    torch.manual_seed(0)
    if network == 'fp_simclr':
        encoder = spread_batchnorm(SimCLREncoder(args.fp_arch), 1)
        encoder.bf16 = bf16
        encoder = encoder.finish(device)
        if way in ('fused', 'compiled'):
            encoder.use_kernels(way)
        if bf16:
            store_frozen_bf16(encoder)
        return encoder.encode
    net = spread_batchnorm(cifar_resnet(args.diff_arch, args.feature_dim), 2).requires_grad_(False).to(device)
    net = net.to(memory_format=torch.channels_last) if device.type == 'cuda' else net
    if bf16:
        store_frozen_bf16(net)
    if way == 'compiled':
        compile_forward(net)

    def embed(images):  # Denoiser.embed_x on normalised pixels, BatchNorm in training mode as the authors'
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(normalize_images(images, CIFAR_MEAN, CIFAR_STD)).float()
    return embed


def call_gflop(network, args):
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device('meta'), FlopCounterMode(display=False) as counter, torch.no_grad():
        x = torch.empty(args.batch_size, 3, args.size, args.size)
        if network == 'fp_simclr':
            SimCLREncoder(args.fp_arch).features(x)
        else:
            cifar_resnet(args.diff_arch, args.feature_dim)(x)
    return counter.get_total_flops() / 1e9


@contextlib.contextmanager
def true_float32():
    """Float32 reference figures: cuDNN and matmuls without TF32, which rounds inputs to 10 bits."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def min_cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).min())


def measure(network, way, images, reference, args, device):
    fn = build(network, way, args, device)
    synchronize(device)
    started = time.perf_counter()
    out = fn(images)
    synchronize(device)
    first_s = time.perf_counter() - started
    for _ in range(args.warmup):
        fn(images)
    times = []
    for _ in range(args.repeats):
        synchronize(device)
        started = time.perf_counter()
        fn(images)
        synchronize(device)
        times.append(time.perf_counter() - started)
    ms = statistics.median(times) * 1000
    gflop = call_gflop(network, args)
    row = {'network': network, 'way': way, 'ms_per_call': round(ms, 3), 'first_call_s': round(first_s, 3),
           'gflop_per_call': round(gflop, 1), 'tflop_per_s': round(gflop / ms, 2),
           'min_cosine_to_float32': round(min_cosine(out, reference), 6)}
    trunk = getattr(getattr(fn, '__self__', None), 'f', None)
    if way == 'fused' and device.type == 'cuda':  # whether cuDNN's fused calls ran, or why not
        row.update(cudnn_fused=trunk.fused, cudnn_fallback=trunk.fallback)
    return row


def run(args):
    device = resolve_device(args.device)
    prepare_cuda(device)  # cuDNN autotuning, as in training
    images = random_images(args.batch_size, args.size, device)
    rows = []
    for network in args.networks:
        with true_float32():
            reference = build(network, 'float32', args, device)(images)
        for way in args.ways:
            if way == 'fused' and network != 'fp_simclr':
                continue  # training-mode BatchNorm: nothing folds
            rows.append(measure(network, way, images, reference, args, device))
            eager = next((r for r in rows if r['network'] == network and r['way'] == 'eager'), None)
            if eager and way != 'eager':
                rows[-1]['speedup_over_eager'] = round(eager['ms_per_call'] / rows[-1]['ms_per_call'], 3)
            print(rows[-1], flush=True)
    return {'benchmark': 'frozen_kernels', 'device': device_line(device), 'batch_size': args.batch_size,
            'image_size': args.size, 'fp_arch': args.fp_arch, 'diff_arch': args.diff_arch, 'rows': rows}


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ways', nargs='+', default=list(FROZEN_KERNELS), choices=FROZEN_KERNELS)
    p.add_argument('--networks', nargs='+', default=list(NETWORKS), choices=NETWORKS)
    p.add_argument('--batch_size', type=int, default=200, help="the authors' CIFAR batch")
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--fp_arch', default='resnet50')
    p.add_argument('--diff_arch', default='resnet34')
    p.add_argument('--feature_dim', type=int, default=512, help="the authors' CIFAR feature_dim")
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--repeats', type=int, default=30)
    p.add_argument('--device', default='auto')
    p.add_argument('--small', action='store_true',
                   help='CPU smoke test: ResNet-18s, batch 8 of 16×16, without the compiles')
    p.add_argument('--out', help='write the result as JSON here')
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.small:
        args.fp_arch, args.diff_arch, args.batch_size, args.size = 'resnet18', 'resnet18', 8, 16
        args.warmup, args.repeats = 1, 2
        args.ways = [w for w in args.ways if w != 'compiled'] or args.ways  # a compile takes a minute here
    return report(run(args), args.out, indent=1)


if __name__ == '__main__':
    main()
