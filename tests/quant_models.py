"""Quantized models for the tests: the MLP of ../shared/quantized-case.md and a small CNN, built
in eager mode (QuantStub/DeQuantStub, fused modules, FloatFunctional) and in FX graph mode,
for a given engine, calibrated on seeded data. Test inputs reach 3x the calibration range, so
a part of every batch quantizes to codes the calibration never produced."""
import contextlib
import warnings

import numpy as np
import torch
from torch import nn

CALIBRATION_STD = 1.0
TEST_STD = 3.0


@contextlib.contextmanager
def engine(name):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield name
    finally:
        torch.backends.quantized.engine = previous


def engines():
    """fbgemm and qnnpack, where this torch build has them."""
    return [e for e in ("fbgemm", "qnnpack") if e in torch.backends.quantized.supported_engines]


class MLP(nn.Module):
    """Linear(2, 3) + ReLU -> Linear(3, 7): the user's tiny classifier (softmax over 7 classes)."""

    def __init__(self, stubs=False):
        super().__init__()
        self.stubs = stubs
        self.quant = torch.ao.quantization.QuantStub()
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.input_layer = nn.Linear(2, 3)
        self.relu = nn.ReLU()
        self.out = nn.Linear(3, 7)

    def forward(self, x):
        if self.stubs:
            return self.dequant(self.out(self.relu(self.input_layer(self.quant(x)))))
        return torch.softmax(self.out(self.relu(self.input_layer(x))), dim=1)


class CNN(nn.Module):
    """conv-bn-relu (fused), conv-bn (fused), FloatFunctional residual add, ReLU, max pool, flatten, linear."""

    def __init__(self, stubs=False):
        super().__init__()
        self.stubs = stubs
        self.quant = torch.ao.quantization.QuantStub()
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.skip = nn.quantized.FloatFunctional()
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        if self.stubs:
            x = self.quant(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        z = self.bn2(self.conv2(y))
        z = self.relu2(self.skip.add(z, y) if self.stubs else z + y)
        z = self.fc(torch.flatten(self.pool(z), 1))
        return self.dequant(z) if self.stubs else z


def _seeded_float(cls, seed):
    torch.manual_seed(seed)
    model = cls(stubs=False)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def calibration(shape, seed=1, n=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape[1:], generator=g) * CALIBRATION_STD


def test_inputs(shape, n=1000, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape[1:], generator=g) * TEST_STD


def qconfig(engine_name, per_channel, reduce_range=None):
    """The engine's default activation observer (fbgemm: reduce_range, qnnpack: full range) with
    per-channel or per-tensor symmetric int8 weights; ``reduce_range`` overrides the activations'."""
    from torch.ao.quantization import (HistogramObserver, QConfig, default_per_channel_weight_observer,
                                       default_weight_observer, get_default_qconfig)
    activation = get_default_qconfig(engine_name).activation
    if reduce_range is not None:
        activation = HistogramObserver.with_args(reduce_range=reduce_range)
    return QConfig(activation=activation,
                   weight=default_per_channel_weight_observer if per_channel else default_weight_observer)


def eager(cls, engine_name, per_channel=True, seed=0, shape=None, reduce_range=None):
    """An eager-mode statically quantized copy of ``cls`` (fused where the structure allows)."""
    from torch.ao import quantization as tq
    shape = shape or SHAPES[cls]
    float_model = _seeded_float(cls, seed)
    model = cls(stubs=True)
    model.load_state_dict(float_model.state_dict())
    model.eval()
    with warnings.catch_warnings(), engine(engine_name):
        warnings.simplefilter("ignore")
        model.qconfig = qconfig(engine_name, per_channel, reduce_range)
        if cls is CNN:
            tq.fuse_modules(model, [["conv1", "bn1", "relu1"], ["conv2", "bn2"]], inplace=True)
        else:
            tq.fuse_modules(model, [["input_layer", "relu"]], inplace=True)
        tq.prepare(model, inplace=True)
        with torch.no_grad():
            model(calibration(shape))
        tq.convert(model, inplace=True)
    return model


def fx(cls, engine_name, per_channel=True, seed=0, shape=None, reduce_range=None):
    """An FX graph mode (prepare_fx/convert_fx) quantized copy of ``cls``."""
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    shape = shape or SHAPES[cls]
    model = _seeded_float(cls, seed)
    with warnings.catch_warnings(), engine(engine_name):
        warnings.simplefilter("ignore")
        mapping = QConfigMapping().set_global(qconfig(engine_name, per_channel, reduce_range))
        prepared = prepare_fx(model, mapping, (torch.zeros(shape),))
        with torch.no_grad():
            prepared(calibration(shape))
        return convert_fx(prepared)


SHAPES = {MLP: (1, 2), CNN: (1, 3, 8, 8)}
BUILDERS = {"eager": eager, "fx": fx}


def capture(model, shape, engine_name):
    import tracecap
    with warnings.catch_warnings(), engine(engine_name), torch.no_grad():
        warnings.simplefilter("ignore")
        with tracecap.capture() as cap:
            model(torch.zeros(shape))
    return cap.graph


def reference_codes(model, x, engine_name):
    """PyTorch's own integer codes for every quantized tensor, by name, from a replay of the capture."""
    from tracecap import replay
    graph = capture(model, (1,) + tuple(x.shape[1:]), engine_name)
    with warnings.catch_warnings(), engine(engine_name), torch.no_grad():
        warnings.simplefilter("ignore")
        outs, env = replay.run(graph, x, return_env=True)
    return graph, {k: v.int_repr().numpy() for k, v in env.items() if isinstance(v, torch.Tensor) and v.is_quantized}


def mismatches(a, b):
    return int((np.asarray(a, dtype=np.int64) != np.asarray(b, dtype=np.int64)).sum())
