"""A small Inception network (v1/v3-style mixed blocks) for 224x224 input.

Not a published model: a compact net that exercises the Inception patterns
old zoos used -- a ``BasicConv2d`` (conv + BN(eps=0.001) + ReLU) stem,
parallel branches joined with ``torch.cat``, an Inception-v1 block (1x1,
1x1->3x3, 1x1->5x5, 3x3 max-pool->1x1), an Inception-v3 "A" block (double
3x3 and ``F.avg_pool2d(x, 3, stride=1, padding=1)`` pool branch), a stride-2
reduction block and a v3 "C" block with factorised 1x7 / 7x1 convolutions.
Spatial schedule: 224 -> 112 -> 56 -> 28 -> 14 -> global pool.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .inception_v3 import BasicConv2d


class InceptionV1Block(nn.Module):
    """GoogLeNet-style block: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, cpool):
        super(InceptionV1Block, self).__init__()
        self.branch1x1 = BasicConv2d(cin, c1, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, c3r, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(c3r, c3, kernel_size=3, padding=1)
        self.branch5x5_1 = BasicConv2d(cin, c5r, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(c5r, c5, kernel_size=5, padding=2)
        self.branch_pool = BasicConv2d(cin, cpool, kernel_size=1)
        self.out_channels = c1 + c3 + c5 + cpool

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        bp = self.branch_pool(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, b5, bp], 1)


class InceptionA(nn.Module):
    """v3-style: 1x1 | 1x1->3x3 | 1x1->3x3->3x3 | avgpool->1x1."""

    def __init__(self, cin, pool_features):
        super(InceptionA, self).__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(48, 64, kernel_size=3, padding=1)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)
        self.out_channels = 64 + 64 + 96 + pool_features

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        bd = self.branch3x3dbl_1(x)
        bd = self.branch3x3dbl_2(bd)
        bd = self.branch3x3dbl_3(bd)
        bp = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(bp)
        return torch.cat([b1, b3, bd, bp], 1)


class ReductionB(nn.Module):
    """Stride-2 grid reduction: 3x3/2 | 1x1->3x3->3x3/2 | maxpool 3x3/2."""

    def __init__(self, cin):
        super(ReductionB, self).__init__()
        self.branch3x3 = BasicConv2d(cin, 192, kernel_size=3, stride=2, padding=1)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2, padding=1)
        self.out_channels = 192 + 96 + cin

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """v3-style block with 7x7 convolutions factorised into 1x7 and 7x1."""

    def __init__(self, cin, c7):
        super(InceptionC, self).__init__()
        self.branch1x1 = BasicConv2d(cin, 128, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 128, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 128, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 128, kernel_size=1)
        self.out_channels = 4 * 128

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_2(bd)
        bd = self.branch7x7dbl_3(bd)
        bd = self.branch7x7dbl_4(bd)
        bd = self.branch7x7dbl_5(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionNet(nn.Module):

    def __init__(self, num_classes=1000, dropout=0.5):
        super(InceptionNet, self).__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3, padding=1)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 128, kernel_size=3, padding=1)
        self.Mixed_3a = InceptionV1Block(128, 64, 48, 64, 16, 32, 32)
        self.Mixed_3b = InceptionA(self.Mixed_3a.out_channels, pool_features=32)
        self.Mixed_4a = ReductionB(self.Mixed_3b.out_channels)
        self.Mixed_4b = InceptionC(self.Mixed_4a.out_channels, c7=96)
        self.dropout = dropout
        self.fc = nn.Linear(self.Mixed_4b.out_channels, num_classes)

    def forward(self, x):
        # 3 x 224 x 224
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        # 64 x 112 x 112
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        # 128 x 56 x 56 -> Caffe-style ceil rounding -> 28 x 28
        x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        x = self.Mixed_3a(x)
        x = self.Mixed_3b(x)
        # 256 x 28 x 28
        x = self.Mixed_4a(x)
        # 544 x 14 x 14
        x = self.Mixed_4b(x)
        # 512 x 14 x 14
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def inception_net(num_classes=1000):
    """Small Inception-style net for 224x224 input (about 2.2M parameters)."""
    return InceptionNet(num_classes=num_classes)
