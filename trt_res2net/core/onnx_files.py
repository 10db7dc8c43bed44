"""An ONNX model as the files it is: the ``.onnx`` and, when its weights are kept outside it (ONNX's external data:
what ``torch.onnx.export`` writes, and what every model over protobuf's 2 GB limit must do), the data files its
tensors name by a ``location`` relative to the ``.onnx``'s folder.

Every stage that copies, moves, writes or hashes an ONNX goes through here, so that a data file always travels
with its ``.onnx``:

- :func:`external_data_locations` reads the locations without loading the model (a scan of the protobuf's wire
  format in a memory map: a 2 GB ``.onnx`` costs what its fields cost, not its weights);
- :func:`check_onnx_files` refuses, in one line, an ONNX whose data file is missing, before any long work;
- :func:`copy_onnx` copies (or links) the ``.onnx`` with its data files to the same relative locations;
- :func:`save_onnx` writes a model the way this project writes ONNX files: weights inside the file, or in one data
  file ``<name>.data`` beside it (:data:`DATA_SUFFIX`);
- :func:`onnx_unit` gives the files of a staged ONNX as one ``core.commit.commit_files`` unit under a final name
  (its locations renamed for that name where they differ).

The hash of an ONNX that covers its data files is :func:`trt_res2net.core.hashing.sha256_onnx`.
"""

from __future__ import annotations

import mmap
import os
import shutil
from pathlib import Path, PurePosixPath

from .errors import UserError
from .files import current_umask
from .protobuf_wire import fields, varint

DATA_SUFFIX = ".data"  # the data file of a model this project writes with external data: "<name>.onnx.data"
# protobuf's limit on one message: a model whose serialized size reaches it must keep its weights outside
PROTOBUF_LIMIT = 2**31 - 1

# Field numbers (onnx.proto) of the messages that can hold tensors, and of the tensors' external-data fields.
_MODEL_GRAPH, _MODEL_FUNCTIONS, _FUNCTION_NODES = 7, 25, 7
_GRAPH_NODES, _GRAPH_INITIALIZERS, _GRAPH_SPARSE = 1, 5, 15
_NODE_ATTRIBUTES = 5
_ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE = (5, 10), (6, 11), (22, 23)
_SPARSE_TENSORS = (1, 2)
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1


def _tensor_location(buf, start: int, end: int) -> str | None:
    """The ``location`` of a TensorProto whose data is external, else None."""
    external, location = False, None
    for number, wire, a, b in fields(buf, start, end):
        if number == _TENSOR_DATA_LOCATION and wire == 0:
            external = varint(buf, a)[0] == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entry = {n: bytes(buf[x:y]).decode("utf-8") for n, w, x, y in fields(buf, a, b) if w == 2}
            if entry.get(1) == "location":
                location = entry.get(2, "")
    return location if external else None


def _walk(buf, start: int, end: int, kind: str, found: dict[str, None]) -> None:
    """Add the external-data locations of the message ``kind`` at ``buf[start:end]`` to ``found``, in order."""
    if kind == "tensor":
        location = _tensor_location(buf, start, end)
        if location is not None:
            found.setdefault(location)
        return
    children = {
        "model": {_MODEL_GRAPH: "graph", _MODEL_FUNCTIONS: "function"},
        "function": {_FUNCTION_NODES: "node"},
        "graph": {_GRAPH_NODES: "node", _GRAPH_INITIALIZERS: "tensor", _GRAPH_SPARSE: "sparse"},
        "node": {_NODE_ATTRIBUTES: "attribute"},
        "attribute": {**dict.fromkeys(_ATTR_TENSORS, "tensor"), **dict.fromkeys(_ATTR_GRAPHS, "graph"),
                      **dict.fromkeys(_ATTR_SPARSE, "sparse")},
        "sparse": dict.fromkeys(_SPARSE_TENSORS, "tensor"),
    }[kind]
    for number, wire, a, b in fields(buf, start, end):
        child = children.get(number)
        if child is not None and wire == 2:
            _walk(buf, a, b, child, found)


def _check_location(path: Path, location: str) -> str:
    """A location that stays in the ``.onnx``'s folder (what ONNX and ONNX Runtime accept); UserError otherwise."""
    parts = PurePosixPath(location.replace("\\", "/"))
    if not location or parts.is_absolute() or os.path.isabs(location) or ".." in parts.parts:
        raise UserError(f"{path} names its external data {location!r}, outside its folder: ONNX reads external "
                        "data only from the .onnx's folder (save it with a relative location)")
    return location


