"""PaddleClas ``.pdparams`` weights: read safely, validate against the architecture, download, or generate.

A ``.pdparams`` file is a pickle of ``{structured key: float32 ndarray}`` (what ``paddle.save`` writes). Pickle is
code, so it is read by ``pickle_guard``: its opcodes are scanned and bounded first, then an unpickler that admits
only what numpy arrays need builds it.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import sys
import zlib
from pathlib import Path

from ..core import files as atomic
from ..core.errors import UserError
from ..core.lazy import lazy_import
from ..core.paths import cache_dir
from . import pickle_guard as guard
from .zoo import ModelSpec, block_layouts, feature_channels, stem_units

np = lazy_import("numpy")

BN_SUFFIXES = ("_batch_norm.weight", "_batch_norm.bias", "_batch_norm._mean", "_batch_norm._variance")
NAME_TABLE_KEY = "StructuredToParameterName@@"
BIG_PARAM_KEY = "UnpackBigParamInfor@@"


def conv_units(spec: ModelSpec):
    """Every ConvBN unit of the model, in PaddleClas's state-dict order."""
    yield from stem_units(spec)
    for b in block_layouts(spec):
        yield b.conv0
        yield from b.branches
        yield b.conv2
        if b.short is not None:
            yield b.short


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for u in conv_units(spec):
        shapes[f"{u.prefix}._conv.weight"] = (u.cout, u.cin, u.kernel, u.kernel)
        for suffix in BN_SUFFIXES:
            shapes[f"{u.prefix}.{suffix}"] = (u.cout,)
    shapes["out.weight"] = (feature_channels(spec), spec.num_classes)  # [in, out]: Paddle Linear is x @ W
    shapes["out.bias"] = (spec.num_classes,)
    return shapes


# --- ParamAttr names (the StructuredToParameterName@@ table) -----------------------------------------------------

_BN_PARAM_ATTR = {
    "_batch_norm.weight": "scale",
    "_batch_norm.bias": "offset",
    "_batch_norm._mean": "mean",
    "_batch_norm._variance": "variance",
}
_SUBLAYER_TO_BRANCH = {"conv0": "branch2a", "conv2": "branch2c", "short": "branch1"}


def param_attr_names(spec: ModelSpec) -> dict[str, str]:
    """Structured key → PaddleClas ParamAttr name, for files keyed by the latter."""
    names = {}
    layouts = {b.prefix: b for b in block_layouts(spec)}
    for u in conv_units(spec):
        if "." in u.prefix:
            block, sub = u.prefix.split(".", 1)
            b = layouts[block]
            legacy = b.branches[0].prefix.split(".", 1)[1].rsplit("_branch2b_", 1)[0] if b.branches else None
            conv = f"{legacy}_{_SUBLAYER_TO_BRANCH[sub]}" if sub in _SUBLAYER_TO_BRANCH else sub
        else:
            conv = u.prefix
        if conv == "conv1":
            bn = "bn_conv1"
        elif conv.startswith("conv1_"):
            bn = "bnv1_" + conv[len("conv1_"):]
        else:
            bn = "bn" + conv[3:]
        names[f"{u.prefix}._conv.weight"] = f"{conv}_weights"
        for suffix, attr in _BN_PARAM_ATTR.items():
            names[f"{u.prefix}.{suffix}"] = f"{bn}_{attr}"
    names["out.weight"] = "fc_weights"
    names["out.bias"] = "fc_offset"
    return names


# --- reading ----------------------------------------------------------------------------------------------

def _limits(size: int, spec: ModelSpec | None) -> guard.Limits:
    if spec is None:
        return guard.Limits.for_file(size)
    shapes = expected_shapes(spec)
    return guard.Limits.for_file(size, params=sum(math.prod(s) for s in shapes.values()), keys=len(shapes))


