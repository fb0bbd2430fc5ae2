"""Hand-assembled attack pickles: an opcode-level assembler and the corpus the upload tests run.

Each :class:`Attack` builds the bytes of one attack, written opcode by opcode (never by
``pickle.dumps`` of an object, which would only say what pickle itself emits), for every
protocol from ``Attack.protocols`` and, from protocol 4 on, with names given both by GLOBAL and
by STACK_GLOBAL. An attack that would run code creates the marker file it is given when it runs.

    for case in cases(marker):
        safe_loads(case.data, case.allowed_modules)   # must raise UnsafePickle

``python tests/pickles.py`` prints the number of cases per attack class.
"""

from __future__ import annotations

import pickle
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Every protocol pickle has.
PROTOCOLS = range(6)


class Global:
    """A value of the assembled program that names ``module.name`` (GLOBAL or STACK_GLOBAL)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Call:
    """``function(*args)`` through REDUCE."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args


class New:
    """``cls.__new__(cls, *args)`` through NEWOBJ (protocol 2 on), or ``copyreg.__newobj__``
    through REDUCE before."""

    def __init__(self, cls: Any, *args: Any, kwargs: dict | None = None) -> None:
        self.cls, self.args, self.kwargs = cls, args, kwargs


class Build:
    """``target`` then BUILD with ``state``."""

    def __init__(self, target: Any, state: Any) -> None:
        self.target, self.state = target, state


class Memo:
    """``value`` stored in the memo under ``key`` once, then fetched (GET / BINGET / MEMOIZE)."""

    def __init__(self, key: int, value: Any = None) -> None:
        self.key, self.value = key, value


class Inst:
    """INST (protocol 0 and on): ``module.name(*args)``, the class named inline."""

    def __init__(self, module: str, name: str, *args: Any) -> None:
        self.module, self.name, self.args = module, name, args


class Obj:
    """OBJ (protocol 1 and on): the class and arguments from the stack after a MARK."""

    def __init__(self, cls: Any, *args: Any) -> None:
        self.cls, self.args = cls, args


