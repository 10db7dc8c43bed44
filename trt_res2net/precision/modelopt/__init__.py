"""Every call into NVIDIA TensorRT Model Optimizer (ModelOpt) and ONNX Runtime's calibrators, one module per job:

- here: whether ModelOpt is installed (:func:`require_modelopt`) and which tools make a calibration
  (:func:`tool_versions`);
- :mod:`.int8`: INT8 Q/DQ (``quantize``): calibrate and quantize in one call, or quantize from a cache;
- :mod:`.fp16`: FP16 (AutoCast);
- :mod:`.qdq`: what a Q/DQ model holds (activation scales, quantized layers);
- :mod:`.histogram`: the percentile calibration, which ModelOpt's ``quantize`` does not offer;
- :mod:`.calibration_reader`: the images as ONNX Runtime's ``CalibrationDataReader``;
- :mod:`.logs`: ModelOpt's and ONNX Runtime's output kept off stdout, through the project's log;
- :mod:`.patches`: ModelOpt's slow internals replaced for one call by ones that give the same answers;
- :mod:`.onnx_utils`: the private copy ModelOpt is given, and the scratch folder.

ModelOpt (``nvidia-modelopt``, with torch) is optional and heavy: nothing here imports it at module level, and
:func:`require_modelopt` turns its absence into one install command (exit status 3).
"""

from __future__ import annotations

from ...core.errors import MissingDependency

INSTALL_HINT = (
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && pip install -e '.[quant]'"
)


def modelopt_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("nvidia-modelopt")
    except Exception:
        return None


def require_modelopt(what: str) -> None:
    """Import-check ModelOpt's ONNX tools; MissingDependency (exit 3) with the install command if absent."""
    try:
        import modelopt.onnx.autocast  # noqa: F401
        import modelopt.onnx.quantization  # noqa: F401
    except ImportError as e:
        raise MissingDependency(
            f"{what} needs NVIDIA ModelOpt (nvidia-modelopt with its ONNX tools), which is not installed "
            f"({e.name or e}); install it with: {INSTALL_HINT}   (on a machine with a GPU, plain "
            "'pip install torch' is fine)"
        ) from None


def tool_versions(providers: list[str] | None = None) -> dict[str, str]:
    """What made a calibration: ModelOpt's and ONNX Runtime's versions, and ONNX Runtime's provider when it was not
    the CPU (a GPU's arithmetic differs: its caches are keyed apart)."""
    import onnxruntime

    tools = {"modelopt": modelopt_version() or "absent", "onnxruntime": onnxruntime.__version__}
    if providers and providers[0] != "CPUExecutionProvider":
        tools["onnxruntime_provider"] = providers[0]
    return tools
