"""A bounded unpickler for weight files: the opcodes are scanned before any object is built.

The scan walks the opcodes as ``pickletools.genops`` does, with its opcode table, stepping over long payloads
instead of reading them. It refuses a pickle that nests deeper than ``Limits.max_depth`` (tuples, lists, dicts,
calls, MARKs), runs more than ``Limits.max_opcodes`` opcodes, declares more payload bytes than ``Limits.max_bytes``
or than the file still holds, uses an opcode that weight files never use, or names a global outside the allow-list.
Only then is the file unpickled, with every allowed global replaced by a stand-in that checks its arguments: numpy
builds plain numeric arrays no larger than the payload the file declared, and ``_codecs.encode`` turns a str into
latin-1 bytes and does nothing else.
"""

from __future__ import annotations

import collections
import functools
import math
import pickle
import pickletools
import struct
from dataclasses import dataclass

from ..core.lazy import lazy_import

np = lazy_import("numpy")

# What pickles of numpy arrays and dicts reference (numpy 1 and 2 module names); `_codecs.encode` is how protocol 2
# spells bytes on Python 3 (paddle.save with protocol=2 writes it).
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
})

# Plain numeric dtypes, as numpy pickles them (the byte order comes in the dtype's state).
_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})

_LEAVES = frozenset({
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "UNICODE",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_SET",
})
_FROM_MARK = frozenset({"TUPLE", "LIST", "DICT", "FROZENSET"})
_FIXED_TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_INTO_FROM_MARK = frozenset({"APPENDS", "SETITEMS", "ADDITEMS"})
_INTO = {"APPEND": 1, "SETITEM": 2, "BUILD": 1}
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MAX_INT_BYTES = 8  # LONG1 payloads: shapes and sizes fit in 64 bits
_ACCEPTED = _LEAVES | _FROM_MARK | _FIXED_TUPLES.keys() | _INTO_FROM_MARK | _INTO.keys() | _PUTS | _GETS | {
    "MARK", "REDUCE", "GLOBAL", "STACK_GLOBAL", "POP", "POP_MARK", "DUP", "PROTO", "FRAME", "STOP"}


class PickleRefused(Exception):
    """A one-line reason the pickle is not read."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one weight file: payload bytes, opcodes, nesting depth."""

    max_bytes: int
    max_opcodes: int
    max_depth: int = 32

    @classmethod
    def for_file(cls, size: int, params: int | None = None, keys: int | None = None) -> Limits:
        """Bounds from the file's size and, where the model is known, its parameter and key counts."""
        if params is None or keys is None:
            return cls(max_bytes=size, max_opcodes=size)
        # float64 arrays at most, key strings twice (state dict and name table), and pickle's own framing
        return cls(max_bytes=min(size, 8 * params + 1024 * keys + (1 << 20)),
                   max_opcodes=min(size, 128 * keys + 4096))


# --- the scan --------------------------------------------------------------------------------------------------