def read_pdparams(source: str | os.PathLike | bytes, spec: ModelSpec | None = None) -> dict[str, np.ndarray]:
    """Unpickle a .pdparams safely into ``{key: ndarray}`` (name table dropped, split params joined).

    The pickle is bounded by its own size and, given ``spec``, by the model's parameter and key counts
    (``pickle_guard.Limits``); anything malformed raises one-line UserError naming the file."""
    label = "<bytes>" if isinstance(source, bytes) else str(source)
    try:  # unpickle from the open file: the arrays are built without a second copy of the file in memory
        f = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as e:
        raise UserError(f"cannot read weights file {label}: {e.strerror or e}") from None
    with f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        if not size:
            raise UserError(f"weights file {label} is empty")
        try:
            obj = guard.load(f, size, _limits(size, spec))
        except guard.PickleRefused as e:
            raise UserError(f"weights file {label}: {e}") from None
    if not isinstance(obj, dict):
        raise UserError(f"weights file {label} holds a {type(obj).__name__}, not a dict of arrays")
    obj = dict(obj)
    for key in obj:
        if not isinstance(key, str):
            raise UserError(f"weights file {label}: a key is a {type(key).__name__}, not a str")
    obj.pop(NAME_TABLE_KEY, None)
    big = obj.pop(BIG_PARAM_KEY, None)
    if big is not None:
        try:
            _join_big_params(obj, big)
        except ValueError as e:
            raise UserError(f"weights file {label}: {BIG_PARAM_KEY} {e}") from None
    state = {}
    for key, value in obj.items():
        if isinstance(value, tuple):  # paddle.save of non-state-dict objects: (name, ndarray)
            value = next((v for v in value if isinstance(v, np.ndarray)), None)
        if not isinstance(value, np.ndarray):
            raise UserError(f"weights file {label}: key '{key}' holds a {type(value).__name__}, not an array")
        state[key] = np.asarray(value)  # a plain ndarray, not the unpickler's checked subclass
    return state


def _join_big_params(obj: dict, big) -> None:
    """Join the params paddle.save split into slices, in place; ValueError says which entry is malformed."""
    if not isinstance(big, dict):
        raise ValueError(f"is a {type(big).__name__}, not a dict")
    for key, info in big.items():
        if not isinstance(info, dict) or not isinstance(info.get("slices"), (list, tuple)):
            raise ValueError(f"entry {str(key)[:80]!r} is not a dict with a list of slices")
        shape, names = info.get("OriginShape"), info["slices"]
        if not isinstance(key, str) or key in obj:
            raise ValueError(f"entry {str(key)[:80]!r} is not a new str key")
        if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"entry {key!r} has OriginShape {shape!r:.80}, not a list of sizes")
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f"entry {key!r} needs distinct slice names, has {names!r:.80}")
        parts = [obj.get(n) for n in names]
        missing = [n for n, p in zip(names, parts, strict=True) if not isinstance(p, np.ndarray)]
        if missing:
            raise ValueError(f"entry {key!r}: slice {missing[0]!r} is not an array in the file")
        if len({p.dtype for p in parts}) != 1:
            raise ValueError(f"entry {key!r}: slices of dtypes {sorted({str(p.dtype) for p in parts})} do not join")
        if sum(p.size for p in parts) != math.prod(shape):
            raise ValueError(f"entry {key!r}: slices of {sum(p.size for p in parts)} values do not make "
                             f"shape {tuple(shape)}")
        for n in names:
            del obj[n]
        obj[key] = np.concatenate([p.ravel() for p in parts]).reshape(shape)


def _first(items, n=3):
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def validate_state(state: dict[str, np.ndarray], spec: ModelSpec, label: str = "weights") -> dict[str, np.ndarray]:
    """Check every key and shape against the architecture; accept ParamAttr-keyed files. Returns float32 arrays
    in the expected order. Raises UserError naming the first missing / unexpected / mismatched keys."""
    expected = expected_shapes(spec)
    if set(state) != set(expected):
        attr = param_attr_names(spec)
        if set(attr.values()) & set(state) and not set(expected) & set(state):
            state = {k: state[v] for k, v in attr.items() if v in state} | {
                k: v for k, v in state.items() if k not in set(attr.values())
            }
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {_first(unexpected)}")
    wrong = [
        f"{k} is {tuple(state[k].shape)}, expected {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {_first(wrong, 2)}")
    if problems:
        hint = ""
        if unexpected and missing and len(unexpected) == len(state):
            hint = " — is this a file for another model?"
        raise UserError(f"{label} do not fit {spec.name}: " + "; ".join(problems) + hint)
    out = {}
    for k in expected:
        a = np.asarray(state[k])
        if not np.issubdtype(a.dtype, np.floating):
            raise UserError(f"{label}: key '{k}' has dtype {a.dtype}, expected float32")
        a = a.astype(np.float32, copy=False)
        if not np.isfinite(a).all():
            raise UserError(f"{label}: key '{k}' contains NaN or Inf — the file is corrupt")
        out[k] = a
    return out


