"""DenseNet-121/169/201/161 (DenseNet-BC) as the 2017 torchvision zoo wrote them.

Dense layers subclass ``nn.Sequential`` and append their output to their
input with ``torch.cat([x, new_features], 1)``.  The pre-0.4 zoo named the
sub-modules ``'norm.1'``, ``'conv.1'`` ...; current PyTorch rejects dots in
module names, so they are ``norm1`` / ``relu1`` / ``conv1`` here, and the
published files' ``...denselayer1.norm.1.weight`` keys load through
``tracecap.fix_state_dict`` (which renames them, saying so).
Transitions halve the channels and pool with ``AvgPool2d(2, stride=2)``; the
head is ``F.relu`` + ``F.avg_pool2d(out, kernel_size=7)`` + ``view``.  Input
3x224x224 for any ``block_config`` (the spatial schedule does not depend on
depth), e.g. ``block_config=(2, 2, 2, 2)`` for a quick variant.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class _DenseLayer(nn.Sequential):
    """BN-ReLU-1x1(bn_size*k) -> BN-ReLU-3x3(k), then concat to the input."""

    def __init__(self, in_features, growth_rate, bn_size, drop_rate):
        super(_DenseLayer, self).__init__()
        inner = bn_size * growth_rate
        self.add_module('norm1', nn.BatchNorm2d(in_features))
        self.add_module('relu1', nn.ReLU(inplace=True))
        self.add_module('conv1', nn.Conv2d(in_features, inner, kernel_size=1,
                                           stride=1, bias=False))
        self.add_module('norm2', nn.BatchNorm2d(inner))
        self.add_module('relu2', nn.ReLU(inplace=True))
        self.add_module('conv2', nn.Conv2d(inner, growth_rate, kernel_size=3,
                                           stride=1, padding=1, bias=False))
        self.drop_rate = drop_rate

    def forward(self, x):
        new_features = super(_DenseLayer, self).forward(x)
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate,
                                     training=self.training)
        return torch.cat([x, new_features], 1)


class _DenseBlock(nn.Sequential):

    def __init__(self, num_layers, in_features, bn_size, growth_rate,
                 drop_rate):
        super(_DenseBlock, self).__init__()
        for index in range(num_layers):
            self.add_module('denselayer%d' % (index + 1),
                            _DenseLayer(in_features + index * growth_rate,
                                        growth_rate, bn_size, drop_rate))


class _Transition(nn.Sequential):

    def __init__(self, in_features, out_features):
        super(_Transition, self).__init__()
        self.add_module('norm', nn.BatchNorm2d(in_features))
        self.add_module('relu', nn.ReLU(inplace=True))
        self.add_module('conv', nn.Conv2d(in_features, out_features,
                                          kernel_size=1, stride=1, bias=False))
        self.add_module('pool', nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    """DenseNet-BC.

    growth_rate: channels each dense layer adds (k); block_config: layers per
    dense block; num_init_features: stem width; bn_size: bottleneck factor;
    drop_rate: dropout after each dense layer (0 = off); num_classes.
    """

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16),
                 num_init_features=64, bn_size=4, drop_rate=0,
                 num_classes=1000):
        super(DenseNet, self).__init__()
        trunk = nn.Sequential()
        trunk.add_module('conv0', nn.Conv2d(3, num_init_features, 7, stride=2,
                                            padding=3, bias=False))
        trunk.add_module('norm0', nn.BatchNorm2d(num_init_features))
        trunk.add_module('relu0', nn.ReLU(inplace=True))
        trunk.add_module('pool0', nn.MaxPool2d(3, stride=2, padding=1))

        channels = num_init_features
        last = len(block_config) - 1
        for index, depth in enumerate(block_config):
            trunk.add_module('denseblock%d' % (index + 1),
                             _DenseBlock(depth, channels, bn_size,
                                         growth_rate, drop_rate))
            channels += depth * growth_rate
            if index < last:
                trunk.add_module('transition%d' % (index + 1),
                                 _Transition(channels, channels // 2))
                channels //= 2
        trunk.add_module('norm5', nn.BatchNorm2d(channels))

        self.features = trunk
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.avg_pool2d(out, kernel_size=7).view(features.size(0), -1)
        return self.classifier(out)


def densenet121(num_classes=1000, block_config=(6, 12, 24, 16),
                growth_rate=32, num_init_features=64, drop_rate=0):
    """DenseNet-121 for 224x224 input (about 8.0M parameters)."""
    return DenseNet(growth_rate=growth_rate, block_config=tuple(block_config),
                    num_init_features=num_init_features, drop_rate=drop_rate,
                    num_classes=num_classes)


def densenet169(num_classes=1000, drop_rate=0):
    """DenseNet-169 for 224x224 input (about 14.1M parameters)."""
    return DenseNet(block_config=(6, 12, 32, 32), drop_rate=drop_rate, num_classes=num_classes)


def densenet201(num_classes=1000, drop_rate=0):
    """DenseNet-201 for 224x224 input (about 20.0M parameters)."""
    return DenseNet(block_config=(6, 12, 48, 32), drop_rate=drop_rate, num_classes=num_classes)


def densenet161(num_classes=1000, drop_rate=0):
    """DenseNet-161 (growth 48, 96-channel stem) for 224x224 input (about 28.7M parameters)."""
    return DenseNet(growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96,
                    drop_rate=drop_rate, num_classes=num_classes)


def densenet121_reduced(num_classes=1000):
    """DenseNet-121's layout with two dense layers per block: a quick variant."""
    return DenseNet(block_config=(2, 2, 2, 2), num_classes=num_classes)
