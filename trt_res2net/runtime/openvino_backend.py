"""OpenVINO as a Backend: the CPU model (``engine.cpu_build``: ``<name>.xml`` + ``.bin`` + ``.xml.json``), checked
against its manifest before it is compiled: its files are the ones the manifest hashes, this OpenVINO's major
release is the one that wrote it, and this CPU has what its precision needs (BF16)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.hashing import sha256_file
from ..data.recipe import FROM_MODEL, PreprocessOptions, choose_recipe
from ..engine.cpu_build import CpuMachine, check_cpu_can_run, compile_ir, openvino
from ..engine.cpu_manifest import CpuModelManifest, read_manifest


def check_cpu_model(manifest: CpuModelManifest, model_xml: Path, version: str, machine: CpuMachine) -> None:
    """Refuse (one line) a CPU model whose files are not its manifest's, written by another OpenVINO release, or
    whose precision this CPU cannot run."""
    for name, digest in manifest.files.items():
        path = model_xml.with_name(name)
        if not path.is_file():
            raise UserError(f"{model_xml}: its file {name} is missing")
        if sha256_file(path) != digest:
            raise UserError(f"{path} does not match its manifest (sha256 differs): make the CPU model again")
    if manifest.library_version.split(".")[0] != version.split(".")[0]:
        raise UserError(f"{model_xml} was made with OpenVINO {manifest.library_version}, but this machine has "
                        f"OpenVINO {version}: make it again here (build.py … --engine-family cpu)")
    check_cpu_can_run(manifest.precision, machine, str(model_xml))


class OpenVinoBackend:
    """The CPU model on OpenVINO's CPU plugin, compiled with its manifest's inference precision; ``threads``
    inference threads (0: OpenVINO's default); ``preprocess``: the recipe where the user states it (else the
    manifest's)."""

    gpu_preprocessing = False
    fixed_batch = False

    def __init__(self, path: str | os.PathLike, threads: int = 0, preprocess: PreprocessOptions = FROM_MODEL,
                 check_manifest: bool = True):
        ov = openvino()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such model file")
        self.manifest = read_manifest(self.path)
        self.machine = CpuMachine.here()
        if check_manifest:
            check_cpu_model(self.manifest, self.path, ov.__version__, self.machine)
        m = self.manifest
        self.compiled = compile_ir(self.path, m.inference_precision, threads)
        self.input_name, self.output_name = m.input_name, m.output_name
        shape = self.compiled.input(0).get_partial_shape()
        hw = tuple(int(d.get_length()) if d.is_static else None for d in list(shape)[2:4])
        self.recipe = choose_recipe(hw, str(self.path), preprocess, m.preprocess)
        batch = shape[0]
        self.max_batch = int(batch.get_length()) if batch.is_static else None
        self.fixed_batch = self.max_batch is not None
        self.outputs_probabilities = m.outputs_probabilities
        self.metadata: dict[str, str] = {}
        self.version = ov.__version__
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: callers on several threads take turns
        self.num_classes = m.num_classes or int(  # a symbolic class dimension: one zero batch tells
            self.run(np.zeros((self.max_batch or 1, 3, *self.recipe.spec.crop_hw), np.float32)).shape[1])

    def run(self, batch_nchw_float32: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch_nchw_float32, np.float32)
        try:
            with self._lock:
                result = self._request.infer({0: x}, share_inputs=True)  # no copy of the batch
                y = np.array(next(iter(result.values())))  # a copy: the request's buffer is reused
        except RuntimeError as e:
            raise UserError(f"{self.path}: inference failed on a batch of shape {x.shape}: "
                            f"{str(e).strip().splitlines()[0][:300]}") from None
        return y.reshape(y.shape[0], -1).astype(np.float32, copy=False)

    def describe(self) -> str:
        m = self.manifest
        batch = f"fixed batch {self.max_batch}" if self.fixed_batch else "dynamic batch"
        return (f"OpenVINO {self.version} on {self.machine.name} (CPU {m.precision.upper()}, inference precision "
                f"{m.inference_precision}), {batch}, {self.num_classes} classes")

    def info(self) -> dict:
        """The model and CPU as JSON-ready data (the benchmark's report carries it, as an engine's)."""
        m = self.manifest
        return {"engine": str(self.path), "library": "OpenVINO", "engine_family": "cpu",
                "library_version": self.version, "precision": m.precision,
                "inference_precision": m.inference_precision,
                "cpu": {"name": self.machine.name, "capabilities": list(self.machine.capabilities)},
                "input": {"name": self.input_name, "dtype": "float32",
                          "batch": [1, 1, self.max_batch] if self.fixed_batch else [1, 1, None],
                          "hw": list(self.recipe.spec.crop_hw)},
                "output": {"name": self.output_name, "classes": self.num_classes,
                           "probabilities": self.outputs_probabilities},
                "manifest": str(self.path.with_name(self.path.name + ".json")), "cuda_graph": False}

    def close(self) -> None:
        """Nothing to release: the compiled model goes with the object."""