class Raw:
    """Opcodes written as they are."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class Assembler:
    """Writes a program of the values above as the opcodes of one protocol."""

    def __init__(self, protocol: int, stack_global: bool = False) -> None:
        self.protocol = protocol
        self.stack_global = stack_global and protocol >= 4
        self.out = bytearray()
        self.memo: dict[int, int] = {}

    def program(self, value: Any) -> bytes:
        """The whole pickle: PROTO (from 2 on), FRAME (from 4 on), the value, STOP."""
        self.push(value)
        self.out += pickle.STOP
        body = bytes(self.out)
        if self.protocol < 2:
            return body
        header = pickle.PROTO + bytes([self.protocol])
        if self.protocol >= 4:
            header += pickle.FRAME + struct.pack("<Q", len(body))
        return header + body

    def push(self, value: Any) -> None:
        if isinstance(value, Raw):
            self.out += value.data
        elif isinstance(value, Global):
            self._global(value)
        elif isinstance(value, Call):
            self.push(value.function)
            self.push(tuple(value.args))
            self.out += pickle.REDUCE
        elif isinstance(value, New):
            self._new(value)
        elif isinstance(value, Build):
            self.push(value.target)
            self.push(value.state)
            self.out += pickle.BUILD
        elif isinstance(value, Memo):
            self._memo(value)
        elif isinstance(value, Inst):
            self.out += pickle.MARK
            for arg in value.args:
                self.push(arg)
            self.out += pickle.INST + f"{value.module}\n{value.name}\n".encode()
        elif isinstance(value, Obj):
            self.out += pickle.MARK
            self.push(value.cls)
            for arg in value.args:
                self.push(arg)
            self.out += pickle.OBJ
        else:
            self._value(value)

    def _global(self, value: Global) -> None:
        if self.stack_global:
            self._string(value.module)
            self._string(value.name)
            self.out += pickle.STACK_GLOBAL
        else:
            self.out += pickle.GLOBAL + f"{value.module}\n{value.name}\n".encode()

    def _new(self, value: New) -> None:
        if value.kwargs is not None and self.protocol >= 4:
            self.push(value.cls)
            self.push(tuple(value.args))
            self.push(dict(value.kwargs))
            self.out += pickle.NEWOBJ_EX
        elif value.kwargs is not None:
            self.push(Call(Global("copyreg", "__newobj_ex__"), value.cls, tuple(value.args), dict(value.kwargs)))
        elif self.protocol >= 2:
            self.push(value.cls)
            self.push(tuple(value.args))
            self.out += pickle.NEWOBJ
        else:
            self.push(Call(Global("copyreg", "__newobj__"), value.cls, *value.args))

    def _memo(self, value: Memo) -> None:
        if value.key in self.memo:
            index = self.memo[value.key]
            if self.protocol == 0:
                self.out += pickle.GET + f"{index}\n".encode()
            else:
                self.out += (
                    pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + struct.pack("<I", index)
                )
            return
        self.push(value.value)
        index = self.memo[value.key] = len(self.memo)
        if self.protocol >= 4:
            self.out += pickle.MEMOIZE
        elif self.protocol == 0:
            self.out += pickle.PUT + f"{index}\n".encode()
        else:
            self.out += pickle.BINPUT + bytes([index]) if index < 256 else pickle.LONG_BINPUT + struct.pack("<I", index)

    def _string(self, text: str) -> None:
        encoded = text.encode("utf-8", "surrogatepass")
        if self.protocol == 0:
            self.out += pickle.UNICODE + text.encode("raw-unicode-escape") + b"\n"
        elif self.protocol >= 4 and len(encoded) < 256:
            self.out += pickle.SHORT_BINUNICODE + bytes([len(encoded)]) + encoded
        else:
            self.out += pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded

    def _value(self, value: Any) -> None:
        if value is None:
            self.out += pickle.NONE
        elif value is True or value is False:
            if self.protocol >= 2:
                self.out += pickle.NEWTRUE if value else pickle.NEWFALSE
            else:
                self.out += b"I01\n" if value else b"I00\n"
        elif isinstance(value, int):
            if self.protocol == 0:
                self.out += pickle.INT + f"{value}\n".encode()
            elif -(2**31) <= value < 2**31:
                self.out += pickle.BININT + struct.pack("<i", value)
            else:
                encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
                self.out += pickle.LONG1 + bytes([len(encoded)]) + encoded
        elif isinstance(value, float):
            if self.protocol == 0:
                self.out += pickle.FLOAT + f"{value!r}\n".encode()
            else:
                self.out += pickle.BINFLOAT + struct.pack(">d", value)
        elif isinstance(value, str):
            self._string(value)
        elif isinstance(value, bytes):
            if self.protocol >= 3:
                self.out += pickle.BINBYTES + struct.pack("<I", len(value)) + value
            else:
                # How protocols 0 to 2 write bytes: codecs.encode(text, "latin1").
                self.push(Call(Global("_codecs", "encode"), value.decode("latin1"), "latin1"))
        elif isinstance(value, tuple):
            if self.protocol >= 2 and len(value) <= 3:
                for item in value:
                    self.push(item)
                self.out += (pickle.EMPTY_TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)[len(value)]
            else:
                self.out += pickle.MARK
                for item in value:
                    self.push(item)
                self.out += pickle.TUPLE
        elif isinstance(value, list):
            self._list(value)
        elif isinstance(value, dict):
            self._dict(value)
        else:
            raise TypeError(f"cannot assemble {value!r}")

    def _list(self, value: list) -> None:
        # Protocol 0 has neither EMPTY_LIST nor APPENDS: an empty LIST, then one APPEND an item.
        if self.protocol == 0:
            self.out += pickle.MARK + pickle.LIST
            for item in value:
                self.push(item)
                self.out += pickle.APPEND
            return
        self.out += pickle.EMPTY_LIST
        if value:
            self.out += pickle.MARK
            for item in value:
                self.push(item)
            self.out += pickle.APPENDS

    def _dict(self, value: dict) -> None:
        if self.protocol == 0:
            self.out += pickle.MARK + pickle.DICT
            for key, item in value.items():
                self.push(key)
                self.push(item)
                self.out += pickle.SETITEM
            return
        self.out += pickle.EMPTY_DICT
        if value:
            self.out += pickle.MARK
            for key, item in value.items():
                self.push(key)
                self.push(item)
            self.out += pickle.SETITEMS


def assemble(value: Any, protocol: int, stack_global: bool = False) -> bytes:
    """The pickle of the program ``value`` in ``protocol``."""
    return Assembler(protocol, stack_global).program(value)


# --- the corpus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """One attack: its class (a row of the table in docs/security.md), a name, and the program
    that builds it for a marker path. ``runs_code``: would create the marker if it ran."""

    kind: str
    name: str
    program: Callable[[Path], Any]
    protocols: range = PROTOCOLS
    runs_code: bool = False
    allowed_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    """One attack in one protocol and naming style: the bytes to upload."""

    attack: Attack
    protocol: int
    stack_global: bool
    data: bytes
    marker: Path

    @property
    def id(self) -> str:
        style = "-stack" if self.stack_global else ""
        return f"{self.attack.kind}:{self.attack.name}:p{self.protocol}{style}"

    @property
    def allowed_modules(self) -> tuple[str, ...]:
        return self.attack.allowed_modules


def _touch(marker: Path) -> str:
    """Python source that creates ``marker``."""
    return f"open({str(marker)!r}, 'w').close()"


def _eval(marker: Path) -> Call:
    return Call(Global("builtins", "eval"), _touch(marker))


def _getattr(owner: Any, name: str) -> Call:
    return Call(Global("builtins", "getattr"), owner, name)


def _chain_to_eval(start: Any, marker: Path) -> Call:
    """The classic escape: ``start.__globals__["__builtins__"]["eval"](code)``, every step an
    attribute or item fetched with getattr and dict.get."""
    dict_get = _getattr(Global("builtins", "dict"), "get")
    globals_ = _getattr(start, "__globals__")
    builtins_ = Call(dict_get, globals_, "__builtins__")
    return Call(Call(dict_get, builtins_, "eval"), _touch(marker))


def _rolling_getattr(marker: Path) -> Call:
    # river.utils.rolling.BaseRolling.__getattr__(rolling, name) returns getattr(rolling.obj, name).
    forward = Global("river.utils.rolling", "BaseRolling.__getattr__")
    rolling = Call(Global("river.utils.rolling", "Rolling"), Call(Global("river.stats", "Mean")), 3)
    function = Call(forward, Build(rolling, {"obj": Global("river.utils.math", "minkowski_distance")}), "__globals__")
    builtins_ = Call(_getattr(Global("builtins", "dict"), "get"), function, "__builtins__")
    return Call(Call(_getattr(Global("builtins", "dict"), "get"), builtins_, "eval"), _touch(marker))


def _model() -> New:
    return New(Global("river.linear_model", "LinearRegression"))


def _nested(levels: int, container: Callable[[Any], Any]) -> Any:
    """``levels`` containers, each holding the one below twice (shared through the memo): a few
    bytes that expand to 2**levels leaves wherever the model is walked (its JSON, a deep copy)."""
    value: Any = "leaf"
    for level in range(levels):
        value = container(Memo(level, value))
    return value


def _array(shape: Any, dtype: Any, *rest: Any) -> Call:
    return Call(Global("numpy", "ndarray"), shape, dtype, *rest)


def _empty_array() -> Call:
    """What numpy's pickles start an array from, before BUILD gives it its shape and data."""
    return Call(Global("numpy._core.multiarray", "_reconstruct"), Global("numpy", "ndarray"), (0,), b"b")


