"""Operation scripts: a plain-text list of syscalls and memory accesses.

One operation per line (the format is documented in ``docs/scripts.md``)::

    mmap    0 4M rw private noreserve   # anonymous private mapping at BASE
    touch   0 4M write                  # one store per 4 KiB page
    madvise 0 2M DONTNEED
    munmap  0 4M

Addresses are relative to a base (``DEFAULT_BASE``, the first address of an otherwise
empty 512 GiB slot), so the same script runs unchanged in the simulator (``run``) and on
the host kernel (``ptreclaim.kernel.run``); both return the same ``Result`` objects.
"""

from __future__ import annotations

import dataclasses
import errno as errno_module
import re
import signal
from dataclasses import dataclass, field
from typing import ClassVar

from . import constants as C
from .errors import BusError, SegmentationFault

__all__ = [
    "DEFAULT_BASE", "FIELDS", "SIGSEGV_ERRNO", "SIGBUS_ERRNO",
    "ScriptError", "ForkUnsupported",
    "FilesUnsupported",
    "Op", "Mmap", "Munmap", "Mprotect", "Mlock", "Munlock", "Madvise", "Touch", "Fork", "ForkP",
    "Mremap", "CreateFile", "Close",
    "Result", "parse", "parse_line", "load", "dumps", "run", "fork_depth", "errno_name",
    "format_number", "absolute",
]

# 32 TiB: 512 GiB-aligned, and no process maps anything there by default, so the first
# touch in a script allocates a PUD table as in the measured scenarios (linux-mm-semantics §14).
DEFAULT_BASE = 0x2000_0000_0000

