"""A small FCN-style segmentation net with a nearest-neighbour upsample.

Encoder: three conv-BN-ReLU stages at 1, 1/2 and 1/4 resolution (2x2 max
pooling between them).  Decoder: ``F.upsample(x, scale_factor=2,
mode='nearest')`` (the deprecated pre-0.4 name, kept on purpose -- it warns)
back to 1/2 resolution, ``torch.cat`` with the 1/2 skip, a conv-BN-LeakyReLU,
and a score map that adds a second 1x1 "skip score" (FCN-style sum).
Input 3x128x128, output ``num_classes`` x 64 x 64 (half resolution).
``with_softmax=True`` appends ``F.softmax(x, dim=1)`` over classes.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class FCNUpsample(nn.Module):

    def __init__(self, num_classes=21, width=16, with_softmax=False):
        super(FCNUpsample, self).__init__()
        w = width
        self.enc1 = _conv_bn_relu(3, w)
        self.enc2 = _conv_bn_relu(w, 2 * w)
        self.enc3 = nn.Sequential(_conv_bn_relu(2 * w, 4 * w),
                                  _conv_bn_relu(4 * w, 4 * w))
        self.dec2 = nn.Sequential(nn.Conv2d(6 * w, 2 * w, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * w),
                                  nn.LeakyReLU(0.1, inplace=True))
        self.score = nn.Conv2d(2 * w, num_classes, 1)
        self.score_skip = nn.Conv2d(2 * w, num_classes, 1)
        self.with_softmax = with_softmax

    def forward(self, x):
        e1 = self.enc1(x)                       # w   x H   x W
        e2 = self.enc2(F.max_pool2d(e1, 2))     # 2w  x H/2 x W/2
        e3 = self.enc3(F.max_pool2d(e2, 2))     # 4w  x H/4 x W/4
        up = F.upsample(e3, scale_factor=2, mode='nearest')
        d2 = self.dec2(torch.cat([up, e2], 1))  # 2w  x H/2 x W/2
        out = self.score(d2) + self.score_skip(e2)
        if self.with_softmax:
            out = F.softmax(out, dim=1)
        return out


def fcn_upsample(num_classes=21, width=16, with_softmax=False):
    """FCN-style net for 3x128x128 input; output num_classes x 64 x 64."""
    return FCNUpsample(num_classes=num_classes, width=width,
                       with_softmax=with_softmax)
