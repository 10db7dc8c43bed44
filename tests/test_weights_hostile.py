"""Crafted .pdparams files (made here, no binary fixtures): each is refused in one line, without a crash or a large
allocation. Each file is read in a subprocess whose address space is capped at 1 GiB."""

import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trt_res2net.model import pickle_guard as guard
from trt_res2net.model import weights as W

REPO = Path(__file__).resolve().parents[1]
MODEL = "res2net50_vd_26w_4s"
AS_LIMIT = 1 << 30

# Reads argv[1] with the model's limits under RLIMIT_AS; prints the one-line error and the peak RSS (KiB), from
# /proc: Linux carries ru_maxrss across exec, so a child of a large pytest reports the parent's peak.
_READER = """
import re, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from trt_res2net.core.errors import UserError
from trt_res2net.model import weights as W, zoo
try:
    W.load_weights(sys.argv[1], zoo.get_model(sys.argv[2]))
except UserError as e:
    print(e, file=sys.stderr)
    print(re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read()).group(1))
    sys.exit(2)
"""


# --- pickle opcodes, written by hand where pickle.dumps cannot make the file ----------------------------------

def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


_P2, _P4 = b"\x80\x02", b"\x80\x04"
_EMPTY_DICT, _EMPTY_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3 = b"}", b")", b"\x85", b"\x86", b"\x87"
_MARK, _TUPLE, _SETITEM, _SETITEMS, _REDUCE, _NONE, _POP, _STOP = b"(", b"t", b"s", b"u", b"R", b"N", b"0", b"."


def _deep_tuple_key(depth: int) -> bytes:
    return _P4 + _EMPTY_DICT + _EMPTY_TUPLE + _TUPLE1 * depth + _NONE + _SETITEM + _STOP


def _deep_marks(depth: int) -> bytes:
    return _P4 + _MARK * depth + _TUPLE * depth + _STOP


def _uninitialised_array(n: int) -> bytes:
    """``_reconstruct(ndarray, (n,), b'b')`` with no state: numpy would allocate n bytes it never fills."""
    return (_global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray") + _int(n) + _TUPLE1
            + b"C\x01b" + _TUPLE3 + _REDUCE)


def _dtype(state: bytes) -> bytes:
    """``numpy.dtype('f4', False, True)``, then BUILD with ``state`` (the opcodes of a tuple)."""
    return _global("numpy", "dtype") + _str("f4") + b"\x89\x88" + _TUPLE3 + _REDUCE + state + b"b"


_F4_STATE = _MARK + b"K\x03" + _str("<") + _NONE * 3 + _int(-1) * 2 + b"K\x00" + _TUPLE


def _array(n: int, data: bytes, dtype: bytes = _dtype(_F4_STATE)) -> bytes:
    """An array as numpy pickles it: ``_reconstruct(ndarray, (0,), b'b')``, then BUILD with its state."""
    return (_global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray") + b"K\x00" + _TUPLE1
            + b"C\x01b" + _TUPLE3 + _REDUCE + _MARK + b"K\x01" + _int(n) + _TUPLE1 + dtype + b"\x89"
            + b"C" + bytes([len(data)]) + data + _TUPLE + b"b")


def _one(value: bytes) -> bytes:
    return _P2 + _EMPTY_DICT + _str("w") + value + _SETITEM + _STOP