def _dtype(text: str) -> Call:
    return Call(Global("numpy", "dtype"), text, False, True)


GIB = 2**30

ATTACKS: list[Attack] = [
    # --- code execution through a global ---------------------------------------------------------
    Attack("code execution", "os.system", lambda m: Call(Global("os", "system"), f"touch '{m}'"), runs_code=True),
    Attack("code execution", "posix.system", lambda m: Call(Global("posix", "system"), f"touch '{m}'"), runs_code=True),
    Attack(
        "code execution",
        "subprocess.Popen",
        lambda m: Call(Global("subprocess", "Popen"), ("touch", str(m))),
        runs_code=True,
    ),
    Attack("code execution", "builtins.eval", _eval, runs_code=True),
    Attack("code execution", "builtins.exec", lambda m: Call(Global("builtins", "exec"), _touch(m)), runs_code=True),
    Attack(
        "code execution",
        "builtins.__import__",
        lambda m: Call(
            Call(Global("builtins", "getattr"), Call(Global("builtins", "__import__"), "os"), "system"), f"touch '{m}'"
        ),
        runs_code=True,
    ),  # fmt: skip
    Attack("code execution", "builtins.compile", lambda m: Call(Global("builtins", "compile"), _touch(m), "x", "exec")),
    Attack("code execution", "importlib.import_module", lambda m: Call(Global("importlib", "import_module"), "os")),
    Attack(
        "code execution",
        "dill function by value",
        lambda m: Call(
            Global("dill._dill", "_create_function"),
            Call(Global("dill._dill", "_create_code"), 0, 0, 0, 0, 0, 0, b"", (), (), (), "x", "x", 0, b""),
            {},
        ),
        protocols=range(2, 6),
    ),  # fmt: skip
    Attack("code execution", "dill CodeType", lambda m: Call(Global("dill._dill", "_load_type"), "CodeType")),
    Attack(
        "code execution",
        "pickle.loads nested",
        lambda m: Call(Global("pickle", "loads"), b"cos\nsystem\n(S'touch " + str(m).encode() + b"'\ntR."),
        protocols=range(3, 6),
        runs_code=True,
    ),  # fmt: skip
    Attack(
        "code execution",
        "module attribute of river",
        lambda m: Call(
            Global("river.checks.common", "pickle.loads"), b"cos\nsystem\n(S'touch " + str(m).encode() + b"'\ntR."
        ),
        protocols=range(3, 6),
        runs_code=True,
    ),  # fmt: skip
    Attack("code execution", "sys.exit through river", lambda m: Call(Global("river.base.base", "sys.exit"), 3)),
    # --- the getattr chain through class attributes ----------------------------------------------
    Attack("getattr chain", "BaseRolling.__getattr__", _rolling_getattr, runs_code=True),
    Attack(
        "getattr chain",
        "getattr river function __globals__",
        lambda m: _chain_to_eval(Global("river.utils.math", "minkowski_distance"), m),
        runs_code=True,
    ),  # fmt: skip
    Attack(
        "getattr chain",
        "dotted name Base.__getattribute__",
        lambda m: Call(Global("river.base.base", "Base.__getattribute__"), _model(), "__class__"),
    ),  # fmt: skip
    Attack(
        "getattr chain",
        "getattr Base __getattribute__",
        lambda m: _getattr(Global("river.base", "Base"), "__getattribute__"),
    ),  # fmt: skip
    Attack(
        "getattr chain",
        "dotted name learn_one.__globals__",
        lambda m: _getattr(Global("river.linear_model.lin_reg", "LinearRegression.learn_one.__globals__"), "get"),
    ),  # fmt: skip
    Attack("getattr chain", "getattr instance __class__", lambda m: _getattr(_model(), "__class__")),
    Attack("getattr chain", "getattr instance __dict__", lambda m: _getattr(_model(), "__dict__")),
    Attack(
        "getattr chain", "getattr dict.get", lambda m: Call(_getattr(Global("builtins", "dict"), "get"), {"a": 1}, "a")
    ),  # fmt: skip
    Attack(
        "getattr chain",
        "dill _getattr eval repr",
        lambda m: Call(
            Global("dill._dill", "_getattr"),
            Global("builtins", "dict"),
            "get",
            "a'b'c'" + f'__import__("os").system("touch {m}")#' + "'",
        ),
        runs_code=True,
    ),  # fmt: skip
    Attack(
        "getattr chain",
        "getattr method of numpy array",
        lambda m: Call(_getattr(Call(Global("numpy", "zeros"), 2), "tofile"), str(m)),
        runs_code=True,
    ),  # fmt: skip
    Attack(
        "getattr chain",
        "getattr type.__subclasses__",
        lambda m: Call(_getattr(Global("builtins", "object"), "__subclasses__")),
    ),  # fmt: skip
    Attack("getattr chain", "dotted name into a module", lambda m: Call(Global("river.base", "base.sys.exit"), 3)),
    # --- format-string walks ---------------------------------------------------------------------
    Attack(
        "format string",
        "str.format bound",
        lambda m: Call(_getattr("{0.__globals__}", "format"), Global("river.utils.math", "minkowski_distance")),
    ),  # fmt: skip
    Attack(
        "format string",
        "dotted str.format",
        lambda m: Call(
            Global("builtins", "str.format"), "{0.__globals__}", Global("river.utils.math", "minkowski_distance")
        ),
    ),  # fmt: skip
    Attack(
        "format string",
        "dill _getattr str.format",
        lambda m: Call(
            Global("dill._dill", "_getattr"), Global("builtins", "str"), "format", "<method 'format' of 'str' objects>"
        ),
    ),  # fmt: skip
    Attack(
        "format string",
        "partial of str.format",
        lambda m: Call(
            Global("functools", "partial"), _getattr(Global("builtins", "str"), "format"), "{0.__globals__}"
        ),
    ),  # fmt: skip
    Attack("format string", "operator.mod", lambda m: Call(Global("operator", "mod"), "%999999999s", "x")),
    Attack("format string", "format width", lambda m: Call(Global("builtins", "format"), "x", "400000000")),
    Attack("format string", "attrgetter __globals__", lambda m: Call(Global("operator", "attrgetter"), "__globals__")),
    Attack("format string", "methodcaller format", lambda m: Call(Global("operator", "methodcaller"), "format", 1)),
    # --- array offsets and memory outside a buffer -----------------------------------------------
    Attack("array memory", "negative offset", lambda m: _array((65536,), "u1", b"\x00" * 8, -4096)),
    Attack("array memory", "offset past the buffer", lambda m: _array((8,), "u1", b"\x00" * 8, 4096)),
    Attack("array memory", "stride past the buffer", lambda m: _array((8,), "u1", b"\x00" * 8, 0, (4096,))),
    Attack("array memory", "negative stride", lambda m: _array((8,), "u1", b"\x00" * 8, 0, (-4096,))),
    Attack("array memory", "object array over bytes", lambda m: _array((1,), "O", b"\x41" * 8)),
    Attack(
        "array memory",
        "frombuffer length mismatch",
        lambda m: Call(Global("numpy._core.numeric", "_frombuffer"), b"\x00" * 8, _dtype("f8"), (1000000,), "C"),
        protocols=range(3, 6),
    ),  # fmt: skip
    Attack(
        "array memory",
        "frombuffer object dtype",
        lambda m: Call(Global("numpy._core.numeric", "_frombuffer"), b"\x41" * 8, _dtype("O"), (1,), "C"),
        protocols=range(3, 6),
    ),  # fmt: skip
    Attack(
        "array memory",
        "setstate short data",
        lambda m: Build(
            _empty_array(),
            (1, (1000000,), _dtype("f8"), False, b"\x00" * 8),
        ),
    ),  # fmt: skip
    Attack(
        "array memory",
        "setstate object data as bytes",
        lambda m: Build(
            _empty_array(),
            (1, (1,), _dtype("O"), False, b"\x41" * 8),
        ),
    ),  # fmt: skip
    Attack(
        "array memory",
        "MT19937 position past its key",
        lambda m: Build(
            Call(Global("numpy.random._pickle", "__bit_generator_ctor"), "MT19937"),
            {"bit_generator": "MT19937", "state": {"key": list(range(624)), "pos": 100000}},
        ),
    ),  # fmt: skip
    Attack(
        "array memory",
        "RandomState position",
        lambda m: Build(
            Call(Global("numpy.random._pickle", "__randomstate_ctor"), "MT19937"),
            ("MT19937", list(range(624)), -5, 0, 0.0),
        ),
    ),  # fmt: skip
    Attack(
        "array memory",
        "Philox buffer position",
        lambda m: Build(
            Call(Global("numpy.random._pickle", "__bit_generator_ctor"), "Philox"),
            {
                "bit_generator": "Philox",
                "state": {"counter": [0, 0, 0, 0], "key": [0, 0]},
                "buffer": [0, 0, 0, 0],
                "buffer_pos": 99999,
                "has_uint32": 0,
                "uinteger": 0,
            },
        ),
    ),  # fmt: skip
    Attack(
        "array memory",
        "randomstate ctor with a callable",
        lambda m: Call(Global("numpy.random._pickle", "__randomstate_ctor"), _touch(m), Global("builtins", "exec")),
        runs_code=True,
    ),  # fmt: skip
    Attack(
        "array memory",
        "dtype state on numpy's own float64",
        lambda m: Build(Call(Global("numpy", "dtype"), "f8", False, False), (3, ">", None, None, None, -1, -1, 0)),
    ),  # fmt: skip
    # --- allocation bombs ------------------------------------------------------------------------
    Attack(
        "allocation bomb", "numpy.zeros sub-array dtype", lambda m: Call(Global("numpy", "zeros"), 1, "(8000,8000)f8")
    ),  # fmt: skip
    Attack("allocation bomb", "ndarray sub-array dtype", lambda m: _array((1,), "(8000,8000)f8")),
    Attack(
        "allocation bomb",
        "reconstruct sub-array dtype",
        lambda m: Call(
            Global("numpy._core.multiarray", "_reconstruct"), Global("numpy", "ndarray"), (1,), "(8000,8000)f8"
        ),
    ),  # fmt: skip
    Attack("allocation bomb", "numpy.void size", lambda m: Call(Global("numpy", "void"), 400000000)),
    Attack("allocation bomb", "void dtype array", lambda m: _array((1,), "V400000000")),
    Attack("allocation bomb", "unicode dtype array", lambda m: _array((2,), "U400000000")),
    Attack(
        "allocation bomb",
        "bytes dtype scalar",
        lambda m: Call(Global("numpy._core.multiarray", "scalar"), _dtype("S400000000"), b"x"),
    ),  # fmt: skip
    Attack(
        "allocation bomb",
        "dtype itemsize state",
        lambda m: _array((1,), Build(_dtype("V8"), (3, "|", None, None, None, 400000000, 1, 16))),
    ),  # fmt: skip
    Attack("allocation bomb", "numpy.ones big", lambda m: Call(Global("numpy", "ones"), (20000, 20000))),
    Attack("allocation bomb", "ndarray many elements", lambda m: _array((20000, 20000), "f8")),
    Attack("allocation bomb", "bytes(n)", lambda m: Call(Global("builtins", "bytes"), GIB)),
    Attack("allocation bomb", "bytearray(n)", lambda m: Call(Global("builtins", "bytearray"), GIB)),
    Attack("allocation bomb", "NEWOBJ bytes(n)", lambda m: New(Global("builtins", "bytes"), GIB)),
    Attack("allocation bomb", "NEWOBJ numpy.void(n)", lambda m: New(Global("numpy", "void"), 400000000)),
    Attack(
        "allocation bomb",
        "range to fill a list",
        lambda m: Call(Global("builtins", "list"), Call(Global("builtins", "range"), 10**9)),
    ),  # fmt: skip
    Attack(
        "allocation bomb",
        "HalfSpaceTrees with a million trees",
        lambda m: Call(Global("river.anomaly", "HalfSpaceTrees"), 1000000),
    ),  # fmt: skip
    Attack(
        "allocation bomb",
        "Rust window size",
        lambda m: New(Global("river._river_rust.stats", "RsRollingQuantile"), 0.5, 2**40),
    ),  # fmt: skip
    Attack(
        "allocation bomb",
        "partial of numpy.ones",
        lambda m: Call(Global("functools", "partial"), Global("numpy", "ones"), (20000, 20000)),
    ),  # fmt: skip
    Attack("allocation bomb", "Fraction from text", lambda m: Call(Global("fractions", "Fraction"), "1e999999999")),
    # --- container growth ------------------------------------------------------------------------
    Attack("container growth", "list.extend", lambda m: Call(Global("builtins", "list.extend"), [1], [1])),
    Attack("container growth", "getattr list extend", lambda m: Call(_getattr([1], "extend"), [1, 2])),
    Attack("container growth", "dict.update", lambda m: Call(Global("builtins", "dict.update"), {}, {})),
    Attack(
        "container growth",
        "shared lists doubling",
        lambda m: _nested(40, lambda inner: [inner, inner]),
        protocols=range(1, 6),
    ),  # fmt: skip
    Attack(
        "container growth",
        "shared dicts doubling",
        lambda m: _nested(40, lambda inner: {"a": inner, "b": inner}),
        protocols=range(1, 6),
    ),  # fmt: skip
    Attack("container growth", "shared tuples doubling", lambda m: _nested(40, lambda inner: (inner, inner))),
    Attack(
        "container growth", "nested 100000 deep", lambda m: Raw(b"]" * 100000 + b"a" * 99999), protocols=range(1, 6)
    ),  # fmt: skip
    Attack("container growth", "APPENDS onto an object", lambda m: _appends_to_model(), protocols=range(1, 6)),
    Attack("container growth", "SETITEMS onto an object", lambda m: _setitems_to_model(), protocols=range(1, 6)),
    # --- imports ----------------------------------------------------------------------------------
    Attack(
        "import",
        "unimported example script",
        lambda m: Global("examples.regression.run", "Client"),
        allowed_modules=("examples",),
    ),  # fmt: skip
    Attack(
        "import",
        "unimported custom module",
        lambda m: Global("examples.custom.model_that_does_not_exist", "Model"),
        allowed_modules=("examples",),
    ),  # fmt: skip
    Attack("import", "numpy.f2py.__main__", lambda m: Call(Global("numpy.f2py.__main__", "main"))),
    Attack("import", "river.datasets", lambda m: Call(Global("river.datasets", "Phishing"))),
    Attack("import", "river.checks", lambda m: Global("river.checks", "check_estimator")),
    Attack("import", "module outside the list", lambda m: Global("ctypes", "CDLL")),
    Attack("import", "module by itself", lambda m: Global("river", "linear_model")),
    # --- file access ------------------------------------------------------------------------------
    Attack(
        "file access",
        "river.stream.iter_csv",
        lambda m: Call(Global("builtins", "list"), Call(Global("river.stream", "iter_csv"), str(m))),
    ),  # fmt: skip
    Attack(
        "file access",
        "numpy.memmap",
        lambda m: Call(Global("numpy", "memmap"), str(m), "uint8", "w+", 0, (4,)),
        runs_code=True,
    ),  # fmt: skip
    Attack("file access", "numpy.load", lambda m: Call(Global("numpy", "load"), str(m))),
    Attack("file access", "numpy.fromfile", lambda m: Call(Global("numpy", "fromfile"), str(m))),
    Attack(
        "file access",
        "numpy.lib.format",
        lambda m: Call(Global("numpy.lib.format", "open_memmap"), str(m), "w+", "u1", (4,)),
        runs_code=True,
    ),  # fmt: skip
    Attack("file access", "io.open", lambda m: Call(Global("io", "open"), str(m), "w"), runs_code=True),
    Attack("file access", "builtins.open", lambda m: Call(Global("builtins", "open"), str(m), "w"), runs_code=True),
    Attack(
        "file access",
        "pathlib touch",
        lambda m: Call(Global("pathlib", "Path.touch"), Call(Global("pathlib", "Path"), str(m))),
        runs_code=True,
    ),  # fmt: skip
    Attack(
        "file access", "river dataset file", lambda m: Call(Global("river.datasets.base", "FileDataset"), str(m), "x")
    ),  # fmt: skip
    Attack(
        "file access",
        "dill loads file",
        lambda m: Call(Global("dill", "load"), Call(Global("io", "open"), str(m), "rb")),
    ),  # fmt: skip
    # --- calls of what did not come from the list ------------------------------------------------
    Attack(
        "unlisted callable", "bound method called", lambda m: Call(_getattr(_model(), "learn_one"), {"x": 1.0}, 1.0)
    ),  # fmt: skip
    Attack(
        "unlisted callable",
        "random method called",
        lambda m: Call(_getattr(Call(Global("random", "Random"), 1), "gauss"), 0, 1),
    ),  # fmt: skip
    Attack(
        "unlisted callable",
        "partial called",
        lambda m: Call(Call(Global("functools", "partial"), Global("river.linear_model", "LinearRegression"))),
    ),  # fmt: skip
    Attack(
        "unlisted callable",
        "named function called",
        lambda m: Call(Global("river.utils.math", "minkowski_distance"), {"a": 1}, {"a": 2}, 2),
    ),  # fmt: skip
    Attack("unlisted callable", "copy.deepcopy called", lambda m: Call(Global("copy", "deepcopy"), [1])),
    Attack(
        "unlisted callable",
        "Class.method called",
        lambda m: Call(Global("river.linear_model", "LinearRegression.learn_one"), _model(), {"x": 1.0}, 1.0),
    ),  # fmt: skip
    Attack(
        "unlisted callable", "instance called", lambda m: Call(New(Global("river.optim.initializers", "Zeros")), 3)
    ),  # fmt: skip
    Attack(
        "unlisted callable",
        "iter with a sentinel",
        lambda m: Call(Global("builtins", "iter"), Global("river.linear_model", "LinearRegression"), None),
    ),  # fmt: skip
    Attack(
        "unlisted callable",
        "defaultdict of exec",
        lambda m: Call(Global("collections", "defaultdict"), _getattr(Global("builtins", "str"), "format")),
    ),  # fmt: skip
    Attack("unlisted callable", "INST of eval", lambda m: Inst("builtins", "eval", _touch(m)), runs_code=True),
    Attack(
        "unlisted callable",
        "OBJ of os.system",
        lambda m: Obj(Global("os", "system"), f"touch '{m}'"),
        protocols=range(1, 6),
        runs_code=True,
    ),  # fmt: skip
    Attack(
        "unlisted callable", "INST of a river model", lambda m: Inst("river.anomaly", "HalfSpaceTrees", 1000000)
    ),  # fmt: skip
    Attack(
        "unlisted callable",
        "NEWOBJ_EX keywords",
        lambda m: New(Global("river.linear_model", "LinearRegression"), kwargs={"l2": 1.0}),
        protocols=range(4, 6),
    ),  # fmt: skip
    Attack(
        "unlisted callable",
        "copyreg reconstructor onto a function",
        lambda m: Call(
            Global("copyreg", "_reconstructor"),
            Global("river.linear_model", "LinearRegression"),
            Global("os", "system"),
            f"touch '{m}'",
        ),
    ),  # fmt: skip
    Attack(
        "unlisted callable",
        "dill create_array with exec",
        lambda m: Call(Global("dill._dill", "_create_array"), Global("builtins", "exec"), (_touch(m),), None),
        runs_code=True,
    ),  # fmt: skip
    # --- BUILD on what is not plain instance state ------------------------------------------------
    Attack(
        "BUILD state",
        "__reduce_ex__ of a model",
        lambda m: Build(
            _model(), {"__reduce_ex__": Call(Global("functools", "partial"), Global("os", "system"), f"touch '{m}'")}
        ),
    ),  # fmt: skip
    Attack(
        "BUILD state",
        "__class__ of a model",
        lambda m: Build(_model(), {"__class__": Global("river.linear_model", "LogisticRegression")}),
    ),  # fmt: skip
    Attack("BUILD state", "__dict__ of a model", lambda m: Build(_model(), {"__dict__": {}})),
    Attack(
        "BUILD state",
        "class state",
        lambda m: Build(
            Global("river.linear_model", "LinearRegression"), {"predict_one": Global("river.utils.math", "sigmoid")}
        ),
    ),  # fmt: skip
    Attack(
        "BUILD state",
        "class slot state",
        lambda m: Build(Global("river.linear_model", "LinearRegression"), (None, {"predict_one": None})),
    ),  # fmt: skip
    Attack(
        "BUILD state",
        "function state",
        lambda m: Build(Global("river.utils.math", "minkowski_distance"), {"__code__": None}),
    ),  # fmt: skip
    Attack(
        "BUILD state",
        "slot state through a property",
        lambda m: Build(_model(), (None, {"_multiclass": True, "__init__": None})),
    ),  # fmt: skip
    Attack("BUILD state", "non-string keys", lambda m: Build(_model(), {1: 2})),
    # --- parameters and steps that cost on every later request -----------------------------------
    Attack(
        "deferred cost",
        "RBFSampler with 5 million components",
        lambda m: Build(New(Global("river.feature_extraction", "RBFSampler")), {"n_components": 5_000_000, "seed": 1}),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "factorization machine with a million factors",
        lambda m: Build(New(Global("river.facto", "FMRegressor")), {"n_factors": 10**6}),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "HalfSpaceTrees height 40, cloned by an ensemble",
        lambda m: Build(
            New(Global("river.multiclass", "OneVsRestClassifier")),
            {"classifier": Build(New(Global("river.anomaly", "HalfSpaceTrees")), {"height": 40})},
        ),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "n-gram step of length 20000",
        lambda m: _text_model(_step("find_all_ngrams", (), {"ngram_range": [20000]})),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "n-gram range stepping to a billion",
        lambda m: _text_model(
            _step("find_all_ngrams", (), {"ngram_range": Call(Global("builtins", "range"), 1, 10**9, 10**8)})
        ),
    ),  # fmt: skip
    Attack("deferred cost", "find_ngrams of a million", lambda m: _text_model(_step("find_ngrams", (), {"n": 10**6}))),
    Attack(
        "deferred cost",
        "ReDoS tokenizer step",
        lambda m: _text_model(_step("tokenize_using_regex_pattern", (), {"pattern": "(a+)+$"})),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "quadratic tokenizer step",
        lambda m: _text_model(_step("tokenize_using_regex_pattern", (), {"pattern": r"\w+x"})),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "tokenizer step taking the text as its pattern",
        lambda m: _text_model(_step("tokenize_using_regex_pattern", ("(a+)+$",), {})),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "ReDoS tokenizer parameter, rebuilt by a clone",
        lambda m: Build(New(Global("river.feature_extraction", "BagOfWords")), {"tokenizer_pattern": "(x+x+)+y"}),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "n-gram parameter, rebuilt by a clone",
        lambda m: Build(New(Global("river.feature_extraction", "TFIDF")), {"ngram_range": (1, 5000)}),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "tokenizer with 1024 ways to try each position",
        lambda m: _text_model(_step("tokenize_using_regex_pattern", (), {"pattern": "\\w?" * 10 + "\\w{200}!"})),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "stop words as a range of 3 million",
        lambda m: _text_model(
            _step("remove_stop_words", (), {"stop_words": Call(Global("builtins", "range"), 3 * 10**6)})
        ),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "partial of a text step through NEWOBJ",
        lambda m: _text_model(
            New(
                Global("functools", "partial"),
                Global("river.feature_extraction.vectorize", "tokenize_using_regex_pattern"),
                "(a+)+$",
            )
        ),
        protocols=range(2, 6),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "nested ensembles whose prototypes clone 100**3 models",
        lambda m: Build(
            New(Global("river.ensemble", "BaggingClassifier")),
            {
                "n_models": 100,
                "model": Build(
                    New(Global("river.ensemble", "BaggingClassifier")),
                    {
                        "n_models": 100,
                        "model": Build(
                            New(Global("river.ensemble", "BaggingClassifier")),
                            {"n_models": 100, "model": New(Global("river.linear_model", "LogisticRegression"))},
                        ),
                    },
                ),
            },
        ),
    ),  # fmt: skip
    Attack(
        "deferred cost",
        "range of 10**12 as state",
        lambda m: Build(_model(), {"l2": Call(Global("builtins", "range"), 10**12)}),
    ),  # fmt: skip
    # --- Rust (pyo3) panics and malformed compiled state -----------------------------------------
    Attack(
        "Rust panic",
        "RsQuantile garbage state",
        lambda m: Build(New(Global("river._river_rust.stats", "RsQuantile"), 0.5), b"\xff" * 64),
    ),  # fmt: skip
    Attack(
        "Rust panic",
        "RsIQR truncated state",
        lambda m: Build(New(Global("river._river_rust.stats", "RsIQR"), 0.25, 0.75), b"\x01\x02"),
    ),  # fmt: skip
    Attack(
        "Rust panic",
        "AdaptiveWindowing huge length",
        lambda m: Build(
            New(Global("river._river_rust.drift", "AdaptiveWindowing"), 0.002, 32, 5, 5, 10), b"\xff" * 8 + b"\x00" * 64
        ),
    ),  # fmt: skip
    Attack(
        "Rust panic",
        "RsEWMean state of another type",
        lambda m: Build(New(Global("river._river_rust.stats", "RsEWMean"), 0.5), {"x": 1}),
    ),  # fmt: skip
    Attack(
        "Rust panic",
        "VectorDict of a string",
        lambda m: Call(Global("river._river_rust.vectordict", "VectorDict"), "abc", None, None, False),
    ),  # fmt: skip
    Attack(
        "Rust panic",
        "RsQuantile out-of-range q",
        lambda m: Build(New(Global("river._river_rust.stats", "RsQuantile"), 7.5), b""),
    ),  # fmt: skip
]