def external_data_locations(path: str | os.PathLike) -> tuple[str, ...]:
    """The data files (locations relative to the ``.onnx``'s folder) whose bytes the ONNX's tensors keep outside
    it, each once, in the order the model names them; () when its weights are inside it. ValueError for a file
    that is not a protocol-buffer message; UserError for a location outside the folder."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return ()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            found: dict[str, None] = {}
            try:
                _walk(buf, 0, size, "model", found)
            except (IndexError, UnicodeDecodeError) as e:
                raise ValueError(f"{path} is not a readable ONNX model ({e})") from None
    return tuple(_check_location(path, location) for location in found)


def _locations_if_onnx(path: Path) -> tuple[str, ...]:
    """:func:`external_data_locations`, () for a file that is not a protocol-buffer message (nothing to carry)."""
    try:
        return external_data_locations(path)
    except ValueError:
        return ()


def external_data_files(path: str | os.PathLike) -> tuple[Path, ...]:
    """The data files of the ONNX at ``path`` (:func:`external_data_locations`), as paths."""
    path = Path(path)
    return tuple(path.parent / location for location in external_data_locations(path))


def check_onnx_files(path: str | os.PathLike, what: str = "ONNX") -> tuple[Path, ...]:
    """Before any long work: every data file the ONNX names is a readable regular file; returns them. One-line
    UserError otherwise (an unreadable ``.onnx`` is left to the reader that parses it)."""
    from .files import check_input_file

    path = Path(path)
    try:
        files = external_data_files(path)
    except (OSError, ValueError):
        return ()
    for data in files:
        try:
            check_input_file(data, f"{what} {path} keeps its weights in", noun="a data file")
        except UserError as e:
            raise UserError(f"{e} (ONNX external data: copy the data file with the .onnx, into the same "
                            "folder)") from None
    return files


def copy_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, link: bool = False) -> list[Path]:
    """Copy the ONNX ``src`` to ``dst`` with its data files at the same locations relative to ``dst``'s folder (its
    ``location`` fields stay valid there); returns the files written. ``link``: hard links where the filesystem
    has them (for destinations that are never rewritten in place)."""
    src, dst = Path(src), Path(dst)
    pairs = [(src, dst)] + [(src.parent / loc, dst.parent / loc) for loc in external_data_locations(src)]
    for a, b in pairs:
        b.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(a, b)
                continue
            except OSError:
                pass
        shutil.copyfile(a, b)
    return [b for _, b in pairs]


def serialized_size(model) -> int:
    """What the model would take as one protobuf message (PROTOBUF_LIMIT or more when protobuf cannot say)."""
    try:
        return model.ByteSize()
    except Exception:  # protobuf refuses to size a message over its limit
        return PROTOBUF_LIMIT


def save_onnx(model, path: str | os.PathLike, *, external: bool) -> tuple[Path, ...]:
    """Write ``model`` to ``path``: its weights inside the file, or (``external``, and always for a model over
    protobuf's 2 GB limit) in one data file ``<name>.data`` beside it — tensors under 1 KiB (scales, shapes) stay
    inside. ``path``'s folder is scratch space: a data file of that name there is replaced (ONNX appends to one).
    The in-memory model keeps its weights. Returns the data files written."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    if not external and serialized_size(model) < PROTOBUF_LIMIT:
        onnx.save(model, str(path))
        return ()
    location = path.name + DATA_SUFFIX
    data = path.with_name(location)
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=1024)
    load_external_data_for_model(model, str(path.parent))  # saving moved the weights out of the proto: back in
    os.chmod(data, 0o666 & ~current_umask())  # ONNX makes it owner-only; this project's files follow the umask
    return (data,)


def _relocate(staged: Path, name: str) -> Path:
    """The staged ONNX with its one data file renamed ``<name>.data`` (the ``.onnx`` rewritten without loading its
    weights); returns the staged ``.onnx`` (renamed when ``name`` differs from its name)."""
    import onnx

    locations = external_data_locations(staged)
    wanted = name + DATA_SUFFIX
    if len(locations) != 1:
        raise ValueError(f"{staged}: {len(locations)} data files; a staged ONNX has one")
    target = staged.with_name(name)
    if locations[0] == wanted and staged.name == name:
        return staged
    model = onnx.load(str(staged), load_external_data=False)
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = wanted
    os.replace(staged.parent / locations[0], staged.parent / wanted)
    onnx.save(model, str(target))
    if target != staged:
        staged.unlink()
    return target


def onnx_unit(staged: str | os.PathLike, final: str | os.PathLike) -> dict[Path, Path]:
    """The files of the staged ONNX as they become ``final``, for ``commit_files``: ``{final: staged .onnx,
    <final>.data: its data file}`` (no data file when its weights are inside it). The data file is renamed for
    ``final``'s name first where it was named for another (e.g. the ``.rejected.onnx`` of a model). ``staged`` is
    in a scratch folder of its own, on ``final``'s filesystem."""
    staged, final = Path(staged), Path(final)
    if not _locations_if_onnx(staged):
        return {final: staged}
    staged = _relocate(staged, final.name)
    return {final: staged, final.with_name(final.name + DATA_SUFFIX): staged.with_name(final.name + DATA_SUFFIX)}


def remove_stale_data(final: str | os.PathLike) -> None:
    """After an ONNX with its weights inside was committed as ``final``: the data file a previous version of it kept
    beside it (``<final>.data``) goes."""
    final = Path(final)
    if not _locations_if_onnx(final):
        final.with_name(final.name + DATA_SUFFIX).unlink(missing_ok=True)
