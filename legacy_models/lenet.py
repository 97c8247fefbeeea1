"""LeNet-5 for 32x32 images, in the style of the 2017 PyTorch tutorials.

The smallest model of the zoo: handy for quick examples, e.g.
``tracecap.legacy_models.build('lenet')`` with input 1x3x32x32.
``activation='tanh'`` gives the classic LeCun non-linearity,
``with_softmax=True`` appends ``F.softmax(x, dim=1)``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Variable


class LeNet(nn.Module):

    def __init__(self, num_classes=10, in_channels=3, activation='relu',
                 with_softmax=False):
        super(LeNet, self).__init__()
        if activation not in ('relu', 'tanh'):
            raise ValueError("activation must be 'relu' or 'tanh', got %r"
                             % (activation,))
        self.activation = activation
        self.with_softmax = with_softmax
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def act(self, x):
        if self.activation == 'tanh':
            return F.tanh(x)
        return F.relu(x)

    def forward(self, x):
        # 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5
        x = F.max_pool2d(self.act(self.conv1(x)), (2, 2))
        x = F.max_pool2d(self.act(self.conv2(x)), 2)
        x = x.view(-1, 16 * 5 * 5)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        x = self.fc3(x)
        if self.with_softmax:
            x = F.softmax(x, dim=1)
        return x


def example_input(batch=1, in_channels=3, seed=0):
    """A seeded random input wrapped the old way, in a ``Variable``
    (a plain Tensor on PyTorch >= 0.4)."""
    generator = torch.Generator().manual_seed(seed)
    return Variable(torch.randn(batch, in_channels, 32, 32, generator=generator))


def lenet(num_classes=10, in_channels=3, activation='relu', with_softmax=False):
    """LeNet-5 for 32x32 input (about 62K parameters at 10 classes)."""
    return LeNet(num_classes=num_classes, in_channels=in_channels,
                 activation=activation, with_softmax=with_softmax)