def _step(function: str, args: tuple, keywords: dict) -> Build:
    """A text model's preprocessing step: a partial of one of river's text functions, built as
    pickle builds partials (the function, then its arguments as state)."""
    func = Global("river.feature_extraction.vectorize", function)
    return Build(Call(Global("functools", "partial"), func), (func, args, keywords, None))


def _text_model(step: Build) -> Build:
    return Build(New(Global("river.feature_extraction", "BagOfWords")), {"processing_steps": [step]})


def _appends_to_model() -> Raw:
    """APPENDS onto a model: pickle would call ``model.extend`` (or ``append``), an attribute the
    upload can set to anything it built."""
    return _raw_after(b"(K\x01K\x02e")


def _setitems_to_model() -> Raw:
    """SETITEMS onto a model: pickle would call its ``__setitem__``."""
    return _raw_after(b"(K\x01K\x02u")


def _raw_after(opcodes: bytes) -> Raw:
    # A LinearRegression built with copyreg (any protocol), then the container opcode.
    return Raw(b"ccopyreg\n__newobj__\n(criver.linear_model\nLinearRegression\ntR" + opcodes)


def cases(marker: Path) -> Iterator[Case]:
    """Every attack in every protocol it exists in, by GLOBAL and (from protocol 4) STACK_GLOBAL."""
    for attack in ATTACKS:
        program = attack.program(marker)
        for protocol in attack.protocols:
            for stack_global in (False, True) if protocol >= 4 else (False,):
                yield Case(attack, protocol, stack_global, assemble(program, protocol, stack_global), marker)


def counts(marker: Path) -> Counter[str]:
    """The number of cases per attack class."""
    return Counter(case.attack.kind for case in cases(marker))


if __name__ == "__main__":
    for kind, count in counts(Path("/nonexistent/marker")).items():
        print(f"{kind}: {count}")
