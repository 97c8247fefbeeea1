"""The MNIST example as it was written for PyTorch 0.2/0.3 (2017): the model and its test loop.

The test loop is what stops old code on today's PyTorch: ``Variable(data, volatile=True)``,
``F.nll_loss(..., size_average=False).data[0]`` (an IndexError on a 0-dim tensor since 0.4),
``.cuda()`` when ``args.cuda``; the model uses the implicit-dim ``F.log_softmax(x)``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Variable


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x)


def test(model, batches, use_cuda=True):
    """The 2017 evaluation loop: (average loss, correct count, outputs of the last batch, its input)."""
    if use_cuda:
        model.cuda()
    model.eval()
    test_loss = 0
    correct = 0
    for data, target in batches:
        if use_cuda:
            data, target = data.cuda(), target.cuda()
        data, target = Variable(data, volatile=True), Variable(target)
        output = model(data)
        test_loss += F.nll_loss(output, target, size_average=False).data[0]  # sum up batch loss
        pred = output.data.max(1, keepdim=True)[1]  # get the index of the max log-probability
        correct += pred.eq(target.data.view_as(pred)).cpu().sum()
    test_loss /= sum(len(t) for _, t in batches)
    return test_loss, correct, output, data