def _concatenate_bomb() -> bytes:
    """Two 1 GiB arrays from nothing, joined by the big-param entry: the 172-byte file of issue 21."""
    n = 1 << 30
    info = (_EMPTY_DICT + _str("OriginShape") + _int(2) + _int(n // 2) + _TUPLE2 + _SETITEM + _str("slices")
            + _str("a") + _str("b") + _TUPLE2 + _SETITEM)
    return (_P2 + _EMPTY_DICT + _MARK + _str("a") + _uninitialised_array(n) + _str("b") + _uninitialised_array(n)
            + _str(W.BIG_PARAM_KEY) + _EMPTY_DICT + _str("w") + info + _SETITEM + _SETITEMS + _STOP)


def _codecs_chain(links: int) -> bytes:
    """``_codecs.encode(..., 'hex')`` applied ``links`` times: each link doubles the bytes."""
    data = _global("_codecs", "encode") + _str("x") + _str("latin1") + _TUPLE2 + _REDUCE
    for _ in range(links):
        data = _global("_codecs", "encode") + data + _str("hex") + _TUPLE2 + _REDUCE
    return _P2 + _EMPTY_DICT + _str("w") + data + _SETITEM + _STOP


def _arrays(**extra) -> bytes:
    a = np.zeros(8, np.float32)
    return pickle.dumps({"w@@.0": a, "w@@.1": a.copy(), **extra}, protocol=4)


def _big(info) -> bytes:
    return _arrays(**{W.BIG_PARAM_KEY: info})


CORPUS = {  # name: (bytes, what the one line says)
    "deep_tuple_1e6": (_deep_tuple_key(10**6), "nest deeper than 32 levels"),
    "deep_tuple_1e5": (_deep_tuple_key(10**5), "nest deeper than 32 levels"),
    "deep_marks": (_deep_marks(10**5), "MARKs nest deeper than 32"),
    "self_containing_list": (_P4 + b"]q\x00h\x00a" + _STOP, "nest deeper than 32 levels"),
    "big_param_int": (_big(5), "UnpackBigParamInfor@@ is a int, not a dict"),
    "big_param_list": (_big(["w@@.0", "w@@.1"]), "UnpackBigParamInfor@@ is a list, not a dict"),
    "big_param_entry_int": (_big({"w": 3}), "entry 'w' is not a dict with a list of slices"),
    "big_param_missing_slice": (_big({"w": {"OriginShape": (24,), "slices": ["w@@.0", "w@@.2"]}}),
                                "slice 'w@@.2' is not an array"),
    "big_param_empty_slices": (_big({"w": {"OriginShape": (0,), "slices": []}}), "needs distinct slice names"),
    "big_param_no_shape": (_big({"w": {"slices": ["w@@.0", "w@@.1"]}}), "has OriginShape None"),
    "big_param_wrong_size": (_big({"w": {"OriginShape": (1 << 40,), "slices": ["w@@.0", "w@@.1"]}}),
                             "slices of 16 values do not make shape (1099511627776,)"),
    "concatenate_bomb": (_concatenate_bomb(), "an array of 1073741824 bytes"),
    "codecs_chain_31": (_codecs_chain(31), "nest deeper than 32 levels"),
    "codecs_hex": (_codecs_chain(3), "_codecs.encode is admitted only as protocol 2's spelling of bytes"),
    "declared_past_eof": (_P4 + b"\x8e" + struct.pack("<Q", 1 << 40) + b"xx" + _STOP, "declares 1099511627776"),
    "frame_past_eof": (_P4 + b"\x95" + struct.pack("<Q", 1 << 40) + _NONE + _STOP, "declares 1099511627776"),
    "long4_integer": (_P2 + b"\x8b" + struct.pack("<i", 1 << 30) + _STOP, "opcode LONG4"),
    "opcode_flood": (_P4 + (_NONE + _POP) * 10**6 + _NONE + _STOP, "runs over"),
    "stack_global_eval": (_P4 + b"\x8c\x08builtins\x8c\x04eval\x93" + _STOP, "refusing to load builtins.eval"),
    "codecs_decode": (_P2 + _global("_codecs", "decode") + _STOP, "refusing to load _codecs.decode"),
    "ndarray_called": (_P2 + _global("numpy", "ndarray") + _int(1 << 30) + _TUPLE1 + _TUPLE1 + _REDUCE + _STOP,
                       "numpy.ndarray is called directly"),
    "object_dtype": (_P2 + _global("numpy", "dtype") + _str("O") + _TUPLE1 + _REDUCE + _STOP,
                     "dtype 'O' is not a plain numeric type"),
    "memo_index_huge": (_P4 + _NONE + b"r" + struct.pack("<I", 200_000_000) + _STOP,  # an array of that length
                        "stores memo entry 200000000, past the 3 opcodes so far"),
    "build_on_a_global": (_P2 + _global("numpy", "dtype") + _NONE + _EMPTY_DICT + _TUPLE2 + b"b" + _STOP,
                          "would set attributes of a class or function"),
    "slot_state_on_an_array": (  # an instance attribute named __setstate__ would skip the check of the state
        _one(_array(2, bytes(8)) + _NONE + _EMPTY_DICT + _str("__setstate__") + _global("_codecs", "encode")
             + _SETITEM + _TUPLE2 + b"b"), "an array's state is not numpy's"),
    "memo_never_stored": (_P4 + b"h\x07" + _STOP, "memo entry 7, which was never stored"),
    "persistent_id": (_P4 + _NONE + b"Q" + _STOP, "opcode BINPERSID"),
    "dtype_state_of_six_fields": (  # numpy takes it, and the dtype it leaves crashed the process
        _one(_array(2, bytes(8), _dtype(_MARK + b"K\x03" + _str("<") + _NONE + _int(-1) * 2 + b"K\x00" + _TUPLE))),
        "dtype f4 has the state (3, '<', None, -1, -1, 0), not a plain numeric type's"),
    "array_data_short": (_one(_array(4, bytes(8))), "an array's data is not the 16 bytes of its shape (4,)"),
    "array_dtype_not_pickled": (_one(_array(2, bytes(8), _NONE)), "an array's dtype is a NoneType"),
    "non_str_key": (pickle.dumps({(1, 2): np.zeros(2, np.float32)}, protocol=4), "a key is a tuple, not a str"),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_crafted_file_is_refused_in_one_line(tmp_path, name):
    data, reason = CORPUS[name]
    path = tmp_path / f"{name}.pdparams"
    path.write_bytes(data)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _READER.format(limit=AS_LIMIT), str(path), MODEL],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])  # a signal is negative, a traceback is 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and reason in lines[0], r.stderr[-2000:]
    assert int(r.stdout) < 512 * 1024  # peak RSS in KiB: far below the 1 GiB cap


