"""Cost of the f_p encoders the package knows, as seconds per 1,000 images (random weights: speed
does not depend on them), each at its own input resolution.

    python -m benchmarks.encoders --n 64                       # the default list, on the CPU
    python -m benchmarks.encoders --timm resnet50 --open_clip ViT-B-32 --device cuda --n 2000

Prints wall seconds and process CPU seconds per 1,000 images (decoding excluded: uint8 images at
the model's input size are made in memory).
"""
import argparse
import time

import torch

from benchmarks.common import device_line, random_images, synchronize


def encoders(args):
    """(label, encoder) pairs built through the package's own wrappers."""
    import open_clip
    import timm

    from utils.encoders.hub import open_clip_encoder, timm_encoder
    for name in args.timm:
        yield f'timm {name}', timm_encoder(timm.create_model(name, pretrained=False, num_classes=0), name)
    for name in args.open_clip:
        yield f'open_clip {name}', open_clip_encoder(open_clip.create_model(name), name)


def seconds_per_1000(encoder, n, batch_size, device):
    images = random_images(n, encoder.input_size[0], device)
    encoder.encode(images[:2])  # warm-up
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, n, batch_size):
        encoder.encode(images[start:start + batch_size])
    synchronize(device)
    return 1000 * (time.perf_counter() - wall) / n, 1000 * (time.process_time() - cpu) / n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--timm', nargs='*', default=['resnet50', 'convnext_tiny', 'vit_small_patch14_dinov2'])
    p.add_argument('--open_clip', nargs='*', default=['ViT-B-32', 'ViT-B-16'])
    p.add_argument('--n', type=int, default=64, help='images per model')
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(device_line(device))
    print(f'{"encoder":45s} {"input":>6s} {"dim":>5s} {"wall s/1k":>10s} {"CPU s/1k":>10s}')
    for label, encoder in encoders(args):
        encoder = encoder.finish(device)
        encoder.bf16 = device.type == 'cuda'
        wall, cpu = seconds_per_1000(encoder, args.n, args.batch_size, device)
        print(f'{label:45s} {encoder.input_size[0]:6d} {encoder.dim:5d} {wall:10.1f} {cpu:10.1f}', flush=True)


if __name__ == '__main__':
    main()
