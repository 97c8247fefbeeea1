"""ResNet-18/34/50/101/152 as the 2017 torchvision zoo wrote them.

Residual blocks add their shortcut in place (``out += residual``) and share
one ``nn.ReLU(inplace=True)``; a shortcut that changes shape is a 1x1 conv +
BN held in ``downsample``.  The head is the fixed ``nn.AvgPool2d(7)`` of that
era, so the input must be 3x224x224.  Attribute names (``conv1``, ``bn1``,
``layer1.0.downsample.0`` ...) match the public checkpoint layout.
"""
import torch.nn as nn


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; output channels = planes."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super(BasicBlock, self).__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += residual
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4)."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super(Bottleneck, self).__init__()
        wide = planes * self.expansion
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, wide)
        self.bn3 = nn.BatchNorm2d(wide)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += residual
        return self.relu(out)


def _stage(block, inplanes, planes, count, stride):
    """``count`` blocks; the first one may change stride/width."""
    outplanes = planes * block.expansion
    shortcut = None
    if stride != 1 or inplanes != outplanes:
        shortcut = nn.Sequential(_conv1x1(inplanes, outplanes, stride),
                                 nn.BatchNorm2d(outplanes))
    blocks = [block(inplanes, planes, stride, shortcut)]
    blocks += [block(outplanes, planes) for _ in range(count - 1)]
    return nn.Sequential(*blocks), outplanes


class ResNet(nn.Module):

    def __init__(self, block, layers, num_classes=1000):
        super(ResNet, self).__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        self.layer1, channels = _stage(block, channels, 64, layers[0], 1)
        self.layer2, channels = _stage(block, channels, 128, layers[1], 2)
        self.layer3, channels = _stage(block, channels, 256, layers[2], 2)
        self.layer4, channels = _stage(block, channels, 512, layers[3], 2)
        self.avgpool = nn.AvgPool2d(7)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def resnet18(num_classes=1000, layers=(2, 2, 2, 2)):
    """ResNet-18 (BasicBlock) for 224x224 input."""
    return ResNet(BasicBlock, tuple(layers), num_classes=num_classes)


def resnet34(num_classes=1000, layers=(3, 4, 6, 3)):
    """ResNet-34 (BasicBlock) for 224x224 input."""
    return ResNet(BasicBlock, tuple(layers), num_classes=num_classes)


def resnet50(num_classes=1000, layers=(3, 4, 6, 3)):
    """ResNet-50 (Bottleneck) for 224x224 input."""
    return ResNet(Bottleneck, tuple(layers), num_classes=num_classes)


def resnet101(num_classes=1000, layers=(3, 4, 23, 3)):
    """ResNet-101 (Bottleneck) for 224x224 input."""
    return ResNet(Bottleneck, tuple(layers), num_classes=num_classes)


def resnet152(num_classes=1000, layers=(3, 8, 36, 3)):
    """ResNet-152 (Bottleneck) for 224x224 input."""
    return ResNet(Bottleneck, tuple(layers), num_classes=num_classes)
