"""MobileNet-V2 in the style of the early (2018) community ports.

Inverted residual block: 1x1 expansion (skipped when t == 1) -> 3x3
depthwise conv (``groups=hidden``) -> 1x1 linear projection, with ReLU6 and
an identity shortcut when stride is 1 and the width is kept.  Global pooling
is the old ``x.mean(3).mean(2)`` idiom.  ``width`` is the width multiplier
(channels truncated with ``int()`` as the early ports did).  Input 3x224x224.
"""
import torch.nn as nn

# expansion t, output channels c, repeats n, first stride s
BLOCK_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_relu6(cin, cout, kernel, stride, groups=1):
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):

    def __init__(self, inp, oup, stride, expand_ratio):
        super(InvertedResidual, self).__init__()
        assert stride in (1, 2)
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers += _conv_bn_relu6(inp, hidden, 1, 1)            # expand
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, hidden)  # depthwise
        layers += [nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),     # project
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):

    def __init__(self, num_classes=1000, width_mult=1.0):
        super(MobileNetV2, self).__init__()
        channels = int(32 * width_mult)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        blocks = [nn.Sequential(*_conv_bn_relu6(3, channels, 3, 2))]
        for t, c, n, s in BLOCK_SETTINGS:
            out_channels = int(c * width_mult)
            for repeat in range(n):
                stride = s if repeat == 0 else 1
                blocks.append(InvertedResidual(channels, out_channels, stride, t))
                channels = out_channels
        blocks.append(nn.Sequential(*_conv_bn_relu6(channels, self.last_channel, 1, 1)))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Dropout(0.2),
            nn.Linear(self.last_channel, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = x.mean(3).mean(2)
        return self.classifier(x)


def mobilenet_v2(num_classes=1000, width=1.0):
    """MobileNet-V2 for 224x224 input (about 3.5M parameters at width 1)."""
    return MobileNetV2(num_classes=num_classes, width_mult=width)
