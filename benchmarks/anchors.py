"""The tools a user would pick instead of edgeopt, run on the same model and calibration data."""

from __future__ import annotations



class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over a list of input dicts."""

    def __init__(self, feeds):
        self.feeds = list(feeds)
        self.index = 0

    def get_next(self):
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self):
        self.index = 0


def onnxruntime_static(model_path, output_path, feeds, method: str, activation_type: str = "uint8") -> None:
    """quantize_static in QDQ format, per-channel int8 weights, the given calibration method."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = str(output_path) + ".pre.onnx"
    try:
        quant_pre_process(str(model_path), prepared, skip_symbolic_shape=False)
    except Exception:  # noqa: BLE001 (its shape inference gives up on some exporters' models)
        # What a user does next: quantize the model as it is (onnxruntime's docs call the step optional).
        prepared = str(model_path)
    quantize_static(prepared, str(output_path), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method])


def onnxruntime_dynamic(model_path, output_path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(model_path), str(output_path), weight_type=QuantType.QInt8, per_channel=True)


def nncf_ptq(model_path, output_path, feeds) -> None:
    """NNCF's post-training quantization on the ONNX model, default (performance) preset."""
    import nncf
    import onnx

    model = onnx.load(str(model_path))
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=min(300, len(feeds)))
    onnx.save(quantized, str(output_path))
