"""Tests for tracecap.legacy_models (the bundled pre-0.4-style model zoo)."""
import warnings

import pytest
import torch
import torch.nn as nn

from tracecap import legacy_models as zoo

# The zoo is written in the old style on purpose; the deprecation warnings it
# triggers (e.g. F.upsample) are expected here and are not silenced in the
# library itself.
pytestmark = [
    pytest.mark.filterwarnings('ignore::DeprecationWarning'),
    pytest.mark.filterwarnings('ignore:.*is deprecated.*:UserWarning'),
    pytest.mark.filterwarnings('ignore:.*deprecated.*:FutureWarning'),
]

# Size-reduced variants for the per-model checks (same topology, less work);
# tests/test_caffe_models.py runs every model at full size.
SMALL = {
    'alexnet': {},
    'vgg11': {'width': 0.25},
    'vgg13': {'width': 0.25},
    'vgg16': {'width': 0.25},
    'vgg19': {'width': 0.25},
    'vgg11_bn': {'width': 0.25},
    'vgg13_bn': {'width': 0.25},
    'vgg16_bn': {'width': 0.25},
    'vgg19_bn': {'width': 0.25},
    'resnet18': {},
    'resnet34': {'layers': (1, 1, 1, 1)},
    'resnet50': {'layers': (1, 1, 1, 1)},
    'resnet101': {'layers': (1, 1, 2, 1)},
    'resnet152': {'layers': (1, 2, 2, 1)},
    'squeezenet1_0': {},
    'squeezenet1_1': {},
    'densenet121': {'block_config': (2, 2, 2, 2)},
    'densenet169': {},
    'densenet201': {},
    'densenet161': {},
    'inception_v3': {},
    'vgg11_bn_reduced': {},
    'densenet121_reduced': {},
    'mobilenet_v2': {'width': 0.5},
    'inception_net': {},
    'shufflenet_v2': {'width': 0.5},
    'se_resnet': {},
    'lenet': {},
    'fcn_upsample': {},
    'cifar_resnet20': {},
}

EXPECTED_OUTPUT = {
    'lenet': (1, 10),
    'cifar_resnet20': (1, 10),
    'fcn_upsample': (1, 21, 64, 64),
}

# Parameter counts of the default (full-size) models; the published
# architectures have exactly these counts (torchvision's documented ones for
# the 2017 zoo, inception_v3 including its aux head).
EXPECTED_PARAMS = {
    'alexnet': 61100840,
    'vgg11': 132863336,
    'vgg13': 133047848,
    'vgg16': 138357544,
    'vgg19': 143667240,
    'vgg11_bn': 132868840,
    'vgg13_bn': 133053736,
    'vgg16_bn': 138365992,
    'vgg19_bn': 143678248,
    'resnet18': 11689512,
    'resnet34': 21797672,
    'resnet50': 25557032,
    'resnet101': 44549160,
    'resnet152': 60192808,
    'squeezenet1_0': 1248424,
    'squeezenet1_1': 1235496,
    'densenet121': 7978856,
    'densenet169': 14149480,
    'densenet201': 20013928,
    'densenet161': 28681000,
    'inception_v3': 27161264,
    'mobilenet_v2': 3504872,
    'shufflenet_v2': 2278604,
}

_BUILT = {}


@pytest.fixture(scope='module', autouse=True)
def _single_thread():
    # Many small kernels: with intra-op threads on a busy machine (other
    # test workers, compilers) OpenMP barriers can make these forwards 10-100x
    # slower; one thread keeps the file fast and predictable.  Restored after.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        _BUILT.clear()


def _build_and_run(name, seed=0, **kwargs):
    """Build (cached per name/seed/kwargs) and run on the seeded input."""
    key = (name, seed, tuple(sorted(kwargs.items())))
    if key not in _BUILT:
        model = zoo.build(name, seed=seed, **kwargs)
        x = zoo.example_input(name, seed=1234, **kwargs)
        with torch.no_grad():
            out = model(x)
        _BUILT[key] = (model, out)
    return _BUILT[key]


def _check_output(name, out, expected_shape):
    assert tuple(out.shape) == expected_shape, (name, tuple(out.shape))
    assert torch.isfinite(out).all(), name
    std = out.std().item()
    print('%s: output std %.4f, mean %.4f, max |y| %.4f'
          % (name, std, out.mean().item(), out.abs().max().item()))
    assert 0.05 < std < 50.0, (name, std)
    assert out.abs().max().item() < 1e3, name


def test_registry_api():
    assert len(NAMES_SET) == len(zoo.NAMES) == 30
    assert set(SMALL) == NAMES_SET
    assert zoo.input_shape('resnet50') == (1, 3, 224, 224)
    assert zoo.input_shape('lenet') == (1, 3, 32, 32)
    assert zoo.input_shape('lenet', in_channels=1) == (1, 1, 32, 32)
    assert zoo.input_shape('fcn_upsample', batch=4) == (4, 3, 128, 128)
    assert zoo.input_shape('vgg11_bn', width=0.25) == (1, 3, 224, 224)
    assert zoo.input_shape('inception_v3') == (1, 3, 299, 299)
    with pytest.raises(KeyError):
        zoo.build('resnet1001')
    with pytest.raises(KeyError):
        zoo.input_shape('nope')
    lines = zoo.describe().splitlines()
    assert len(lines) == len(zoo.NAMES)
    for name, line in zip(zoo.NAMES, lines):
        assert line.startswith(name)
    assert zoo.get_factory('lenet') is zoo.lenet