# The /proc/<pid>/status fields (kB) every result carries.
FIELDS = ("VmPTE", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSize", "VmLck", "VmSwap")

# A touch that raises a signal reports minus the signal number as its errno: errnos are
# positive, and SIGSEGV (11) would otherwise be confused with EAGAIN (11).
SIGSEGV_ERRNO = -int(signal.SIGSEGV)
SIGBUS_ERRNO = -int(signal.SIGBUS)

_U64 = 1 << 64
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


class ScriptError(ValueError):
    """A malformed script line (or an operation that cannot be placed at the given base)."""

    def __init__(self, lineno, reason, filename=None):
        self.lineno = lineno
        self.reason = reason
        self.filename = filename
        where = f"line {lineno}" if filename is None else f"{filename}, line {lineno}"
        super().__init__(f"{where}: {reason}")


class ForkUnsupported(NotImplementedError):
    """The script forks, and the object it runs on has no ``fork()``."""


class FilesUnsupported(NotImplementedError):
    """The script has ``file`` lines, and the object it runs on has no
    ``machine.create_file()``."""


# --- operations -------------------------------------------------------------------------------

def format_number(n):
    """Compact, re-parsable spelling of a (possibly negative) byte count."""
    if n < 0:
        return "-" + format_number(-n)
    if n >= 1 << 63:
        return f"{n:#x}"
    if n == 0:
        return "0"
    parts = []
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            parts.append(f"{n // size}{unit}")
            n %= size
    if n:
        parts.append(str(n))
    return "+".join(parts)


def _fmt_prot(prot):
    if prot == 0:
        return "none"
    if 0 < prot <= 7:
        return "".join(ch for bit, ch in ((1, "r"), (2, "w"), (4, "x")) if prot & bit)
    return f"{prot:#x}" if prot > 0 else str(prot)


_ADVICE_NAMES = {}
for _name, _value in C.MADV_NAMES.items():
    _ADVICE_NAMES.setdefault(_value, _name[len("MADV_"):])


@dataclass(frozen=True)
class Op:
    """Base of the parsed operations. ``lineno`` is the script line (0 if built in code)."""

    keyword: ClassVar[str] = ""
    lineno: int = field(default=0, kw_only=True, compare=False)

    def __str__(self):
        return self.keyword


@dataclass(frozen=True)
class _Range(Op):
    addr: int     # relative to the base; may be negative
    length: int   # unsigned 64-bit (a negative script length is stored modulo 2**64)

    def __str__(self):
        return f"{self.keyword} {format_number(self.addr)} {format_number(self.length)}"


@dataclass(frozen=True)
class Mmap(_Range):
    keyword: ClassVar[str] = "mmap"
    prot: int = C.PROT_READ | C.PROT_WRITE
    shared: bool = False
    populate: bool = False
    locked: bool = False
    noreserve: bool = False
    fixed: bool = False
    file: str | None = None   # the name of a `file` line; None: anonymous
    offset: int = 0           # byte offset in the file, unsigned 64-bit

    @property
    def flags(self):
        """The ``flags`` argument of the mmap call."""
        f = C.MAP_SHARED if self.shared else C.MAP_PRIVATE
        if self.file is None:
            f |= C.MAP_ANONYMOUS
        # Without `fixed` the script still names the address: MAP_FIXED_NOREPLACE places the
        # mapping there or fails with EEXIST, never silently elsewhere or on top of something.
        f |= C.MAP_FIXED if self.fixed else C.MAP_FIXED_NOREPLACE
        for name, bit in _MMAP_FLAG_BITS.items():
            if getattr(self, name):
                f |= bit
        return f

    def __str__(self):
        words = [super().__str__(), _fmt_prot(self.prot), "shared" if self.shared else "private"]
        words += [name for name in _MMAP_FLAG_BITS if getattr(self, name)]
        words += ["fixed"] if self.fixed else []
        if self.file is not None:
            words.append(f"file={self.file}")
            if self.offset:
                words.append(f"off={format_number(self.offset)}")
        return " ".join(words)


_MMAP_FLAG_BITS = {"populate": C.MAP_POPULATE, "locked": C.MAP_LOCKED, "noreserve": C.MAP_NORESERVE}


@dataclass(frozen=True)
class Munmap(_Range):
    keyword: ClassVar[str] = "munmap"


@dataclass(frozen=True)
class Mprotect(_Range):
    keyword: ClassVar[str] = "mprotect"
    prot: int = 0

    def __str__(self):
        return f"{super().__str__()} {_fmt_prot(self.prot)}"


@dataclass(frozen=True)
class Mlock(_Range):
    keyword: ClassVar[str] = "mlock"


@dataclass(frozen=True)
class Munlock(_Range):
    keyword: ClassVar[str] = "munlock"


@dataclass(frozen=True)
class Madvise(_Range):
    keyword: ClassVar[str] = "madvise"
    advice: int = C.MADV_NORMAL

    def __str__(self):
        return f"{super().__str__()} {_ADVICE_NAMES.get(self.advice, self.advice)}"


@dataclass(frozen=True)
class Touch(_Range):
    keyword: ClassVar[str] = "touch"
    write: bool = False

    def __str__(self):
        return f"{super().__str__()} {'write' if self.write else 'read'}"


_MREMAP_FLAG_NAMES = (("maymove", C.MREMAP_MAYMOVE), ("fixed", C.MREMAP_FIXED),
                      ("dontunmap", C.MREMAP_DONTUNMAP))


def _fmt_mremap_flags(flags):
    known = 0
    names = []
    for name, bit in _MREMAP_FLAG_NAMES:
        if flags & bit:
            names.append(name)
            known |= bit
    if flags == 0 or flags & ~known:
        return str(flags) if 0 <= flags < 10 else f"{flags:#x}"
    return "|".join(names)


@dataclass(frozen=True)
class Mremap(_Range):
    """``mremap ADDR OLD_LEN NEW_LEN [FLAGS [NEW_ADDR]]``: ``length`` is OLD_LEN; ``new_addr``
    is relative to the base like ADDR, ``None`` when the line gives none (0 is passed)."""

    keyword: ClassVar[str] = "mremap"
    new_length: int = 0
    flags: int = 0
    new_addr: int | None = None

    def __str__(self):
        text = f"{super().__str__()} {format_number(self.new_length)} {_fmt_mremap_flags(self.flags)}"
        if self.new_addr is not None:
            text += f" {format_number(self.new_addr)}"
        return text


@dataclass(frozen=True)
class Fork(Op):
    """``fork``: the rest of the script runs in the child; the parent stays alive, idle."""

    keyword: ClassVar[str] = "fork"


@dataclass(frozen=True)
class ForkP(Op):
    """``forkp``: the rest runs in the parent; the idle child keeps its copy until the end."""

    keyword: ClassVar[str] = "forkp"


@dataclass(frozen=True)
class CreateFile(Op):
    """``file NAME SIZE [ro] [shmem] [uncached]``: create a file of SIZE bytes and open it
    in the running process (``O_RDONLY`` with ``ro``, else ``O_RDWR``).  A regular file on
    a disk file system, or with ``shmem`` a memfd; its pages are all in the page cache (a
    memfd: all written) unless ``uncached``."""

    keyword: ClassVar[str] = "file"
    name: str = ""
    size: int = 0
    ro: bool = False
    shmem: bool = False
    uncached: bool = False

    def __str__(self):
        words = [self.keyword, self.name, format_number(self.size)]
        words += [w for w in ("ro", "shmem", "uncached") if getattr(self, w)]
        return " ".join(words)


@dataclass(frozen=True)
class Close(Op):
    """``close NAME``: close the running process's descriptor of NAME (mappings stay)."""

    keyword: ClassVar[str] = "close"
    name: str = ""

    def __str__(self):
        return f"{self.keyword} {self.name}"


# --- parsing ----------------------------------------------------------------------------------

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_TOKEN = re.compile(
    r"(?P<num>0[xX][0-9a-fA-F_]+|[0-9][0-9_]*)(?P<unit>[kKmMgGtTpP]?)(?![0-9A-Za-z_])"
    r"|(?P<op>[-+*()])"
)


def _tokens(text):
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"unexpected {text[pos:]!r}")
        if m.group("num") is not None:
            digits = m.group("num")
            if digits.endswith("_") or "__" in digits:
                raise ValueError(f"bad number {m.group(0)!r}")
            out.append(int(digits, 0 if digits[:2].lower() == "0x" else 10) * _UNITS[m.group("unit").upper()])
        else:
            out.append(m.group("op"))
        pos = m.end()
    return out


