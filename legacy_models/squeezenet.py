"""SqueezeNet 1.0 and 1.1, in the 2017 torchvision layout.

Fire modules: a 1x1 "squeeze" conv followed by parallel 1x1 and 3x3 "expand"
convs joined with ``torch.cat([...], 1)``.  Max pooling uses
``ceil_mode=True`` (Caffe rounding).  The head is Dropout -> 1x1 conv ->
ReLU -> ``AvgPool2d(13)`` -> ``view``.  Input 3x224x224 (1.0: 7x7/2 stem,
spatial 109 -> 54 -> 27 -> 13; 1.1: 3x3/2 stem, 111 -> 55 -> 27 -> 13).
``features.N`` / ``classifier.1`` indices are those of the published files.
"""
import torch
import torch.nn as nn


class Fire(nn.Module):

    def __init__(self, inplanes, squeeze_planes, e1_planes, e3_planes):
        super(Fire, self).__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, e1_planes, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, e3_planes, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        s = self.squeeze_activation(self.squeeze(x))
        left = self.expand1x1_activation(self.expand1x1(s))
        right = self.expand3x3_activation(self.expand3x3(s))
        return torch.cat([left, right], 1)


def _pool():
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


# version -> (stem conv (channels, kernel), trunk after the first pooling:
# (squeeze, expand) per Fire, expand used for both branches, or 'pool')
VERSIONS = {
    '1_0': ((96, 7), [(16, 64), (16, 64), (32, 128), 'pool', (32, 128), (48, 192),
                      (48, 192), (64, 256), 'pool', (64, 256)]),
    '1_1': ((64, 3), [(16, 64), (16, 64), 'pool', (32, 128), (32, 128), 'pool',
                      (48, 192), (48, 192), (64, 256), (64, 256)]),
}


class SqueezeNet(nn.Module):

    def __init__(self, version='1_1', num_classes=1000):
        super(SqueezeNet, self).__init__()
        self.num_classes = num_classes
        (channels, kernel), fires = VERSIONS[version]
        trunk = [nn.Conv2d(3, channels, kernel_size=kernel, stride=2),
                 nn.ReLU(inplace=True), _pool()]
        for spec in fires:
            if spec == 'pool':
                trunk.append(_pool())
                continue
            squeeze, expand = spec
            trunk.append(Fire(channels, squeeze, expand, expand))
            channels = 2 * expand
        self.features = nn.Sequential(*trunk)
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Conv2d(channels, num_classes, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(13),
        )

    def forward(self, x):
        x = self.classifier(self.features(x))
        return x.view(x.size(0), self.num_classes)


def squeezenet1_0(num_classes=1000):
    """SqueezeNet 1.0 for 224x224 input (about 1.2M parameters)."""
    return SqueezeNet('1_0', num_classes=num_classes)


def squeezenet1_1(num_classes=1000):
    """SqueezeNet 1.1 for 224x224 input (about 1.2M parameters)."""
    return SqueezeNet('1_1', num_classes=num_classes)