NAMES_SET = set(zoo.NAMES)


@pytest.mark.parametrize('name', sorted(EXPECTED_PARAMS))
def test_parameter_counts_match_published_architectures(name):
    assert zoo._count_parameters(name) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize('name', zoo.NAMES)
def test_builds_runs_and_is_well_scaled(name):
    kwargs = SMALL[name]
    model, out = _build_and_run(name, **kwargs)
    assert not model.training
    assert all(not m.training for m in model.modules())
    _check_output(name, out, EXPECTED_OUTPUT.get(name, (1, 1000)))


@pytest.mark.parametrize('name', zoo.NAMES)
def test_seed_determinism(name):
    kwargs = SMALL[name]
    model_a, out_a = _build_and_run(name, seed=0, **kwargs)
    model_b = zoo.build(name, seed=0, **kwargs)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    x = zoo.example_input(name, seed=1234, **kwargs)
    with torch.no_grad():
        assert torch.equal(model_b(x), out_a)
        # a different seed gives different weights and outputs
        model_c = zoo.build(name, seed=1, **kwargs)
        assert not torch.equal(model_c(x), out_a)


def test_build_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    zoo.build('lenet', seed=3)
    zoo.build('fcn_upsample', seed=3)
    assert torch.equal(state, torch.random.get_rng_state())


def test_batchnorm_statistics_are_non_trivial():
    model, _ = _build_and_run('resnet18')
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20
    for bn in bns:
        assert (bn.running_var > 0).all()
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
        assert bn.bias.abs().max() > 0
        assert bn.running_var.std() > 0   # per-channel, not one constant
    raw = zoo.build('se_resnet', seed=5, calibrate=False)
    for bn in (m for m in raw.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.running_var.min() >= 0.5 and bn.running_var.max() <= 1.5
        assert bn.running_mean.abs().max() <= 0.25
        assert bn.weight.min() >= 0.5 and bn.weight.max() <= 1.5


def test_reduced_variants_are_the_full_factories_with_smaller_settings():
    with torch.device('meta'):
        pairs = ((zoo.vgg11_bn_reduced(), zoo.vgg11_bn(width=0.25)),
                 (zoo.densenet121_reduced(), zoo.densenet121(block_config=(2, 2, 2, 2))))
        for reduced, direct in pairs:
            assert type(reduced) is type(direct)
            assert {k: v.shape for k, v in reduced.state_dict().items()} == \
                {k: v.shape for k, v in direct.state_dict().items()}
    assert zoo._count_parameters('vgg11_bn_reduced') < zoo._count_parameters('vgg11_bn') / 10


def test_full_size_logits_are_sane():
    # BN calibration at 299x299 and through 161/201-layer DenseNets
    for name in ('resnet50', 'densenet121', 'densenet161', 'inception_v3'):
        _, out = _build_and_run(name)
        _check_output(name, out, (1, 1000))


def test_batch_of_two_matches_single_samples():
    # view(x.size(0), ...) / view(-1, C) flattening must keep samples apart
    for name, kwargs in (('lenet', {}), ('shufflenet_v2', {'width': 0.5}),
                         ('squeezenet1_1', {}), ('fcn_upsample', {})):
        model, _ = _build_and_run(name, **kwargs)
        x = zoo.example_input(name, batch=2, seed=7, **kwargs)
        with torch.no_grad():
            both = model(x)
            first = model(x[:1])
            second = model(x[1:])
        assert torch.allclose(both[:1], first, atol=1e-4, rtol=1e-4), name
        assert torch.allclose(both[1:], second, atol=1e-4, rtol=1e-4), name


def test_model_variants():
    with torch.no_grad():
        probs = zoo.build('lenet', with_softmax=True, num_classes=7)(
            zoo.example_input('lenet'))
        assert probs.shape == (1, 7)
        assert torch.allclose(probs.sum(1), torch.ones(1))
        gray = zoo.build('lenet', in_channels=1, activation='tanh')
        assert gray(zoo.example_input('lenet', in_channels=1)).shape == (1, 10)
        seg = zoo.build('fcn_upsample', num_classes=5, with_softmax=True)(
            zoo.example_input('fcn_upsample'))
        assert seg.shape == (1, 5, 64, 64)
        assert torch.allclose(seg.sum(1), torch.ones(1, 64, 64), atol=1e-5)
    with pytest.raises(ValueError):
        zoo.build('shufflenet_v2', width=0.75)
    with pytest.raises(ValueError):
        zoo.build('lenet', activation='sigmoid')
    from tracecap.legacy_models.lenet import example_input
    assert example_input().shape == (1, 3, 32, 32)


def test_old_style_deprecation_warnings_are_not_suppressed():
    model, _ = _build_and_run('fcn_upsample')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with torch.no_grad():
            model(zoo.example_input('fcn_upsample'))
    assert any('upsample' in str(w.message) for w in caught)


def test_weights_do_not_depend_on_thread_count():
    # BatchNorm calibration runs in float64, so the float32 weights of a seed
    # are bit-identical whatever the intra-op thread count.
    kwargs = {'block_config': (1, 1, 1, 1)}
    single = zoo.build('densenet121', seed=2, **kwargs).state_dict()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        multi = zoo.build('densenet121', seed=2, **kwargs).state_dict()
    finally:
        torch.set_num_threads(previous)
    for key in single:
        assert single[key].dtype == multi[key].dtype
        assert torch.equal(single[key], multi[key]), key
    assert single['classifier.weight'].dtype == torch.float32
