"""A Python 2 model file of 2017: `.cuda(async=True)` (a SyntaxError since Python 3.7) and print statements.

Loaded by ``tracecap convert py2_syntax.py:Net --legacy 0.3``, which rewrites both at load.
"""
import sys
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        print >>sys.stderr, "built", self.__class__.__name__

    def forward(self, x):
        x = x.cuda(async=True)
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        print "features:", x.size(),
        print "(async=True in a string stays)"
        return self.fc(x.view(x.size(0), -1))
