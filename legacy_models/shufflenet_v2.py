"""ShuffleNet-V2 (x0.5 / x1.0 / x1.5 / x2.0) in the early community-port style.

Stride-1 units split the input with ``x.chunk(2, dim=1)`` and process one
half; stride-2 units run two branches on the full input.  Both end with
``torch.cat`` and ``channel_shuffle`` (view -> transpose -> contiguous ->
view).  Global pooling is a fixed ``nn.AvgPool2d(input_size // 32)`` followed
by ``x.view(-1, channels)``.  Input 3x224x224.
"""
import torch
import torch.nn as nn

STAGE_REPEATS = (4, 8, 4)
STAGE_WIDTHS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


def channel_shuffle(x, groups):
    batch, channels, height, width = x.data.size()
    per_group = channels // groups
    # (N, g, C/g, H, W) -> swap the two channel axes -> flatten back
    x = x.view(batch, groups, per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batch, -1, height, width)
    return x


def _pw(cin, cout, relu=True):
    layers = [nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def _dw(channels, stride):
    return [nn.Conv2d(channels, channels, 3, stride, 1, groups=channels,
                      bias=False),
            nn.BatchNorm2d(channels)]


class ShuffleUnit(nn.Module):

    def __init__(self, inp, oup, stride):
        super(ShuffleUnit, self).__init__()
        assert stride in (1, 2)
        self.stride = stride
        half = oup // 2
        if stride == 1:
            assert inp == oup, 'stride-1 units keep the width'
            self.branch1 = None
            cin2 = half
        else:
            # left branch: depthwise 3x3/2 -> 1x1
            self.branch1 = nn.Sequential(*(_dw(inp, 2) + _pw(inp, half)))
            cin2 = inp
        # right branch: 1x1 -> depthwise 3x3 -> 1x1
        self.branch2 = nn.Sequential(*(_pw(cin2, half) + _dw(half, stride) +
                                       _pw(half, half)))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):

    def __init__(self, num_classes=1000, input_size=224, width_mult=1.0):
        super(ShuffleNetV2, self).__init__()
        assert input_size % 32 == 0
        if width_mult not in STAGE_WIDTHS:
            raise ValueError('width_mult must be one of %s, got %r'
                             % (sorted(STAGE_WIDTHS), width_mult))
        self.stage_out_channels = STAGE_WIDTHS[width_mult]
        stem = self.stage_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        units = []
        channels = stem
        for repeats, width in zip(STAGE_REPEATS, self.stage_out_channels[1:4]):
            for index in range(repeats):
                units.append(ShuffleUnit(channels, width, 2 if index == 0 else 1))
                channels = width
        self.features = nn.Sequential(*units)

        last = self.stage_out_channels[-1]
        self.conv_last = nn.Sequential(*_pw(channels, last))
        self.globalpool = nn.AvgPool2d(input_size // 32)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.features(x)
        x = self.conv_last(x)
        x = self.globalpool(x)
        x = x.view(-1, self.stage_out_channels[-1])
        return self.classifier(x)


def shufflenet_v2(num_classes=1000, width=1.0):
    """ShuffleNet-V2 for 224x224 input; ``width`` in (0.5, 1.0, 1.5, 2.0)."""
    return ShuffleNetV2(num_classes=num_classes, input_size=224,
                        width_mult=float(width))