def _expr(text):
    """Evaluate an integer expression: literals (decimal, 0x-hex, K/M/G/T/P suffix), + - * ( )."""
    toks = _tokens(text)
    if not toks:
        raise ValueError("empty number")
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def atom():
        t = peek()
        if t == "-":
            take()
            return -atom()
        if t == "+":
            take()
            return atom()
        if t == "(":
            take()
            v = add()
            if take_if(")"):
                return v
            raise ValueError("missing ')'")
        if isinstance(t, int):
            return take()
        raise ValueError("expected a number" + (f" before {t!r}" if t is not None else " at the end"))

    def take_if(t):
        if peek() == t:
            take()
            return True
        return False

    def mul():
        v = atom()
        while take_if("*"):
            v *= atom()
        return v

    def add():
        v = mul()
        while peek() in ("+", "-"):
            v = v + mul() if take() == "+" else v - mul()
        return v

    v = add()
    if pos != len(toks):
        raise ValueError(f"unexpected {toks[pos]!r}")
    return v


def _number(text, what):
    try:
        return _expr(text)
    except ValueError as e:
        raise ValueError(f"bad {what} {text!r}: {e}") from None


def _addr(text):
    v = _number(text, "ADDR")
    if not -_U64 < v < _U64:
        raise ValueError(f"ADDR {text!r} is out of range (|ADDR| must be below 2**64)")
    return v


def _length(text):
    v = _number(text, "LEN")
    # A negative length is what a C caller gets by passing (size_t)-n: store it modulo 2**64.
    if not -(1 << 63) <= v < _U64:
        raise ValueError(f"LEN {text!r} is out of range (-2**63 <= LEN < 2**64)")
    return v % _U64


def _c_int(text, what):
    try:
        v = int(text, 0)
    except ValueError:
        raise ValueError(f"bad {what} {text!r}") from None
    if not _INT_MIN <= v <= _INT_MAX:
        raise ValueError(f"{what} {text!r} does not fit a C int")
    return v