def load_weights(path: str | os.PathLike, spec: ModelSpec) -> dict[str, np.ndarray]:
    return validate_state(read_pdparams(path, spec), spec, label=f"weights {path}")


def state_sha256(state: dict[str, np.ndarray]) -> str:
    """A digest of weights held in memory (random weights, which have no file)."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(str(v.shape).encode())
        h.update(np.ascontiguousarray(v, np.float32).tobytes())
    return h.hexdigest()


# --- generated weights ---------------------------------------------------------------------------------


def random_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random weights with non-trivial BN statistics, keyed like PaddleClas.

    Each array comes from its own generator seeded by (seed, crc32(key)), so any subset of keys can be
    reproduced elsewhere (e.g. in a PaddlePaddle environment) without building the rest.
    """
    state = {}
    for key, shape in expected_shapes(spec).items():
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        if key.endswith("_conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            a = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif key.endswith(".conv2._batch_norm.weight"):
            # small residual branches keep the residual stream bounded over 200 layers, so the logits stay
            # input-dependent and a small error anywhere in the graph stays visible
            a = rng.uniform(0.1, 0.3, shape)
        elif key.endswith("_batch_norm.weight"):
            a = rng.uniform(0.5, 1.0, shape)
        elif key.endswith("_batch_norm.bias"):
            a = rng.normal(0.0, 0.1, shape)
        elif key.endswith("_batch_norm._mean"):
            a = rng.normal(0.0, 0.1, shape)
        elif key.endswith("_batch_norm._variance"):
            a = rng.uniform(0.5, 1.5, shape)
        elif key == "out.weight":
            a = rng.standard_normal(shape) * np.sqrt(1.0 / shape[0])
        else:  # out.bias
            a = rng.normal(0.0, 0.01, shape)
        state[key] = a.astype(np.float32)
    return state


def write_pdparams(path: str | os.PathLike, state: dict[str, np.ndarray], protocol: int = 4) -> Path:
    """Write a dict of arrays the way paddle.save does (a plain pickle); for tests and fixtures."""
    return atomic.write_bytes(path, pickle.dumps(dict(state), protocol=protocol))


# --- download ------------------------------------------------------------------------------------------


def download(url: str, dest: str | os.PathLike, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; the final name appears only when complete."""
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                      disable=not progress, file=sys.stderr) as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if total is not None and part.stat().st_size != total:
            raise UserError(f"download of {url} stopped early ({part.stat().st_size} of {total} bytes)")
        os.replace(part, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise UserError(
            f"could not download {url} ({reason}). Offline? Pass ExportOptions.weights=PATH to a .pdparams file, "
            "or ExportOptions.random_weights=True for a smoke test"
        ) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def published_weights(spec: ModelSpec) -> tuple[str, Path]:
    """Where the model's PaddleClas weights are published, and where the cache keeps them."""
    url = spec.weights_url
    if url is None:
        raise UserError(f"{spec.name} has no published weights; pass ExportOptions.weights or "
                        "ExportOptions.random_weights=True")
    return url, cache_dir() / url.rsplit("/", 1)[1]


def fetch(url: str, dest: Path, progress: bool = True) -> Path:
    """``dest``, downloaded from ``url`` the first time."""
    if not dest.exists():
        download(url, dest, progress=progress)
    return dest


def fetch_pretrained(spec: ModelSpec, progress: bool = True) -> Path:
    """The model's PaddleClas weights from the cache, downloading them once."""
    return fetch(*published_weights(spec), progress=progress)
