"""tracecap.legacy_models -- a zoo of models in the pre-0.4 PyTorch style.

These are the kind of model definitions tracecap users revive: written for
PyTorch 0.2-0.4 (``Variable``, ``x.view(x.size(0), -1)``, ``F.upsample``,
``nn.AvgPool2d(7)`` heads, ``F.sigmoid`` ...) but still runnable on current
PyTorch.  They double as end-to-end fixtures for the converter.

The 2017 torchvision zoo (torchvision 0.1.9-0.2.0) is here at full size under
its own names -- ``alexnet``, ``vgg11`` ... ``vgg19_bn``, ``resnet18`` ...
``resnet152``, ``squeezenet1_0/1_1``, ``densenet121/169/201/161``,
``inception_v3`` (299x299) -- with the module names of that zoo, so the
``state_dict()`` keys and shapes are those of the published files
(``resnet18-5c106cde.pth`` ...) and such a file loads with ``strict=True``
(DenseNet's ``norm.1``-style keys after ``tracecap.fix_state_dict``).
``ZOO_2017`` lists them.  ``vgg11_bn_reduced`` (width 0.25) and
``densenet121_reduced`` (two layers per dense block) are quick variants.

Registry API::

    from tracecap import legacy_models as zoo
    zoo.NAMES                         # tuple of model names
    model = zoo.build('resnet18', seed=0)        # eval mode, seeded weights
    x = zoo.example_input('resnet18', seed=0)    # seeded input tensor
    zoo.input_shape('resnet18')       # (1, 3, 224, 224)
    print(zoo.describe())             # one line per model

``build`` passes extra keyword arguments to the model factory, e.g.
``build('vgg16', width=0.25)``, ``build('densenet121',
block_config=(2, 2, 2, 2))``, ``build('mobilenet_v2', width=0.5)``,
``build('shufflenet_v2', width=0.5)``, ``num_classes=...`` everywhere.

Weights: conv / linear weights are He-normal (std = sqrt(2 / fan_in)),
biases uniform(-0.1, 0.1); BatchNorm weight ~ U(0.5, 1.5), bias ~
U(-0.25, 0.25), running_mean ~ U(-0.25, 0.25), running_var ~ U(0.5, 1.5).
With ``calibrate=True`` (the default) the running statistics are then
re-expressed in the scale of the activations each BatchNorm actually sees on
the seeded example input (one forward pass): with ``S`` the mean over
channels of the input's second moment E[x^2], running_mean = r_mean *
sqrt(S) and running_var = r_var * S.  Activations stay O(1) through deep
residual / dense nets while BatchNorm still applies a non-trivial,
per-channel affine transform.  One scale per layer, not one per channel, and
no centering, on purpose: normalising each channel by its own statistics on
a single input boosts weak channels and removes the channel means, so every
BatchNorm amplified float32 rounding by 1.1-2x, which compounded over depth
to beyond the runtimes' tolerance (ResNet-152: 2.3e-3 between float32 and
float64 with per-channel statistics, 4e-6 with these).  ``calibrate=False``
leaves the raw random statistics.  Everything is drawn from
``torch.Generator`` seeded with ``seed``; the global RNG is not touched.
The calibration pass runs in float64, so a seed gives the same float32
weights whatever the thread count (models without BatchNorm skip it).
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from .alexnet import alexnet
from .vgg import (vgg11, vgg13, vgg16, vgg19, vgg11_bn, vgg13_bn, vgg16_bn,
                  vgg19_bn, vgg11_bn_reduced)
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152
from .squeezenet import squeezenet1_0, squeezenet1_1
from .densenet import (densenet121, densenet169, densenet201, densenet161,
                       densenet121_reduced)
from .inception_v3 import inception_v3
from .mobilenet_v2 import mobilenet_v2
from .inception_net import inception_net
from .shufflenet_v2 import shufflenet_v2
from .se_resnet import se_resnet
from .lenet import lenet
from .fcn_upsample import fcn_upsample
from .cifar_resnet import cifar_resnet20

__all__ = ['NAMES', 'ZOO_2017', 'build', 'get_factory', 'input_shape', 'example_input',
           'describe', 'init_weights', 'calibrate_batchnorm']


def _rgb(size):
    def shape(**kwargs):
        return (3, size, size)
    return shape


def _lenet_shape(in_channels=3, **kwargs):
    return (in_channels, 32, 32)


def _entries(factories, shape, summary):
    """Registry rows named after the factories; ``summary`` % the factory's name."""
    return [(f.__name__, (f, shape, summary % f.__name__)) for f in factories]