def _prot(text):
    t = text.lower()
    if t in ("none", "---"):
        return C.PROT_NONE
    if t[:1].isdigit() or t[:1] == "-" and t[1:2].isdigit():
        return _c_int(text, "PROT")
    bits = {"r": C.PROT_READ, "w": C.PROT_WRITE, "x": C.PROT_EXEC}
    prot = 0
    for ch in t:
        if ch == "-":
            continue
        if ch not in bits or prot & bits[ch]:
            raise ValueError(f"bad PROT {text!r} (use letters from 'rwx', 'none', or a number)")
        prot |= bits[ch]
    if not prot:
        raise ValueError(f"bad PROT {text!r}")
    return prot


def _advice(text):
    if text[:1].isdigit() or text[:1] == "-":
        return _c_int(text, "ADVICE")
    name = text.upper()
    if not name.startswith("MADV_"):
        name = "MADV_" + name
    if name not in C.MADV_NAMES:
        raise ValueError(f"unknown ADVICE {text!r}")
    return C.MADV_NAMES[name]


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


def _name(text):
    if not _NAME.match(text):
        raise ValueError(f"bad file NAME {text!r} (a letter or '_', then letters, digits, '_', '.', '-')")
    return text


def _offset(text):
    v = _number(text, "OFFSET")
    # As LEN: a negative offset is the unsigned value a C caller passes.
    if not -(1 << 63) <= v < _U64:
        raise ValueError(f"OFFSET {text!r} is out of range (-2**63 <= OFFSET < 2**64)")
    return v % _U64


def _parse_mmap(args):
    if len(args) < 4:
        raise ValueError("mmap needs ADDR LEN PROT KIND [populate] [locked] [noreserve] [fixed] "
                         "[file=NAME] [off=OFFSET]")
    kind = args[3].lower()
    if kind not in ("private", "shared"):
        raise ValueError(f"bad KIND {args[3]!r} (private or shared)")
    flags = {}
    for word in args[4:]:
        key, eq, value = word.partition("=")
        w = key.lower()
        if eq:
            if w not in ("file", "off"):
                raise ValueError(f"unknown mmap argument {word!r} (file=NAME, off=OFFSET)")
            w = "offset" if w == "off" else w
            if w in flags:
                raise ValueError(f"mmap argument {key}= given twice")
            flags[w] = _name(value) if w == "file" else _offset(value)
            continue
        if w not in ("populate", "locked", "noreserve", "fixed"):
            raise ValueError(f"unknown mmap flag {word!r} (populate, locked, noreserve, fixed)")
        if w in flags:
            raise ValueError(f"mmap flag {word!r} given twice")
        flags[w] = True
    if "offset" in flags and "file" not in flags:
        raise ValueError("off= needs file=NAME (anonymous mappings have no offset)")
    return Mmap(_addr(args[0]), _length(args[1]), _prot(args[2]), shared=kind == "shared", **flags)


def _parse_file(args):
    if len(args) < 2:
        raise ValueError("file needs NAME SIZE [ro] [shmem] [uncached]")
    name = _name(args[0])
    size = _number(args[1], "SIZE")
    if not 0 <= size < 1 << 63:
        raise ValueError(f"SIZE {args[1]!r} is out of range (0 <= SIZE < 2**63)")
    flags = {}
    for word in args[2:]:
        w = word.lower()
        if w not in ("ro", "shmem", "uncached"):
            raise ValueError(f"unknown file flag {word!r} (ro, shmem, uncached)")
        if w in flags:
            raise ValueError(f"file flag {word!r} given twice")
        flags[w] = True
    return CreateFile(name=name, size=size, **flags)


def _parse_close(args):
    if len(args) != 1:
        raise ValueError("close needs NAME")
    return Close(name=_name(args[0]))


def _parse_range(cls, usage):
    def parse(args):
        if len(args) != 2:
            raise ValueError(f"{cls.keyword} needs {usage}")
        return cls(_addr(args[0]), _length(args[1]))
    return parse


def _parse_mprotect(args):
    if len(args) != 3:
        raise ValueError("mprotect needs ADDR LEN PROT")
    return Mprotect(_addr(args[0]), _length(args[1]), _prot(args[2]))


