"""Architectures: the ResNet trunks shared by the SimCLR encoder, the diffusion encoder and the
baselines. Loading released weights is the encoders' business (utils/encoders/factory.py)."""
import torch.nn as nn

RESNETS = ('resnet18', 'resnet34', 'resnet50')


def torchvision_resnet(arch, **kwargs):
    """torchvision's ResNet `arch`. torchvision is imported here, not with this module: its import also
    loads torch's compiler stack (about 2 s a process), which a command that builds no ResNet (a refusal,
    --help, the digits demo) need not wait for."""
    import torchvision
    return getattr(torchvision.models, arch)(**kwargs)


def resnet_width(arch):
    """Width of the pooled feature: 512 for the basic-block ResNets, 2048 for ResNet-50."""
    return 2048 if arch == 'resnet50' else 512


def cifar_resnet_trunk(arch):
    """ResNet children for 32×32 inputs: a 3×3 stride-1 first conv and no max-pool, fc dropped.

    The children keep torchvision's order, so `nn.Sequential(*trunk)` has the state-dict keys of the
    released SimCLR checkpoints (`0` conv1, `1` bn1, `2` relu, `3`–`6` layer1–4, `7` avgpool).
    """
    if arch not in RESNETS:
        raise ValueError(f'unknown ResNet {arch!r}; choose from {sorted(RESNETS)}')
    trunk = []
    for name, module in torchvision_resnet(arch).named_children():
        if name == 'conv1':
            module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if name not in ('maxpool', 'fc'):
            trunk.append(module)
    return trunk


def cifar_resnet(arch, out_dim):
    """A CIFAR-stem ResNet with a linear head of width `out_dim`."""
    return nn.Sequential(*cifar_resnet_trunk(arch), nn.Flatten(1), nn.Linear(resnet_width(arch), out_dim))


def pytorch_conv_init(net):
    """Every convolution drawn as PyTorch initialises one (kaiming-uniform, a=√5) where torchvision's ResNets
    draw kaiming-normal (fan_out): the authors' CIFAR ResNet (their ResNet_for_32) keeps PyTorch's. Their
    diffusion encoder is never trained, so these random weights are the features the denoiser reads."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return net


AUTHORS_HEAD_WIDTH = 512


def authors_head(arch, out_dim):
    """The head of the authors' 224-px ResNets (their `myfc`, `myfc2`): two linear layers, pooled
    width → 512 → out_dim, with nothing between them. One linear map, but of rank 512 where out_dim is
    larger (their 1024): its outputs are correlated, which a single layer's are not, and where the
    head is never trained (their Food-101N encoder) that is what the denoiser reads."""
    return nn.Sequential(nn.Linear(resnet_width(arch), AUTHORS_HEAD_WIDTH), nn.Linear(AUTHORS_HEAD_WIDTH, out_dim))


def imagenet_resnet(arch, out_dim, weights=None):
    """A standard-stem ResNet for 224 px images, optionally with ImageNet weights, the authors' head."""
    net = torchvision_resnet(arch, weights=weights)
    net.fc = authors_head(arch, out_dim)
    return net


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice, identity or 1×1 shortcut."""

    def __init__(self, n_in, n_out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(n_in)
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Conv2d(n_in, n_out, 1, stride, bias=False)

    def forward(self, x):
        out = nn.functional.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(nn.functional.relu(self.bn2(out)))
        return out + shortcut


def preact_resnet(blocks, n_class, width=64):
    """PreAct-ResNet for 32×32 inputs; blocks (2,2,2,2) is PreAct-ResNet-18, (3,4,6,3) is -34."""
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False)]
    n_in = width
    for stage, n_blocks in enumerate(blocks):
        n_out = width * 2 ** stage
        for b in range(n_blocks):
            layers.append(PreActBlock(n_in, n_out, 2 if (b == 0 and stage > 0) else 1))
            n_in = n_out
    layers += [nn.BatchNorm2d(n_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
               nn.Linear(n_in, n_class)]
    return nn.Sequential(*layers)


def small_cnn(n_class, width=32):
    """A few-second CPU classifier for tests and tiny data."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, 1, 1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(2 * width, n_class))


CLASSIFIERS = {
    'preact_resnet34': lambda n_class: preact_resnet((3, 4, 6, 3), n_class),
    'preact_resnet18': lambda n_class: preact_resnet((2, 2, 2, 2), n_class),
    'resnet34': lambda n_class: cifar_resnet('resnet34', n_class),
    'small_cnn': small_cnn,
}
