"""AlexNet, single-tower variant, written the way 2017-era zoos wrote it.

Input 3x224x224.  The convolutional trunk leaves a 256x6x6 map which is
flattened with the hard-coded ``x.view(x.size(0), 256 * 6 * 6)`` before the
three fully-connected layers.  Sub-module indices (``features.0``,
``classifier.1`` ...) follow the layout of the public checkpoints.
"""
import torch.nn as nn


class AlexNet(nn.Module):

    def __init__(self, num_classes=1000):
        super(AlexNet, self).__init__()
        # 224 -> 55 -> 27 -> 27 -> 13 -> 13 -> 13 -> 13 -> 6
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), 256 * 6 * 6)
        return self.classifier(x)


def alexnet(num_classes=1000):
    """AlexNet for 224x224 RGB input (about 61M parameters at 1000 classes)."""
    return AlexNet(num_classes=num_classes)