def _parse_madvise(args):
    if len(args) != 3:
        raise ValueError("madvise needs ADDR LEN ADVICE")
    return Madvise(_addr(args[0]), _length(args[1]), _advice(args[2]))


def _parse_touch(args):
    if len(args) != 3:
        raise ValueError("touch needs ADDR LEN read|write")
    mode = args[2].lower()
    if mode not in ("read", "write", "r", "w"):
        raise ValueError(f"bad touch mode {args[2]!r} (read or write)")
    return Touch(_addr(args[0]), _length(args[1]), mode.startswith("w"))


def _mremap_flags(text):
    if text[:1].isdigit() or text[:1] == "-":
        try:
            v = int(text, 0)
        except ValueError:
            raise ValueError(f"bad FLAGS {text!r}") from None
        if not 0 <= v < _U64:
            raise ValueError(f"FLAGS {text!r} does not fit an unsigned long")
        return v
    flags = 0
    names = dict(_MREMAP_FLAG_NAMES)
    for word in text.lower().split("|"):
        if word not in names:
            raise ValueError(f"bad FLAGS {text!r} (maymove, fixed, dontunmap joined by '|', or a number)")
        flags |= names[word]
    return flags


def _parse_mremap(args):
    if not 3 <= len(args) <= 5:
        raise ValueError("mremap needs ADDR OLD_LEN NEW_LEN [FLAGS [NEW_ADDR]]")
    flags = _mremap_flags(args[3]) if len(args) > 3 else 0
    new_addr = _addr(args[4]) if len(args) > 4 else None
    return Mremap(_addr(args[0]), _length(args[1]), _length(args[2]), flags, new_addr)


def _parse_noargs(cls):
    def parse(args):
        if args:
            raise ValueError(f"{cls.keyword} takes no arguments")
        return cls()
    return parse


_PARSERS = {
    "mmap": _parse_mmap,
    "munmap": _parse_range(Munmap, "ADDR LEN"),
    "mprotect": _parse_mprotect,
    "mlock": _parse_range(Mlock, "ADDR LEN"),
    "munlock": _parse_range(Munlock, "ADDR LEN"),
    "madvise": _parse_madvise,
    "touch": _parse_touch,
    "mremap": _parse_mremap,
    "fork": _parse_noargs(Fork),
    "forkp": _parse_noargs(ForkP),
    "file": _parse_file,
    "close": _parse_close,
}


def parse_line(line, lineno=0, filename=None):
    """Parse one line; ``None`` for a blank or comment-only line. Raises ``ScriptError``."""
    words = line.split("#", 1)[0].split()
    if not words:
        return None
    keyword = words[0].lower()
    parser = _PARSERS.get(keyword)
    try:
        if parser is None:
            raise ValueError(f"unknown operation {words[0]!r} (expected one of {', '.join(_PARSERS)})")
        op = parser(words[1:])
    except ValueError as e:
        raise ScriptError(lineno, str(e), filename) from None
    return dataclasses.replace(op, lineno=lineno)


def parse(text, filename=None):
    """Parse a whole script; returns the list of operations."""
    ops = []
    for lineno, line in enumerate(text.splitlines(), 1):
        op = parse_line(line, lineno, filename)
        if op is not None:
            ops.append(op)
    check_names(ops, filename)
    return ops


def check_names(ops, filename=None):
    """Every ``file=NAME`` and ``close NAME`` names a file an earlier ``file`` line created,
    and no two ``file`` lines create the same NAME (``ScriptError`` otherwise)."""
    seen = set()
    for op in ops:
        if isinstance(op, CreateFile):
            if op.name in seen:
                raise ScriptError(op.lineno, f"file {op.name!r} is created twice", filename)
            seen.add(op.name)
        elif isinstance(op, Close) or isinstance(op, Mmap) and op.file is not None:
            name = op.name if isinstance(op, Close) else op.file
            if name not in seen:
                raise ScriptError(op.lineno, f"no earlier 'file {name} ...' line creates {name!r}", filename)


def load(path):
    """Parse a script file; errors name the file and the line."""
    with open(path, encoding="utf-8") as f:
        return parse(f.read(), filename=str(path))


