"""2017 idioms that still run on today's PyTorch: F.sigmoid / F.tanh, in-place flags, implicit-dim softmax,
and losses with size_average / reduce."""
import torch.nn as nn
import torch.nn.functional as F


class Gates(nn.Module):
    def __init__(self):
        super(Gates, self).__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.leaky = nn.LeakyReLU(0.1, inplace=True)
        self.drop = nn.Dropout(0.5, inplace=True)
        self.elu = nn.ELU(inplace=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.conv(x))
        gate = F.sigmoid(x)
        x = self.leaky(x * gate + F.tanh(x))
        x = self.elu(F.relu(x - 0.5, inplace=True))
        x = self.drop(F.avg_pool2d(x, x.size()[2:]))
        return F.log_softmax(self.fc(x.view(x.size(0), -1)))


class SpatialSoftmax(nn.Module):
    """The implicit dim of a 4-D softmax is 1 (channels), of a 3-D one 0."""

    def forward(self, x):
        return F.softmax(x), F.softmax(x[0])


def losses(output, target, scores, labels):
    """The loss spellings of 0.3: size_average and reduce instead of reduction."""
    return (nn.MSELoss(size_average=False)(output, target),
            F.mse_loss(output, target, size_average=True),
            F.l1_loss(output, target, reduce=False),
            F.nll_loss(scores, labels, size_average=False),
            nn.CrossEntropyLoss(size_average=True)(scores, labels))
