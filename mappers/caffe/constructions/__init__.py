"""Layer constructions several mappers share, one module per kind of construction.

Each helper returns ``netspec.Layer`` data (or one layer) for a piece of a mapping that more than
one op needs. Mappers compose them; none reads the node except through ``ctx``. This package
gathers the public names, so mappers import from ``tracecap.mappers.caffe.constructions``.
"""
from tracecap.mappers.caffe.constructions.basics import (  # noqa: F401
    clip, conv_spatial, crop, group_dilation, is_activation, permute_layer, pool_spatial, power_layer, prod, reshape_layer, round_mode, scalar_operand, silence_unused, slice_keep, weight_and_bias,
)
from tracecap.mappers.caffe.constructions.rows import (  # noqa: F401
    affine, as_view, integer, normalize_rows, number, pool_rows, scale_rows, split_at_run, spread_rows, sum_rows,
)
from tracecap.mappers.caffe.constructions.maps import (  # noqa: F401
    constant_map, gather_slices, linear_map, zero_pad,
)
from tracecap.mappers.caffe.constructions.broadcast import (  # noqa: F401
    assemble, broadcast_combine, broadcast_shape, constant_over, expand_layers, expand_to, gather_axis, padded, scale_span, shape_of, uniform_value,
)