def dumps(ops):
    """The canonical text of a list of operations (``parse(dumps(ops)) == ops``)."""
    return "".join(f"{op}\n" for op in ops)


def _as_ops(script):
    if isinstance(script, str):
        return parse(script)
    ops = list(script)
    for op in ops:
        if not isinstance(op, Op):
            raise TypeError(f"not a script operation: {op!r}")
    check_names(ops)
    return ops


def fork_depth(ops):
    """How many ``fork`` operations (each moves the script into a new child) the script has."""
    return sum(isinstance(op, Fork) for op in ops)


def absolute(op, base):
    """``base + op.addr``, checked to be an unsigned 64-bit address."""
    a = base + op.addr
    if not 0 <= a < _U64:
        raise ScriptError(op.lineno, f"base {base:#x} + ADDR {op.addr:#x} is not a 64-bit address")
    return a


def absolute_new_addr(op, base):
    """The ``new_addr`` argument of an ``mremap``: ``base + NEW_ADDR``, or 0 when none is given."""
    if op.new_addr is None:
        return 0
    a = base + op.new_addr
    if not 0 <= a < _U64:
        raise ScriptError(op.lineno, f"base {base:#x} + NEW_ADDR {op.new_addr:#x} is not a 64-bit address")
    return a


# --- results ----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Result:
    """What one operation did, in the simulator or on the host kernel.

    ``errno``: 0 on success, Linux's errno on failure, ``SIGSEGV_ERRNO`` (-11) or
    ``SIGBUS_ERRNO`` (-7) when a touch raised that signal; ``fault`` is then the absolute
    address of the access that faulted (``ADDR`` itself in the first page, the start of the
    page after it; the pages before it were accessed).
    ``status``: the ``FIELDS`` of /proc/<pid>/status (kB) after the operation.
    ``baseline``: the same fields before the script's first operation, in the process the
    operation ran in (after a ``fork``: a child forked from the process before its first
    operation), so ``delta`` is what the script alone accounts for.
    ``ret``: the address mmap or mremap returned (absolute), else ``None``.
    ``depth``: how many ``fork`` operations led to the process that ran the operation.
    """

    op: Op
    errno: int
    status: dict
    baseline: dict
    fault: int | None = None
    ret: int | None = None
    depth: int = 0

    @property
    def delta(self):
        """``status - baseline`` per field (``None`` where the kernel does not show a field)."""
        return {
            k: None if self.status.get(k) is None or self.baseline.get(k) is None
            else self.status[k] - self.baseline[k]
            for k in FIELDS
        }

    def __repr__(self):
        extra = f", fault={self.fault:#x}" if self.fault is not None else ""
        return f"Result({str(self.op)!r}, errno={errno_name(self.errno)}{extra}, delta={self.delta})"


def errno_name(e):
    """``0``, ``ENOMEM``, ``SIGSEGV``...: a readable name for a ``Result.errno``."""
    import errno as _errno

    if e == 0:
        return "0"
    if e < 0:
        try:
            return signal.Signals(-e).name
        except ValueError:
            return f"signal {-e}"
    return _errno.errorcode.get(e, str(e))


# --- running on the simulator ----------------------------------------------------------------

def _status(mm):
    st = mm.status()
    return {k: st.get(k) for k in FIELDS}