class _Capped:
    """A reader that refuses to read past the end of the file, so a declared length cannot allocate."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def read(self, n: int) -> bytes:
        self.check(n)
        return self.f.read(n)

    def skip(self, n: int) -> None:
        self.check(n)
        self.f.seek(n, 1)

    def check(self, n: int) -> None:
        left = self.size - self.f.tell()
        if not 0 <= n <= left:
            raise PickleRefused(f"truncated or corrupt: declares {n} bytes at offset {self.f.tell()}, "
                                f"but only {left} remain")

    def readline(self) -> bytes:
        return self.f.readline()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()


class _Node:
    """One object of the simulated pickle stack: how deep it nests, and which containers hold it."""

    __slots__ = ("depth", "parents", "value")

    def __init__(self, depth: int = 1, value=None):
        self.depth, self.parents, self.value = depth, [], value


_MARK = _Node(0)
_IS_GLOBAL = object()  # the value of a node that a GLOBAL pushed


class _Scan:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.stack: list[_Node] = []
        self.marks: list[int] = []  # stack positions of the open MARKs
        self.memo: dict[int, _Node] = {}
        self.payload = 0
        self.count = 0  # opcodes so far

    def pop(self, what: str) -> _Node:
        if not self.stack or self.stack[-1] is _MARK:
            raise PickleRefused(f"{what} finds no object on the stack")
        return self.stack.pop()

    def pop_mark(self, what: str) -> list[_Node]:
        if not self.marks:
            raise PickleRefused(f"{what} has no MARK")
        i = self.marks.pop()
        items, self.stack[i:] = self.stack[i + 1:], []
        return items

    def deepen(self, node: _Node, items: list[_Node]) -> None:
        """``node`` now holds ``items``: raise its depth and that of every container above it."""
        for item in items:
            item.parents.append(node)
        todo = [(node, 1 + max((i.depth for i in items), default=0))]
        while todo:
            n, d = todo.pop()
            if d <= n.depth:
                continue
            if d > self.limits.max_depth:
                raise PickleRefused(f"objects nest deeper than {self.limits.max_depth} levels")
            n.depth = d
            todo.extend((p, d + 1) for p in n.parents)

    def built(self, items: list[_Node]) -> None:
        node = _Node()
        self.deepen(node, items)
        self.stack.append(node)

    def step(self, name: str, arg, pos: int) -> None:
        if name in _LEAVES:
            if isinstance(arg, _Skipped):
                self.charge(arg)
            elif isinstance(arg, (bytes, str)):
                self.charge(len(arg))
            elif name == "LONG1" and isinstance(arg, int) and arg.bit_length() > 8 * _MAX_INT_BYTES:
                raise PickleRefused(f"an integer of {arg.bit_length()} bits at offset {pos}")
            self.stack.append(_Node(value=arg if isinstance(arg, str) else None))
        elif name == "MARK":
            if len(self.marks) >= self.limits.max_depth:
                raise PickleRefused(f"MARKs nest deeper than {self.limits.max_depth} levels")
            self.marks.append(len(self.stack))
            self.stack.append(_MARK)
        elif name in _FROM_MARK:
            self.built(self.pop_mark(name))
        elif name in _FIXED_TUPLES:
            self.built([self.pop(name) for _ in range(_FIXED_TUPLES[name])])
        elif name in _INTO_FROM_MARK:
            items = self.pop_mark(name)
            self.deepen(self.peek(name), items)
        elif name in _INTO:
            items = [self.pop(name) for _ in range(_INTO[name])]
            if name == "BUILD" and self.peek(name).value is _IS_GLOBAL:
                raise PickleRefused(f"BUILD at offset {pos} would set attributes of a class or function")
            self.deepen(self.peek(name), items)
        elif name == "REDUCE":
            self.built([self.pop(name), self.pop(name)])
        else:
            self.other(name, arg, pos)

    def other(self, name: str, arg, pos: int) -> None:
        if name in _PUTS:
            index = len(self.memo) if name == "MEMOIZE" else arg
            if not 0 <= index <= self.count:  # the C unpickler's memo is an array as long as the largest index
                raise PickleRefused(f"{name} at offset {pos} stores memo entry {index}, past the {self.count} "
                                    "opcodes so far")
            self.memo[index] = self.peek(name)
        elif name in _GETS:
            if arg not in self.memo:
                raise PickleRefused(f"{name} at offset {pos} reads memo entry {arg}, which was never stored")
            self.stack.append(self.memo[arg])
        elif name == "GLOBAL":
            self.allow(*str(arg).split(" ", 1), pos=pos)
            self.stack.append(_Node(value=_IS_GLOBAL))
        elif name == "STACK_GLOBAL":
            qualname, module = self.pop(name).value, self.pop(name).value
            if not isinstance(module, str) or not isinstance(qualname, str):
                raise PickleRefused(f"STACK_GLOBAL at offset {pos} names its global with non-strings")
            self.allow(module, qualname, pos=pos)
            self.stack.append(_Node(value=_IS_GLOBAL))
        elif name == "POP":
            if self.stack and self.stack[-1] is _MARK:
                self.pop_mark(name)
            else:
                self.pop(name)
        elif name == "POP_MARK":
            self.pop_mark(name)
        elif name == "DUP":
            self.stack.append(self.peek(name))
        elif name not in ("PROTO", "FRAME", "STOP"):
            raise PickleRefused(f"opcode {name} at offset {pos} is not used by weight files")

    def peek(self, what: str) -> _Node:
        if not self.stack or self.stack[-1] is _MARK:
            raise PickleRefused(f"{what} finds no object on the stack")
        return self.stack[-1]

    def charge(self, n: int) -> None:
        self.payload += n
        if self.payload > self.limits.max_bytes:
            raise PickleRefused(f"declares over {self.limits.max_bytes} bytes of data, more than the model holds")

    @staticmethod
    def allow(module: str, name: str = "", pos: int = 0) -> None:
        if (module, name) not in ALLOWED_GLOBALS:
            raise PickleRefused(f"refusing to load {module}.{name}: a weight file may only contain numpy arrays")


# Opcodes whose payload length comes first, and its struct format. Long payloads are stepped over, not read.
_SIZED = {"BINSTRING": "<i", "BINBYTES": "<I", "BINUNICODE": "<I", "BINBYTES8": "<Q", "BINUNICODE8": "<Q"}
_READ_UP_TO = 256  # payloads this short are read (names of globals, keys); longer ones only counted


class _Skipped(int):
    """The length of a payload the scan stepped over."""


def _opcodes(f):
    """``pickletools.genops`` over ``f``, except that long payloads are stepped over instead of read."""
    while True:
        pos = f.tell()
        code = f.read(1)
        op = pickletools.code2op.get(code.decode("latin1"))
        if op is None:
            raise PickleRefused(f"truncated or corrupt: {'no STOP' if not code else f'opcode {code!r}'} at offset "
                                f"{pos}")
        if op.name not in _ACCEPTED:
            raise PickleRefused(f"opcode {op.name} at offset {pos} is not used by weight files")
        arg = None
        if op.name in _SIZED:
            fmt = _SIZED[op.name]
            n = struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
            if n > _READ_UP_TO or n < 0:
                f.skip(n)  # refuses a length past the end of the file
                arg = _Skipped(n)
            else:
                f.seek(-struct.calcsize(fmt), 1)
        if op.arg is not None and arg is None:
            arg = op.arg.reader(f)
        if op.name == "FRAME":  # the unpickler reads a whole frame at once
            f.check(arg)
        yield op, arg, pos
        if op.name == "STOP":
            return


def scan(f, size: int, limits: Limits) -> int:
    """Walk the opcodes of the pickle at ``f``'s position without building anything; return the payload bytes.
    Raises PickleRefused. Leaves ``f`` where it started."""
    start = f.tell()
    state = _Scan(limits)
    count = 0
    try:
        for op, arg, pos in _opcodes(_Capped(f, size)):
            count = state.count = count + 1
            if count > limits.max_opcodes:
                raise PickleRefused(f"runs over {limits.max_opcodes} opcodes, more than the model needs")
            state.step(op.name, arg, pos)
    except PickleRefused:
        raise
    except (ValueError, EOFError, KeyError, IndexError, OverflowError, struct.error) as e:
        raise PickleRefused(f"truncated or corrupt ({e})") from None
    finally:
        f.seek(start)
    return state.payload


# --- the unpickler ------------------------------------------------------------------------------------------

class _NdarrayType:
    """Stands in for ``numpy.ndarray``: the pickle names it as the class to rebuild, and may not call it."""

    def __new__(cls, *args, **kwargs):
        raise PickleRefused("numpy.ndarray is called directly; a weight file only names it for _reconstruct")


class _Dtype:
    """A pickled numpy dtype: numpy builds it only once its state is checked (numpy's own ``__setstate__`` takes
    states of other lengths and layouts that leave a dtype inconsistent)."""

    __slots__ = ("code", "order")  # nothing else can be set on it

    def __init__(self, code, align=False, copy=True):
        if not isinstance(code, str) or code not in _DTYPES:
            raise PickleRefused(f"dtype {code!r:.40} is not a plain numeric type")
        self.code, self.order = code, "="

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                and state[2:] == (None, None, None, -1, -1, 0)):
            raise PickleRefused(f"dtype {self.code} has the state {state!r:.80}, not a plain numeric type's")
        self.order = state[1]

    def real(self):
        d = np.dtype(self.code)
        return d.newbyteorder(self.order) if self.order in "<>" else d


def _array_state(state) -> tuple:
    """numpy's ``(1, shape, dtype, fortran, data)`` state of an array, checked, with the dtype built."""
    if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
        raise PickleRefused("an array's state is not numpy's (1, shape, dtype, fortran order, data)")
    _, shape, dtype, fortran, data = state
    if not isinstance(dtype, _Dtype):
        raise PickleRefused(f"an array's dtype is a {type(dtype).__name__}, not a pickled numeric dtype")
    real = dtype.real()
    if isinstance(data, str):  # a Python 2 pickle's str, read as latin-1: numpy takes its code points as bytes
        data = data.encode("latin1")
    if not isinstance(fortran, bool) or not isinstance(data, bytes) or len(data) != _shape_size(shape) * real.itemsize:
        raise PickleRefused(f"an array's data is not the {_shape_size(shape) * real.itemsize} bytes of its shape "
                            f"{shape} and dtype {real}")
    return 1, shape, real, fortran, data