# name -> (factory, per-sample input shape (C, H, W) given kwargs, summary)
_REGISTRY = OrderedDict(
    [('alexnet', (alexnet, _rgb(224),
                  'AlexNet, features + dropout classifier, view(N, 256*6*6)'))]
    + _entries([vgg11, vgg13, vgg16, vgg19], _rgb(224),
               '%s: 3x3 convs, 3 Linear; width= multiplier')
    + _entries([vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn], _rgb(224),
               '%s: BN after every conv; width= multiplier')
    + _entries([resnet18, resnet34], _rgb(224),
               '%s: BasicBlock, out += residual, AvgPool2d(7)')
    + _entries([resnet50, resnet101, resnet152], _rgb(224),
               '%s: Bottleneck with conv1x1+BN downsample')
    + _entries([squeezenet1_0, squeezenet1_1], _rgb(224),
               '%s: Fire modules (cat), ceil_mode max pooling')
    + _entries([densenet121, densenet169, densenet201, densenet161], _rgb(224),
               '%s: cat([x, new], 1); old norm.1 keys via fix_state_dict')
    + [('inception_v3', (inception_v3, _rgb(299),
                         'Inception v3 (299x299), AuxLogits in the state dict, training-only')),
       ('vgg11_bn_reduced', (vgg11_bn_reduced, _rgb(224),
                             'VGG-11-BN at width 0.25 (quick variant)')),
       ('densenet121_reduced', (densenet121_reduced, _rgb(224),
                                'DenseNet-121 with block_config (2, 2, 2, 2) (quick variant)')),
       ('mobilenet_v2', (mobilenet_v2, _rgb(224),
                         'MobileNet-V2, depthwise convs, ReLU6, x.mean(3).mean(2); width=')),
       ('inception_net', (inception_net, _rgb(224),
                          'small Inception (v1/v3 blocks, 1x7/7x1, pooled branches)')),
       ('shufflenet_v2', (shufflenet_v2, _rgb(224),
                          'ShuffleNet-V2, chunk + channel shuffle; width= 0.5/1.0/1.5/2.0')),
       ('se_resnet', (se_resnet, _rgb(224),
                      'small SE-ResNet, sigmoid gate broadcast-multiplied; layers=')),
       ('lenet', (lenet, _lenet_shape,
                  'LeNet-5 for 32x32 (CIFAR-style) input; tiny quick example')),
       ('fcn_upsample', (fcn_upsample, _rgb(128),
                         'small FCN, F.upsample nearest x2 + cat skip + add; output at H/2')),
       ('cifar_resnet20', (cifar_resnet20, _rgb(32),
                           'ResNet-20 for CIFAR-10, 2018 pytorch-cifar layout (loads real checkpoints)'))])

NAMES = tuple(_REGISTRY)

# the full-size 2017 torchvision zoo, under torchvision's names
ZOO_2017 = NAMES[:NAMES.index('inception_v3') + 1]


def _entry(name):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError('unknown legacy model %r; known: %s'
                       % (name, ', '.join(NAMES))) from None


def get_factory(name):
    """The model factory for ``name`` (returns an untouched, train-mode
    module with PyTorch's default initialisation)."""
    return _entry(name)[0]


def input_shape(name, batch=1, **kwargs):
    """Input shape for ``name`` as a tuple, e.g. ``(1, 3, 224, 224)``.

    Accepts the same keyword arguments as :func:`build` (only those that
    change the input, such as ``in_channels`` for lenet, have an effect).
    """
    return (int(batch),) + tuple(_entry(name)[1](**kwargs))


