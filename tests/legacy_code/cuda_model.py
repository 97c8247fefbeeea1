"""Model code of 2017 that assumed a GPU: `.cuda()` inside the model and `torch.cuda.*Tensor` types.

Normalisation constants made in forward with ``torch.cuda.FloatTensor``, an input cast with
``x.type(torch.cuda.FloatTensor)``, a sub-module moved with ``.cuda()`` in ``__init__``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Variable


class Normalized(nn.Module):
    def __init__(self):
        super(Normalized, self).__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ).cuda()
        self.classifier = nn.Linear(8 * 4 * 4, 10).cuda()

    def forward(self, x):
        x = x.type(torch.cuda.FloatTensor)
        std = Variable(torch.cuda.FloatTensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        shift = Variable(torch.cuda.FloatTensor(3).fill_(-2.0).view(1, 3, 1, 1))
        x = (x / std + shift).cuda()
        x = self.features(x)
        return F.softmax(self.classifier(x.view(x.size(0), -1)), dim=1)
