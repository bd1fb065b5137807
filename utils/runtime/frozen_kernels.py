"""How the frozen image networks of a training step run (`--frozen_kernels`): eager, fused or compiled.

On the authors' CIFAR paths a step is their frozen convolutions: the SimCLR f_p re-encodes the augmented
batch (a ResNet-50 with eval-mode BatchNorm) and the diffusion encoder embeds it (a ResNet-34 whose
BatchNorm stays in training mode). Run eagerly, every convolution is followed by a BatchNorm and a ReLU
(and a block's last one by the residual add and another ReLU), each a kernel that reads and writes an
activation as large as the convolution's: at 32×32 and batch 200 they cost about what the convolution
does, which is why the H200 ran these steps at about 55 TFLOP/s (docs/RESULTS.md).

- 'fused': an eval-mode BatchNorm is an affine map per channel, so it folds into the convolution before
  it (weights · γ/σ, bias β − μ·γ/σ); on CUDA the convolution, its bias, the residual and the ReLU then
  run as one cuDNN call (`cudnn_convolution_relu`, `cudnn_convolution_add_relu`). The same function,
  rounded once in bf16 where eager rounds after each kernel. Applies to the eval-mode ResNets of f_p
  (SimCLR); a training-mode BatchNorm normalises with the batch's own statistics and cannot fold.
- 'compiled': torch.compile of the frozen networks' forward (the f_p trunk and a frozen diffusion
  encoder): Inductor fuses each BatchNorm, ReLU and residual into one kernel after its convolution,
  training-mode BatchNorm included. Costs a compile per process and input shape. A CLIP f_p's fused
  tower (the default) is left as it is: it is that network rebuilt for inference already.

Neither changes what is computed beyond bf16 rounding (tests/test_frozen_kernels.py bounds it).
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

FROZEN_KERNELS = ('eager', 'fused', 'compiled')


@torch.no_grad()
def fold_conv_bn(conv, bn):
    """A convolution with bias computing bn(conv(x)) for an eval-mode BatchNorm, folded in float64 (a
    BatchNorm without affine weights scales by 1 and shifts by 0)."""
    if bn.training or bn.running_var is None:
        raise ValueError('only an eval-mode BatchNorm with running statistics folds: a training-mode one '
                         'normalises with the batch statistics')
    if conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
        raise ValueError('only a zero-padded convolution with numeric padding folds')
    ones = torch.ones_like(bn.running_var, dtype=torch.float64)
    gamma = bn.weight.double() if bn.weight is not None else ones
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(ones)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, device=conv.weight.device)
    folded.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    folded.bias.copy_(beta + (bias - bn.running_mean.double()) * scale)
    return folded.requires_grad_(False)


def _conv(conv, x):
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _cudnn_args(conv):
    return list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups


def conv_relu(conv, x, fused):
    if fused:
        return torch.cudnn_convolution_relu(x, conv.weight, conv.bias, *_cudnn_args(conv))
    return F.relu(_conv(conv, x), inplace=True)


def conv_add_relu(conv, x, residual, fused):
    if fused:
        return torch.cudnn_convolution_add_relu(x, conv.weight, residual, 1.0, conv.bias, *_cudnn_args(conv))
    return F.relu(_conv(conv, x).add_(residual), inplace=True)


class FoldedBlock(nn.Module):
    """A torchvision BasicBlock or Bottleneck with its BatchNorms folded: each convolution but the last
    with its ReLU, the last with the shortcut added before the ReLU."""

    def __init__(self, block):
        super().__init__()
        pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        if hasattr(block, 'conv3'):  # a Bottleneck
            pairs.append((block.conv3, block.bn3))
        self.convs = nn.ModuleList(fold_conv_bn(c, b) for c, b in pairs)
        down = block.downsample
        self.shortcut = fold_conv_bn(down[0], down[1]) if down is not None else None
        self.fused = False  # set by the trunk at its first call

    def forward(self, x):
        residual = x if self.shortcut is None else _conv(self.shortcut, x)
        for conv in self.convs[:-1]:
            x = conv_relu(conv, x, self.fused)
        return conv_add_relu(self.convs[-1], x, residual, self.fused)


class FoldedTrunk(nn.Module):
    """A frozen, eval-mode CIFAR ResNet trunk (utils/networks.cifar_resnet_trunk: conv1, bn1, relu,
    layer1-4, avgpool) with every BatchNorm folded into its convolution. Its input is cast to the
    weights' dtype (bf16 once store_frozen_bf16 ran): the fused cuDNN calls take no autocast. Whether they
    run is decided at the first call on CUDA, when the device, dtype and real shapes are known
    (decide_fusion); `fused` says what was decided, `fallback` why not, where it was not."""

    def __init__(self, trunk):
        super().__init__()
        children = list(trunk)
        if not is_cifar_resnet_trunk(children):
            raise ValueError('--frozen_kernels fused folds a CIFAR ResNet trunk (conv1, bn1, relu, layer1-4, avgpool)')
        conv1, bn1, relu, *layers, pool = children
        self.stem = fold_conv_bn(conv1, bn1)
        self.blocks = nn.Sequential(*(FoldedBlock(b) for layer in layers for b in layer))
        self.pool = pool
        self.fused, self.fallback = None, None

    def forward(self, x):
        x = x.to(self.stem.weight.dtype)
        if self.fused is None:
            self.decide_fusion(x) if x.is_cuda else self.use_fusion(False)
        return self.run(x)

    def run(self, x):
        return self.pool(self.blocks(conv_relu(self.stem, x, self.fused)))

    def use_fusion(self, fused):
        self.fused = fused
        for block in self.blocks:
            block.fused = fused

    @torch.no_grad()
    def decide_fusion(self, x):
        """On CUDA, the fused cuDNN calls where they run on this batch's very shapes (a cuDNN without an
        engine for one of them raises) and give what the separate kernels give (every row's cosine ≥ 0.99:
        the two round differently in bf16 along 16 blocks); otherwise the folded convolutions and their ReLUs
        run apart, with a warning. Once per trunk: its first call, a warm-up step, not a timed or graphed one."""
        self.use_fusion(False)
        self.fallback = cudnn_fusion_fails(x.device, x.dtype)
        if self.fallback is None:
            apart = self.run(x).float()
            self.use_fusion(True)
            try:
                together = self.run(x).float()
                cosine = F.cosine_similarity(together.flatten(1), apart.flatten(1), dim=1)
                if not (torch.isfinite(together).all() and cosine.min() >= 0.99):
                    self.fallback = (f'on this trunk they disagree with the separate kernels (smallest cosine '
                                     f'{float(cosine.min()):.4f})')
            except RuntimeError as exc:
                self.fallback = str(exc).splitlines()[0]
        self.use_fusion(self.fallback is None)
        if self.fallback is not None:
            warnings.warn(f'cuDNN fused convolutions not used ({self.fallback}); --frozen_kernels fused runs the '
                          'folded convolutions and their ReLUs apart')


def is_cifar_resnet_trunk(children):
    from torchvision.models.resnet import BasicBlock, Bottleneck  # imported already where a trunk was built
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)
    return (len(children) >= 5 and all(isinstance(m, k) for m, k in zip(children, kinds))
            and isinstance(children[-1], nn.AdaptiveAvgPool2d)
            and all(isinstance(layer, nn.Sequential) and all(isinstance(b, (BasicBlock, Bottleneck)) for b in layer)
                    for layer in children[3:-1]))


def fuse_trunk(trunk):
    """The folded copy of an eval-mode trunk (the original is left as it is)."""
    if any(m.training for m in trunk.modules()):
        raise ValueError('only an eval-mode trunk folds: training-mode BatchNorm uses the batch statistics')
    return FoldedTrunk(trunk).eval()


_CUDNN_FUSION = {}  # (device, dtype) → None where the fused cuDNN calls run and agree there, else why not


@torch.no_grad()
def cudnn_fusion_fails(device, dtype):
    """Why cuDNN's fused convolution calls cannot be used on this device in this dtype, or None: a build
    without the fused engines raises, and the output must not depend on the memory it is written to
    (cudnn_convolution_relu hands its fresh output to cuDNN as the addend, scaled by 0: a NaN left there by
    an earlier tensor would survive 0·NaN). Checked once per device and dtype on a small block, its output
    memory first filled with NaNs by a tensor freed just before."""
    key = (torch.device(device), dtype)
    if key not in _CUDNN_FUSION:
        generator = torch.Generator().manual_seed(0)
        conv = nn.Conv2d(16, 16, 3, 1, 1, bias=True).to(device, dtype).to(memory_format=torch.channels_last)
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        x = torch.randn(4, 16, 8, 8, generator=generator).to(device, dtype).to(memory_format=torch.channels_last)
        why = None
        try:
            for fused_call, apart in ((lambda: conv_relu(conv, x, True), conv_relu(conv, x, False)),
                                      (lambda: conv_add_relu(conv, x, x, True), conv_add_relu(conv, x, x, False))):
                torch.full_like(apart, float('nan'))  # freed at once: the fused output is likely to land there
                together = fused_call()
                if not (torch.isfinite(together).all() and torch.allclose(together.float(), apart.float(),
                                                                          atol=0.05, rtol=0.05)):
                    why = 'they disagree with the separate kernels'
        except RuntimeError as exc:
            why = str(exc).splitlines()[0]
        _CUDNN_FUSION[key] = why
    return _CUDNN_FUSION[key]


def compile_forward(module):
    """torch.compile the module's forward in place (its state dict keys stay as they are)."""
    module.compile(dynamic=False)
    return module
