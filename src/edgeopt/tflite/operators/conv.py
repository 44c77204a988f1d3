"""Conv -> CONV_2D / DEPTHWISE_CONV_2D (1-D convolutions as 2-D ones of height 1); ConvTranspose -> TRANSPOSE_CONV."""

from __future__ import annotations

import numpy as np

from ...errors import EdgeoptError
from .. import layout as lay
from . import converter
from .common import activation_code, attribute, fuse_activation, padding, spatial_attributes


def explicit_pad(lowering, source: int, shape_nhwc, explicit, lowest: bool = False) -> tuple[int, tuple]:
    """PAD an NHWC tensor on its spatial axes with zeros (PADV2 with the type's lowest value for a
    max pool); returns it and its shape. A quantized PAD pads with the zero point: real 0."""
    pads = [(0, 0)] + [tuple(p) for p in explicit] + [(0, 0)]
    shape = tuple(int(n + b + a) for n, (b, a) in zip(shape_nhwc, pads))
    info = lowering.builder.info(source)
    padded = lowering.builder.tensor("padded", shape, info.dtype, quantization=info.quantization)
    inputs = [source, lowering.int32("paddings", pads)]
    if lowest:
        low = np.iinfo(info.dtype).min if info.dtype.kind == "i" else np.finfo(info.dtype).min
        inputs.append(lowering.builder.constant("pad_value", np.array([low], dtype=info.dtype), info.quantization))
    op = "PADV2" if lowest else "PAD"
    lowering.builder.operator(op, inputs, [padded], None, lowering.version(op, [source]))
    return padded, shape


@converter("Conv")
def conv(lowering, node) -> None:
    x, weight_name = node.input[0], node.input[1]
    rank = lowering.rank(x)
    if rank not in (3, 4):
        raise EdgeoptError(f"Conv {node.name!r}: the TFLite writer lowers 1-D and 2-D convolutions; this one has "
                           f"{rank - 2} spatial dimensions")
    weight = lowering.weight(weight_name, node)
    if rank == 3:
        return _conv_1d(lowering, node, weight)
    source = lowering.value(x, lay.channels_last(4))
    in_shape = lay.permute_shape(lowering.shape(x), lay.channels_last(4))
    _conv_2d(lowering, node, source, in_shape, weight, spatial_attributes(node, 2), attribute(node, "group", 1))