def example_input(name, batch=1, seed=0, **kwargs):
    """A seeded standard-normal input tensor of :func:`input_shape`."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(input_shape(name, batch, **kwargs), generator=generator)


def init_weights(model, seed=0):
    """Re-initialise every parameter and BatchNorm buffer of ``model`` from a
    generator seeded with ``seed`` (see the module docstring for the
    distributions).  Raises if the model holds parameters or buffers this
    zoo does not know how to initialise."""
    generator = torch.Generator().manual_seed(int(seed))

    def uniform(tensor, low, high):
        values = torch.rand(tensor.shape, generator=generator, dtype=torch.float32)
        tensor.copy_(values * (high - low) + low)

    handled = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                weight = module.weight
                fan_in = weight[0].numel()
                weight.copy_(torch.randn(weight.shape, generator=generator)
                             * (2.0 / fan_in) ** 0.5)
                handled.add(id(weight))
                if module.bias is not None:
                    uniform(module.bias, -0.1, 0.1)
                    handled.add(id(module.bias))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                if module.affine:
                    uniform(module.weight, 0.5, 1.5)
                    uniform(module.bias, -0.25, 0.25)
                    handled.update((id(module.weight), id(module.bias)))
                if module.track_running_stats:
                    uniform(module.running_mean, -0.25, 0.25)
                    uniform(module.running_var, 0.5, 1.5)
                    module.num_batches_tracked.zero_()
                    handled.update((id(module.running_mean), id(module.running_var),
                                    id(module.num_batches_tracked)))
    missing = [n for n, p in model.named_parameters() if id(p) not in handled]
    missing += [n for n, b in model.named_buffers() if id(b) not in handled]
    if missing:
        raise TypeError('init_weights does not know how to initialise: %s'
                        % ', '.join(missing))
    return model


def calibrate_batchnorm(model, example):
    """Rescale BatchNorm running statistics to the activations they see.

    One eval-mode forward pass of ``example``; just before each BatchNorm
    runs, the mean over channels ``S`` of its input's per-channel second
    moment is measured and the existing (random) statistics ``r_mean``,
    ``r_var`` become ``running_mean = r_mean * sqrt(S)`` and
    ``running_var = r_var * S`` (see the module docstring for why one scale
    per layer).  Upstream layers are already calibrated when a layer is
    measured, so a single pass suffices.
    """
    def pre_hook(module, inputs):
        x = inputs[0].detach()
        dims = [d for d in range(x.dim()) if d != 1]
        scale = x.pow(2).mean(dims).mean().clamp_min(1e-12)
        module.running_mean.mul_(scale.sqrt())
        module.running_var.mul_(scale)

    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and m.track_running_stats]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return model


def build(name, seed=0, calibrate=True, **kwargs):
    """Build model ``name`` in eval mode with seeded random weights.

    ``kwargs`` go to the model factory (``num_classes``, ``width``,
    ``block_config``, ``layers`` ...).  The same ``name``/``seed``/
    ``kwargs`` give bit-identical float32 weights (BatchNorm calibration runs
    in float64, see the module docstring); ``calibrate=False`` skips it.
    """
    factory = _entry(name)[0]
    # Build on the meta device so the (large) default initialisation is
    # skipped; init_weights then fills every parameter and buffer.
    with torch.device('meta'):
        model = factory(**kwargs)
    model = model.to_empty(device='cpu')
    init_weights(model, seed)
    if calibrate and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                         for m in model.modules()):
        # Calibrate in float64 (then round the statistics back to float32):
        # float32 conv results vary in the last bits with the thread count /
        # CPU kernels, float64 ones do not survive the rounding, so the
        # weights of a given seed are the same everywhere.  The float32 ->
        # float64 -> float32 round trip is exact for the parameters.
        model.double()
        calibrate_batchnorm(model, example_input(name, 1, seed, **kwargs).double())
        model.float()
    return model.eval()


def _count_parameters(name, **kwargs):
    with torch.device('meta'):
        model = get_factory(name)(**kwargs)
    return sum(p.numel() for p in model.parameters())


def describe():
    """One line per model: name, default input shape, parameter count and a
    short description (returned as a single newline-joined string)."""
    lines = []
    for name in NAMES:
        params = _count_parameters(name)
        lines.append('%-19s %-18s %8.2fM params  %s'
                     % (name, str(input_shape(name)), params / 1e6,
                        _REGISTRY[name][2]))
    return '\n'.join(lines)
