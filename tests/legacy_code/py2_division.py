"""Python 2 model code: sizes computed with `/` on integers (floor division there, a float in Python 3).

``Grouped``'s channel counts and its channel-shuffle view, ``UpTo``'s upsampling size, ``Halves``'s
Linear width are all whole numbers, so their intent is unambiguous; ``Odd`` divides 25 channels by 2.
"""
import torch.nn as nn
import torch.nn.functional as F


class Grouped(nn.Module):
    def __init__(self, channels=16, groups=4):
        super(Grouped, self).__init__()
        self.groups = groups
        self.reduce = nn.Conv2d(channels, channels / 2, 1)
        self.bn = nn.BatchNorm2d(channels / 2)
        self.conv = nn.Conv2d(channels / 2, channels, 3, padding=1, groups=groups)

    def forward(self, x):
        x = F.relu(self.bn(self.reduce(x)))
        x = self.conv(x)
        n, c, h, w = x.size()
        x = x.view(n, self.groups, c / self.groups, h, w).transpose(1, 2).contiguous()  # channel shuffle
        return x.view(n, c, h, w)


class UpTo(nn.Module):
    def forward(self, x):
        return F.upsample(x, size=(x.size(2) * 4 / 2, x.size(3) * 6 / 3), mode='nearest')


class Halves(nn.Module):
    def __init__(self, features=24):
        super(Halves, self).__init__()
        self.fc = nn.Linear(features, features / 2)

    def forward(self, x):
        return self.fc(x.view(x.size(0), x.size(1) * x.size(2) * x.size(3) / 2, 2).mean(2))


class Odd(nn.Module):
    def __init__(self, channels=25):
        super(Odd, self).__init__()
        self.conv = nn.Conv2d(3, channels / 2, 3)