def _conv_2d(lowering, node, source, in_shape, weight, attrs, group, one_d: bool = False) -> None:
    cout, cin_per_group, kh, kw = weight.shape if weight.ndim == 4 else (*weight.shape[:2], 1, weight.shape[2])
    cin = in_shape[3]
    kernel = attrs["kernel"] or [kh, kw]
    mode, explicit = padding(in_shape[1:3], kernel, attrs["strides"], attrs["dilations"], attrs["pads"],
                             attrs["auto_pad"])
    if explicit:
        source, in_shape = explicit_pad(lowering, source, in_shape, explicit)
    kind, output = fuse_activation(lowering, node.output[0])
    b = lowering.builder
    common = dict(padding=getattr(b.schema.Padding, mode), strideH=attrs["strides"][0], strideW=attrs["strides"][1],
                  dilationHFactor=attrs["dilations"][0], dilationWFactor=attrs["dilations"][1],
                  fusedActivationFunction=activation_code(lowering, kind))
    depthwise = group == cin and group > 1 and cin_per_group == 1
    one_d_weight = weight.ndim == 3
    if depthwise:
        def transform(w):  # [cout, 1, (kh,) kw] -> [1, kh, kw, cout]
            return w.reshape(cout, kh, kw).transpose(1, 2, 0)[None]
        op, options = "DEPTHWISE_CONV_2D", b.options("DepthwiseConv2DOptions", depthMultiplier=cout // cin, **common)
    else:
        def transform(w):  # [cout, cin / group, (kh,) kw] -> [cout, kh, kw, cin / group]
            return (w[:, :, None, :] if one_d_weight else w).transpose(0, 2, 3, 1)
        op, options = "CONV_2D", b.options("Conv2DOptions", **common)
    weights = lowering.weight_tensor(node, 1, transform, 3 if depthwise else 0)
    bias = lowering.bias(node, cout, source, weights)
    if one_d:
        n, c, w = lowering.shape(output)
        out = lowering.activation_tensor(f"{output}_2d", (n, 1, w, c), output)
    else:
        out = lowering.output(output, lay.channels_last(4))
    flags = {"dilated": max(attrs["dilations"]) > 1, "grouped": not depthwise and group > 1}
    b.operator(op, [source, weights, bias], [out], options, lowering.version(op, [source, weights, bias], **flags))
    if one_d:
        final = lowering.output(output, lay.channels_last(3))
        b.operator("RESHAPE", [out, lowering.int32("shape", (n, w, c))], [final],
                   b.options("ReshapeOptions", newShape=[n, w, c]))


def _conv_1d(lowering, node, weight) -> None:
    """[N, C, W] convolutions run as 2-D ones on [N, 1, W, C] (the RESHAPEs around them move no data)."""
    x = node.input[0]
    n, c, w = lowering.shape(x)
    source = lowering.value(x, lay.channels_last(3))  # [N, W, C]
    b = lowering.builder
    info = b.info(source)
    as_2d = b.tensor(f"{x}_2d", (n, 1, w, c), info.dtype, quantization=info.quantization)
    b.operator("RESHAPE", [source, lowering.int32("shape", (n, 1, w, c))], [as_2d],
               b.options("ReshapeOptions", newShape=[n, 1, w, c]))
    attrs = spatial_attributes(node, 1)
    attrs2 = {"kernel": [1] + (attrs["kernel"] or [weight.shape[2]]), "strides": [1] + attrs["strides"],
              "dilations": [1] + attrs["dilations"], "pads": [0, attrs["pads"][0], 0, attrs["pads"][1]],
              "auto_pad": attrs["auto_pad"]}
    _conv_2d(lowering, node, as_2d, (n, 1, w, c), weight, attrs2, attribute(node, "group", 1), one_d=True)


@converter("ConvTranspose")
def conv_transpose(lowering, node) -> None:
    x = node.input[0]
    if lowering.rank(x) != 4:
        raise EdgeoptError(f"ConvTranspose {node.name!r}: the TFLite writer lowers 2-D transposed convolutions only")
    attrs = spatial_attributes(node, 2)
    if attribute(node, "group", 1) != 1 or max(attrs["dilations"]) > 1:
        raise EdgeoptError(f"ConvTranspose {node.name!r}: TFLite's TRANSPOSE_CONV has no groups or dilation")
    weight = lowering.weight(node.input[1], node)  # [cin, cout, kh, kw]
    _, cout, kh, kw = weight.shape
    out_name = node.output[0]
    n, _, oh, ow = lowering.shape(out_name)
    full_h = (lowering.shape(x)[2] - 1) * attrs["strides"][0] + kh
    full_w = (lowering.shape(x)[3] - 1) * attrs["strides"][1] + kw
    pads = attrs["pads"]
    b = lowering.builder
    source = lowering.value(x, lay.channels_last(4))
    filters = lowering.weight_tensor(node, 1, lambda w: w.transpose(1, 2, 3, 0), 0, onnx_axis=1)  # [cout, kh, kw, cin]
    bias = lowering.bias(node, cout, source, filters)
    # TFLite crops max(full - out, 0) // 2 at the start with SAME and nothing with VALID, the end
    # following from the output shape; other crops (PyTorch's padding=1, output_padding=1) run
    # VALID to the needed size, then slice.
    begin = (int(pads[0]), int(pads[1]))
    crop = None
    if begin == (0, 0):
        mode = "VALID"
    elif begin == (max(full_h - oh, 0) // 2, max(full_w - ow, 0) // 2):
        mode = "SAME"
    else:
        mode, crop = "VALID", begin
    kind, output = fuse_activation(lowering, out_name)
    options = b.options("TransposeConvOptions", padding=getattr(b.schema.Padding, mode), strideH=attrs["strides"][0],
                        strideW=attrs["strides"][1], fusedActivationFunction=activation_code(lowering, kind))
    if crop is None:
        out, size = lowering.output(output, lay.channels_last(4)), (n, oh, ow, cout)
    else:
        size = (n, crop[0] + oh, crop[1] + ow, cout)
        out = lowering.activation_tensor(f"{output}_uncropped", size, output)
    inputs = [lowering.int32("output_shape", size), filters, source, bias]
    b.operator("TRANSPOSE_CONV", inputs, [out], options, 4 if kind != "NONE" else 3)
    if crop is not None:
        final = lowering.output(output, lay.channels_last(4))
        b.operator("STRIDED_SLICE", [out, lowering.int32("begin", (0, crop[0], crop[1], 0)),
                                     lowering.int32("end", (n, crop[0] + oh, crop[1] + ow, cout)),
                                     lowering.int32("strides", (1, 1, 1, 1))], [final],
                   b.options("StridedSliceOptions"), lowering.version("STRIDED_SLICE", [out]))
