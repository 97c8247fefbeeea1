"""A small FCN-style segmentation net of late 2017, with each bilinear upsampling spelling of PyTorch 0.3.

Up to 0.3.1 all of them computed what 0.4 later called ``align_corners=True``; today ``F.upsample`` and
``nn.Upsample`` without ``align_corners`` compute ``align_corners=False`` instead.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SegNet(nn.Module):

    def __init__(self, num_classes=5):
        super(SegNet, self).__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode='bilinear')
        self.score = nn.Conv2d(16 + 8, num_classes, 1)

    def forward(self, x):
        c1 = F.relu(self.conv1(x))                     # 8 x H x W
        c2 = F.relu(self.conv2(F.max_pool2d(c1, 2)))   # 16 x H/2
        c3 = F.relu(self.conv3(F.max_pool2d(c2, 2)))   # 16 x H/4
        u = self.up(c3) + c2                           # nn.Upsample: 16 x H/2
        u = F.upsample(u, scale_factor=2, mode='bilinear')   # F.upsample: 16 x H
        out = self.score(torch.cat([u, c1], 1))
        return F.upsample(out, size=(x.size(2) + 3, x.size(3) + 5), mode='bilinear')  # to a given size


class AlwaysAligned(nn.Module):
    """The spellings that passed align_corners=True themselves: the same numbers with and without compat."""

    def __init__(self):
        super(AlwaysAligned, self).__init__()
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)

    def forward(self, x):
        return F.upsample_bilinear(self.up(x), size=(20, 12))


class Temporal(nn.Module):
    """0.3's temporal (3-D input, 'linear') and volumetric (5-D, 'trilinear') modes, old default too."""

    def forward(self, x):
        return F.upsample(x, scale_factor=3, mode='linear')
