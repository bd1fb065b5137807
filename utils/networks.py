"""ResNet trunks shared by the SimCLR encoder, the diffusion encoder and the baselines."""
import torch.nn as nn
import torchvision

RESNETS = {'resnet18': torchvision.models.resnet18, 'resnet34': torchvision.models.resnet34,
           'resnet50': torchvision.models.resnet50}


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
    for name, module in RESNETS[arch]().named_children():
        if name == 'conv1':
            module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if name not in ('maxpool', 'fc'):
            trunk.append(module)
    return trunk


def cifar_resnet(arch, out_dim):
    """A CIFAR-stem ResNet with a linear head of width `out_dim`."""
    return nn.Sequential(*cifar_resnet_trunk(arch), nn.Flatten(1), nn.Linear(resnet_width(arch), out_dim))


def imagenet_resnet(arch, out_dim, weights=None):
    """A standard-stem ResNet for 224 px images, optionally with ImageNet weights, head replaced."""
    net = RESNETS[arch](weights=weights)
    net.fc = nn.Linear(net.fc.in_features, out_dim)
    return net
