"""The trtexec and polygraphy command lines that build the same engine, recorded in the manifest and printed after
a build, so that any engine can be cross-checked with NVIDIA's own tools."""

from __future__ import annotations

from . import trt_compat
from .options import BatchProfile, MiB
from .precision_path import BuildPlan


def equivalent_commands(plan: BuildPlan, profile: BatchProfile, input_name: str, chw: tuple[int, int, int],
                        engine_path, *, workspace_bytes: int | None, dynamic: bool = True, calib_cache=None,
                        timing_cache=None, builder_opt_level: int | None = None, dla_core: int | None = None,
                        version=None, compute_capabilities=None) -> dict:
    """The trtexec and polygraphy command lines that build the same engine (recorded in the manifest, for a
    cross-check with NVIDIA's own tools). trtexec cannot calibrate from images: with the calibrator it reads
    the cache this build wrote (``--calib``). TensorRT-RTX: polygraphy switched to it by
    ``POLYGRAPHY_USE_TENSORRT_RTX=1``, with ``--compute-capabilities`` (the RTX wheels ship no trtexec)."""
    import shlex

    q = shlex.quote
    onnx_path, engine = q(str(plan.onnx_path)), q(str(engine_path))
    dims = [(b, *chw) for b in (profile.min, profile.opt, profile.max)]
    x = lambda d: "x".join(map(str, d))  # noqa: E731
    br = lambda d: "[" + ",".join(map(str, d)) + "]"  # noqa: E731
    rtx = version is not None and trt_compat.is_rtx(version)
    modern = version is not None and trt_compat.always_strongly_typed(version)

    t = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine}"]
    p = ["polygraphy", "convert", onnx_path, "--convert-to", "trt", "-o", engine]
    if not rtx:
        # polygraphy's CreateConfig clears TF32 unless --tf32 is given; TensorRT (and trtexec) leave it on. Switched
        # to TensorRT-RTX (0.53.6), polygraphy configures through CreateConfigRTX, which never touches TF32: the
        # library's default (on) stands and --tf32 is ignored there (the plan is byte-for-byte the same).
        p.append("--tf32")
    if workspace_bytes:
        mib = max(1, int(workspace_bytes) // MiB)
        t.append(f"--memPoolSize=workspace:{mib}M")
        p += ["--pool-limit", f"workspace:{mib}M"]
    if dynamic:
        t += [q(f"--minShapes={input_name}:{x(dims[0])}"), q(f"--optShapes={input_name}:{x(dims[1])}"),
              q(f"--maxShapes={input_name}:{x(dims[2])}")]
        p += ["--trt-min-shapes", q(f"{input_name}:{br(dims[0])}"), "--trt-opt-shapes",
              q(f"{input_name}:{br(dims[1])}"), "--trt-max-shapes", q(f"{input_name}:{br(dims[2])}")]
    if "FP16" in plan.flags:
        t.append("--fp16")
        p.append("--fp16")
    if "INT8" in plan.flags:
        t += ["--int8"] + ([f"--calib={q(str(calib_cache))}"] if calib_cache else [])
        p += ["--int8"] + (["--calibration-cache", q(str(calib_cache))] if calib_cache else [])
    if plan.strongly_typed and not modern:
        t.append("--stronglyTyped")
        p.append("--strongly-typed")
    if builder_opt_level is not None:
        t.append(f"--builderOptimizationLevel={builder_opt_level}")
        p += ["--builder-optimization-level", str(builder_opt_level)]
    if timing_cache:
        t.append(f"--timingCacheFile={q(str(timing_cache))}")
        p += ["--load-timing-cache", q(str(timing_cache)), "--save-timing-cache", q(str(timing_cache))]
    if dla_core is not None:
        t += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
        p += ["--use-dla", "--allow-gpu-fallback"]
    if rtx:
        if compute_capabilities == ["current"]:
            p.append("--use-gpu")
        elif compute_capabilities:
            p += ["--compute-capabilities", *compute_capabilities]
        return {"polygraphy": "POLYGRAPHY_USE_TENSORRT_RTX=1 " + " ".join(p)}
    return {"trtexec": " ".join(t), "polygraphy": " ".join(p)}