def test_hand_made_array_pickle_is_read():
    """The opcodes the corpus mutates are numpy's own: unmutated, they load."""
    data = np.array([1.5, -2], "<f4").tobytes()
    state = W.read_pdparams(_one(_array(2, data)))
    assert type(state["w"]) is np.ndarray and state["w"].tolist() == [1.5, -2.0]
    py2 = _one(_array(2, data).replace(b"C\x08" + data, b"U\x08" + data))  # Python 2's str, read as latin-1
    assert W.read_pdparams(py2)["w"].tolist() == [1.5, -2.0]


_FUZZ = """
import random, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import numpy as np
from trt_res2net.core.errors import UserError
from trt_res2net.model import weights as W
good = [open(p, "rb").read() for p in sys.argv[1:]]
rng = random.Random(0)
for _ in range(300):
    d = bytearray(rng.choice(good))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(d))
        d[i:i + rng.choice((0, 1, 1, 4))] = rng.randbytes(rng.choice((0, 1, 1, 3)))
    try:
        W.read_pdparams(bytes(d))
    except UserError:
        pass
print("ok")
"""


def test_mutated_real_pickles_load_or_are_refused_in_one_line(tmp_path):
    """Random byte edits of real paddle.save files and numpy pickles: a UserError or a dict, nothing else."""
    small = tmp_path / "small.pdparams"
    small.write_bytes(pickle.dumps({"a": np.arange(6, dtype=np.float32), "b": (np.float32(3), "x"),
                                    W.BIG_PARAM_KEY: {}}, protocol=2))
    fixtures = sorted((REPO / "tests" / "fixtures").glob("paddle_saved_tiny*.pdparams"))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _FUZZ.format(limit=AS_LIMIT), str(small), *map(str, fixtures)],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-3000:])


def test_build_cli_refuses_crafted_weights_in_one_line(tmp_path):
    for name in ("deep_tuple_1e6", "concatenate_bomb"):
        path = tmp_path / f"{name}.pdparams"
        path.write_bytes(CORPUS[name][0])
        r = subprocess.run([sys.executable, "build.py", "--model", MODEL, "--weights", str(path), "--onnx-only",
                            "--onnx-out", str(tmp_path / "m.onnx")],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(path) in errors[0] and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert not (tmp_path / "m.onnx").exists()


def test_real_pickles_pass_the_scan_with_room(tiny_spec, tiny_weights):
    """Pickles of a full state dict with its name table stay well inside the limits that refuse the corpus."""
    names = W.param_attr_names(tiny_spec)
    for protocol in (2, 4):
        data = pickle.dumps({**tiny_weights, W.NAME_TABLE_KEY: names}, protocol=protocol)
        state = W.read_pdparams(data, tiny_spec)
        assert set(state) == set(tiny_weights)
        tight = guard.Limits(max_bytes=len(data), max_opcodes=len(data), max_depth=8)
        assert guard.scan(io.BytesIO(data), len(data), tight) <= len(data)


def test_payload_past_the_model_size_is_refused_by_the_scan():
    data = _P4 + (b"B" + struct.pack("<I", 1 << 16) + bytes(1 << 16) + _POP) * 20 + _NONE + _STOP
    with pytest.raises(guard.PickleRefused, match="declares over 1000000 bytes of data"):
        guard.scan(io.BytesIO(data), len(data), guard.Limits(max_bytes=10**6, max_opcodes=10**6))


def test_limits_follow_the_model():
    small = guard.Limits.for_file(10**9, params=1000, keys=10)
    assert small.max_bytes == 8 * 1000 + 1024 * 10 + (1 << 20) and small.max_opcodes == 128 * 10 + 4096
    assert guard.Limits.for_file(500, params=10**8, keys=10**4) == guard.Limits(500, 500)
