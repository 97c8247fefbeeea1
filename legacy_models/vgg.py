"""VGG-11 with a BatchNorm after every convolution (configuration "A").

``width`` scales every channel count and the two hidden fully-connected
layers, so tests can build a slim network with the same topology;
``width=1.0`` is the real VGG-11-BN (about 133M parameters).  Input
3x224x224 (five 2x2 poolings leave a 7x7 map).
"""
import torch.nn as nn

# conv widths per stage; every stage ends with a 2x2/2 max pooling
VGG11_STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))


def _width(channels, width):
    return max(1, int(channels * width))


def _vgg_trunk(stages, width, batch_norm=True):
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

    def __init__(self, stages=VGG11_STAGES, width=1.0, num_classes=1000):
        super(VGG, self).__init__()
        self.features, channels = _vgg_trunk(stages, width)
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


def vgg11_bn(num_classes=1000, width=1.0):
    """VGG-11-BN for 224x224 input; ``width`` < 1 gives a slim variant."""
    return VGG(VGG11_STAGES, width=width, num_classes=num_classes)