@functools.cache
def _pickled_array():
    """The class ``_reconstruct`` builds: an ndarray whose state is checked before numpy reads it."""

    class PickledArray(np.ndarray):
        __slots__ = ()  # no instance attributes: a BUILD's slot state cannot replace __setstate__

        def __setstate__(self, state):
            super().__setstate__(_array_state(state))

    return PickledArray


def _latin1(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise PickleRefused(f"_codecs.encode is admitted only as protocol 2's spelling of bytes, not on "
                            f"{type(obj).__name__} with {encoding!r}")
    return obj.encode("latin1")


def _shape_size(shape) -> int:
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise PickleRefused(f"array shape {shape!r:.60} is not a tuple of sizes")
    return math.prod(shape)


class BoundedUnpickler(pickle.Unpickler):
    """Unpickles only what the allow-list admits; numpy allocates at most ``budget`` bytes for arrays."""

    def __init__(self, f, budget: int):
        super().__init__(f, encoding="latin1")
        self.budget = budget

    def find_class(self, module, name):
        _Scan.allow(module, name)
        return {
            "_reconstruct": self._reconstruct, "scalar": self._scalar, "ndarray": _NdarrayType,
            "dtype": _Dtype, "OrderedDict": collections.OrderedDict, "encode": _latin1,
        }[name]

    def _reconstruct(self, subtype, shape, typecode):
        if subtype is not _NdarrayType:
            raise PickleRefused(f"_reconstruct builds a {getattr(subtype, '__name__', type(subtype).__name__)}, "
                                "not an ndarray")
        if typecode not in (b"b", "b"):
            raise PickleRefused(f"_reconstruct's type code is {typecode!r:.40}, not numpy's b'b'")
        n = _shape_size(shape)
        if n > self.budget:
            raise PickleRefused(f"an array of {n} bytes, more than the {self.budget} bytes of data in the file")
        self.budget -= n
        return np.ndarray.__new__(_pickled_array(), shape, "b")

    def _scalar(self, dtype, data=None):
        if not isinstance(dtype, _Dtype) or not isinstance(data, bytes) or len(data) != dtype.real().itemsize:
            raise PickleRefused("a numpy scalar that is not plain numeric data")
        return np.frombuffer(data, dtype.real())[0]


def load(f, size: int, limits: Limits):
    """Scan, then unpickle, the pickle at ``f``. Raises PickleRefused with a one-line reason."""
    payload = scan(f, size, limits)
    try:
        return BoundedUnpickler(f, budget=payload).load()
    except PickleRefused:
        raise
    except pickle.UnpicklingError as e:
        raise PickleRefused(f"not a PaddleClas .pdparams: {e}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError, OverflowError,
            RecursionError) as e:
        raise PickleRefused(f"truncated or corrupt ({type(e).__name__}: {e})") from None
