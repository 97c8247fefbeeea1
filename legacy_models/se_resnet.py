"""A small SE-ResNet: ResNet basic blocks with squeeze-and-excitation.

SE module: squeeze with ``nn.AdaptiveAvgPool2d(1)``, excite with
Linear -> ReLU -> Linear -> ``F.sigmoid``, then rescale with a broadcast
``x * y`` where ``y`` is viewed to N x C x 1 x 1.  Blocks add the shortcut
out of place (``out = out + residual``).  ``layers`` defaults to one block
per stage (an "SE-ResNet-10"); ``(2, 2, 2, 2)`` gives SE-ResNet-18.
Input 3x224x224.
"""
import torch.nn as nn
import torch.nn.functional as F


class SELayer(nn.Module):

    def __init__(self, channel, reduction=16):
        super(SELayer, self).__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channel, max(1, channel // reduction))
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(max(1, channel // reduction), channel)

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.relu(self.fc1(y))
        y = F.sigmoid(self.fc2(y)).view(b, c, 1, 1)
        return x * y


class SEBasicBlock(nn.Module):

    def __init__(self, inplanes, planes, stride=1, reduction=16):
        super(SEBasicBlock, self).__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SELayer(planes, reduction)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes))

    def forward(self, x):
        residual = x
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out = self.se(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        return F.relu(out)


class SEResNet(nn.Module):

    def __init__(self, layers=(1, 1, 1, 1), num_classes=1000, reduction=16):
        super(SEResNet, self).__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        stages = []
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for i in range(count):
                stride = 2 if (i == 0 and index > 0) else 1
                blocks.append(SEBasicBlock(channels, planes, stride, reduction))
                channels = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
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


def se_resnet(num_classes=1000, layers=(1, 1, 1, 1), reduction=16):
    """Small SE-ResNet for 224x224 input (about 5.5M parameters by default)."""
    layers = tuple(layers)
    if len(layers) != 4:
        raise ValueError('layers must have 4 entries, got %r' % (layers,))
    return SEResNet(layers=layers, num_classes=num_classes, reduction=reduction)