def _apply(mm, op, base, fds=None):
    """Run one operation on an object with the api.md methods: ``(errno, fault, ret)``.

    ``fds`` maps the script's file names to the descriptors of the running process
    (``None`` once closed); ``file`` and ``close`` lines update it."""
    if isinstance(op, (CreateFile, Close)):
        return _apply_file(mm, op, fds), None, None
    a = absolute(op, base)
    try:
        if isinstance(op, Mmap):
            if op.file is not None:
                # A closed name passes -1, which every mmap of a file rejects with EBADF
                # (the number it had may belong to a newer file by now).
                fd = fds.get(op.file) if fds is not None else None
                return 0, None, mm.mmap(a, op.length, op.prot, op.flags, -1 if fd is None else fd, op.offset)
            return 0, None, mm.mmap(a, op.length, op.prot, op.flags)
        if isinstance(op, Mremap):
            return 0, None, mm.mremap(a, op.length, op.new_length, op.flags, absolute_new_addr(op, base))
        if isinstance(op, Touch):
            mm.touch(a, op.length, write=op.write)
        elif isinstance(op, Munmap):
            mm.munmap(a, op.length)
        elif isinstance(op, Mprotect):
            mm.mprotect(a, op.length, op.prot)
        elif isinstance(op, Mlock):
            mm.mlock(a, op.length)
        elif isinstance(op, Munlock):
            mm.munlock(a, op.length)
        elif isinstance(op, Madvise):
            mm.madvise(a, op.length, op.advice)
        else:
            raise TypeError(f"cannot run {op!r}")
    except SegmentationFault as e:
        return SIGSEGV_ERRNO, e.address, None
    except BusError as e:
        return SIGBUS_ERRNO, e.address, None
    except OSError as e:
        return e.errno, None, None
    return 0, None, None


def _apply_file(mm, op, fds):
    try:
        if isinstance(op, CreateFile):
            f = mm.machine.create_file(op.size, shmem=op.shmem, cached=not op.uncached)
            fds[op.name] = mm.open(f, write=not op.ro)
        else:
            fd = fds.get(op.name)
            if fd is None:
                return errno_module.EBADF  # close(-1), as the host runner does
            fds[op.name] = None
            mm.close(fd)
    except OSError as e:
        return e.errno
    return 0


def run(script, mm, base=DEFAULT_BASE):
    """Run ``script`` (text or a list of operations) on ``mm``; one ``Result`` per operation.

    ``mm`` is anything with the methods of ``docs/api.md`` (``ptreclaim.MM``). ``fork`` and
    ``forkp`` need ``mm.fork()`` returning the child's MM; without it ``ForkUnsupported`` is
    raised before anything runs.
    """
    ops = _as_ops(script)
    if not isinstance(base, int) or not 0 <= base < _U64:
        raise ValueError(f"base must be an unsigned 64-bit int, not {base!r}")
    forks = [op for op in ops if isinstance(op, (Fork, ForkP))]
    if forks and not hasattr(mm, "fork"):
        raise ForkUnsupported(
            f"line {forks[0].lineno}: '{forks[0]}' needs fork(), which this simulator does not "
            "have yet; run the script on the host kernel (ptreclaim.kernel.run) instead"
        )
    files = [op for op in ops if isinstance(op, CreateFile)]
    if files and not hasattr(getattr(mm, "machine", None), "create_file"):
        raise FilesUnsupported(
            f"line {files[0].lineno}: '{files[0]}' needs machine.create_file(), which this "
            "simulator does not have yet; run the script on the host kernel (ptreclaim.kernel.run) instead"
        )
    for op in ops:
        if isinstance(op, Mremap):
            absolute_new_addr(op, base)
        if isinstance(op, _Range):
            a = absolute(op, base)
            # Accesses are made one page at a time; there is no syscall to reject a range
            # that runs past the top of the address space.
            if isinstance(op, Touch) and a + op.length > _U64:
                raise ScriptError(op.lineno, f"'{op}' runs past the end of the 64-bit address space")

    # The baseline of depth k is a process forked k times from the one before the script
    # started, so a child's deltas count the script's memory alone (as on the kernel).
    baselines = [_status(mm)]
    calib = mm
    for _ in range(fork_depth(ops)):
        calib = calib.fork()
        baselines.append(_status(calib))

    idle = []  # processes a fork left behind keep their copies until the end
    # The running process's descriptors by file name.  A fork copies the descriptor table,
    # with the same numbers, so the process that goes on keeps using this one.
    fds = {}
    depth = 0
    results = []
    for op in ops:
        fault = ret = None
        if isinstance(op, (Fork, ForkP)):
            child = mm.fork()
            if isinstance(op, Fork):
                idle.append(mm)
                mm = child
                depth += 1
            else:
                idle.append(child)
            err = 0
        else:
            err, fault, ret = _apply(mm, op, base, fds)
        results.append(Result(op, err, _status(mm), baselines[depth], fault, ret, depth))
    return results
