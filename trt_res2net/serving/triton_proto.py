"""Triton's ModelConfig proto (tritonclient's ``model_config_pb2``): the one place that loads it, writes a
``config.pbtxt`` from a ModelConfig message and reads a repository's configs back.

tritonclient is imported only here and only when called, so ``import trt_res2net`` works without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.errors import MissingDependency, UserError
from ..core.version import __version__

INSTALL_HINT = "pip install 'trt-res2net[triton]' (tritonclient, whose model_config_pb2 is Triton's ModelConfig proto)"
_LOADED_NAME = "trt_res2net._triton_model_config_pb2"


def model_config_pb2():
    """Triton's ``model_config_pb2`` from tritonclient; MissingDependency naming the install when absent.

    ``tritonclient.grpc``'s package needs grpcio (and protobuf < 7); without them the generated module, which
    needs only protobuf, is loaded from its file."""
    try:
        from tritonclient.grpc import model_config_pb2 as pb2

        return pb2
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "tritonclient":
            raise MissingDependency(f"writing a Triton model repository checks each config.pbtxt against Triton's "
                                    f"ModelConfig proto: {INSTALL_HINT}") from None
    except Exception:  # tritonclient without its grpc extra: RuntimeError("... does not include grpc support")
        pass
    return _load_pb2_from_file()


def _load_pb2_from_file():
    import importlib.util

    spec = importlib.util.find_spec("tritonclient")
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / "grpc" / "model_config_pb2.py"
    if spec is None or not path.is_file():
        raise MissingDependency(f"tritonclient has no grpc/model_config_pb2.py: {INSTALL_HINT}")
    if _LOADED_NAME in sys.modules:
        return sys.modules[_LOADED_NAME]
    module_spec = importlib.util.spec_from_file_location(_LOADED_NAME, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise MissingDependency(f"cannot load Triton's ModelConfig proto from {path} ({e}): {INSTALL_HINT}") from None
    sys.modules[_LOADED_NAME] = module
    return module


def parse_config(text: str, where: str = "config.pbtxt"):
    """A ``config.pbtxt`` → ``ModelConfig``; UserError with the proto parser's own message."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_pb2().ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"{where}: not a valid Triton ModelConfig ({e})") from None


def config_text(config, comment: str) -> str:
    """A ModelConfig as its ``config.pbtxt``: ``comment`` (what the model is) and who wrote it, then the message."""
    from google.protobuf import text_format

    return (f"# {comment}\n# Written by trt_res2net {__version__} (build.py --triton-repo).\n"
            + text_format.MessageToString(config))


def read_configs(repo: Path) -> dict:
    """Folder name → ModelConfig for every model of the repository ``repo`` (each ``*/config.pbtxt``)."""
    if not repo.exists():
        raise UserError(f"{repo}: no such model repository")
    if not repo.is_dir():
        raise UserError(f"{repo}: not a folder (a model repository is one: build.py ... --triton-repo DIR)")
    configs = {path.parent.name: parse_config(path.read_text(encoding="utf-8", errors="replace"), str(path))
               for path in sorted(repo.glob("*/config.pbtxt"))}
    if not configs:
        raise UserError(f"{repo}: no models in it (no */config.pbtxt); write one with build.py ... --triton-repo DIR")
    return configs
