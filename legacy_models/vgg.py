"""VGG-11/13/16/19, with and without BatchNorm, in the 2017 torchvision layout.

The trunk is one ``nn.Sequential`` named ``features``: 3x3 convs (padding 1),
each followed by a BatchNorm in the ``_bn`` variants and an in-place ReLU, and
a 2x2/2 max pooling after every stage, so the indices (``features.0``,
``features.3`` ...) are those of the published checkpoints.  The head is
``out.view(out.size(0), -1)`` and three Linear layers (``classifier.0/3/6``)
with ReLU + Dropout between them.  Input 3x224x224 (five poolings leave 7x7).

``width`` scales every channel count and the two hidden Linear layers, so a
slim net of the same topology can be built (``width=1.0`` is the real one).
"""
import torch.nn as nn

# conv widths per stage ("configurations" A, B, D, E of the paper)
STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _width(channels, width):
    return max(1, int(channels * width))


def _vgg_trunk(stages, width, batch_norm):
    """Build the conv trunk; returns (nn.Sequential, last channel count)."""
    modules = []
    channels = 3
    for stage in stages:
        for planes in stage:
            planes = _width(planes, width)
            modules.append(nn.Conv2d(channels, planes, kernel_size=3, padding=1))
            if batch_norm:
                modules.append(nn.BatchNorm2d(planes))
            modules.append(nn.ReLU(inplace=True))
            channels = planes
        modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*modules), channels


class VGG(nn.Module):

    def __init__(self, stages=STAGES[11], batch_norm=False, width=1.0,
                 num_classes=1000):
        super(VGG, self).__init__()
        self.features, channels = _vgg_trunk(stages, width, batch_norm)
        hidden = _width(4096, width)
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        out = self.features(x)
        out = out.view(out.size(0), -1)
        return self.classifier(out)


def vgg11(num_classes=1000, width=1.0):
    """VGG-11 for 224x224 input; ``width`` < 1 gives a slim variant."""
    return VGG(STAGES[11], batch_norm=False, width=width, num_classes=num_classes)


def vgg13(num_classes=1000, width=1.0):
    """VGG-13 for 224x224 input; ``width`` < 1 gives a slim variant."""
    return VGG(STAGES[13], batch_norm=False, width=width, num_classes=num_classes)


def vgg16(num_classes=1000, width=1.0):
    """VGG-16 for 224x224 input; ``width`` < 1 gives a slim variant."""
    return VGG(STAGES[16], batch_norm=False, width=width, num_classes=num_classes)


def vgg19(num_classes=1000, width=1.0):
    """VGG-19 for 224x224 input; ``width`` < 1 gives a slim variant."""
    return VGG(STAGES[19], batch_norm=False, width=width, num_classes=num_classes)


def vgg11_bn(num_classes=1000, width=1.0):
    """VGG-11-BN for 224x224 input; ``width`` < 1 gives a slim variant."""
    return VGG(STAGES[11], batch_norm=True, width=width, num_classes=num_classes)


def vgg13_bn(num_classes=1000, width=1.0):
    """VGG-13-BN for 224x224 input; ``width`` < 1 gives a slim variant."""
    return VGG(STAGES[13], batch_norm=True, width=width, num_classes=num_classes)


def vgg16_bn(num_classes=1000, width=1.0):
    """VGG-16-BN for 224x224 input; ``width`` < 1 gives a slim variant."""
    return VGG(STAGES[16], batch_norm=True, width=width, num_classes=num_classes)


def vgg19_bn(num_classes=1000, width=1.0):
    """VGG-19-BN for 224x224 input; ``width`` < 1 gives a slim variant."""
    return VGG(STAGES[19], batch_norm=True, width=width, num_classes=num_classes)


def vgg11_bn_reduced(num_classes=1000):
    """VGG-11-BN at a quarter of the width: the full topology, 1/16 of the work."""
    return vgg11_bn(num_classes=num_classes, width=0.25)
