"""The AscendCL C interface as data, read from the headers in ``cabi/include/acl``.

The committed headers are the single source of truth for the C ABI: this module parses them into
:class:`Prototype` records (which library exports which call, with which C signature) and maps
every C type those calls use to an ABI-equivalent type cffi can declare without our headers
(:func:`abi_type`, :func:`abi_decl`, :func:`abi_prelude`). The bridge and the library builder
take their function lists and declarations from here, so a header edit reaches both.

The header contract this parser relies on: every exported call is one physical line
``[ACL_DEPRECATED | ACL_DEPRECATED_MESSAGE("...")] ACL_FUNC_VISIBILITY <ret> <name>(<params>);``.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable

__all__ = [
    "Param",
    "Prototype",
    "UnknownCType",
    "include_root",
    "header_paths",
    "prototypes",
    "by_name",
    "abi_type",
    "abi_decl",
    "by_value_structs",
    "abi_prelude",
    "constants",
    "error_codes",
]

log = logging.getLogger(__name__)

# Header (relative to the include root) -> library that exports its calls; the rest: ascendcl.
LIBRARY_OF_HEADER = {"acl/ops/acl_dvpp.h": "acl_dvpp", "acl/ops/acl_cblas.h": "acl_cblas"}
DEFAULT_LIBRARY = "ascendcl"
ERROR_CODE_HEADERS = (
    "acl/acl_base_rt.h",
    "acl/error_codes/rt_error_codes.h",
    "acl/error_codes/ge_error_codes.h",
)

# C scalar types kept as they are (cffi knows them all); bool is spelled the C99 way.
SCALAR_ABI = {
    name: name
    for name in (
        "void",
        "char",
        "signed char",
        "unsigned char",
        "short",
        "unsigned short",
        "int",
        "unsigned int",
        "long",
        "unsigned long",
        "long long",
        "unsigned long long",
        "float",
        "double",
        "size_t",
        "int8_t",
        "int16_t",
        "int32_t",
        "int64_t",
        "uint8_t",
        "uint16_t",
        "uint32_t",
        "uint64_t",
        "intptr_t",
        "uintptr_t",
    )
}
SCALAR_ABI.update({"unsigned": "unsigned int", "bool": "_Bool", "_Bool": "_Bool"})

PROTOTYPE_LINE = re.compile(
    r"^(?:(?P<dep>ACL_DEPRECATED(?:_MESSAGE\(\"(?P<msg>[^\"]*)\"\))?)\s+)?"
    r"ACL_FUNC_VISIBILITY\s+(?P<head>[^(]+?)\s*\((?P<params>.*)\);\s*$"
)
QUALIFIERS = re.compile(r"\b(?:const|volatile)\b")


class UnknownCType(ValueError):
    """A C type in a prototype that the headers do not define and that is not a C scalar."""


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: its name, its C type as the callee sees it, and its text as written.

    Arrays are given as the pointer they decay to (``int64_t dimsRange[][2]`` has type
    ``int64_t (*)[2]``). The variadic tail is ``Param(name="", type="...", decl="...")``.
    """

    name: str
    type: str
    decl: str


@dataclass(frozen=True, slots=True)
class Prototype:
    """One exported C call, as declared in ``header`` and exported by ``lib<library>.so``."""

    name: str
    ret: str
    params: tuple[Param, ...]
    header: str
    library: str
    deprecated: str | None = None  # the compiler message, "" for a bare ACL_DEPRECATED

    @property
    def variadic(self) -> bool:
        return bool(self.params) and self.params[-1].type == "..."

    def c_decl(self) -> str:
        """The declaration in the header's own types, without the export macro."""
        params = ", ".join(p.decl for p in self.params) or "void"
        sep = "" if self.ret.endswith("*") else " "
        return f"{self.ret}{sep}{self.name}({params})"


@dataclass(frozen=True, slots=True)
class Record:
    """A struct or union the headers define; ``body`` is None for an opaque (tag-only) one."""

    kind: str
    body: str | None


@dataclass(frozen=True, slots=True)
class HeaderTypes:
    """Every type name the headers define, by what it is."""

    enums: frozenset[str]
    records: dict[str, Record]
    aliases: dict[str, str]  # typedef name -> the C type it stands for
    int_macros: dict[str, int]


# ------------------------------------------------------------------------------------------- files


def include_root() -> Traversable:
    """The ``include`` directory holding ``acl/``; works installed and from a source tree."""
    return importlib.resources.files("cabi") / "include"


def _walk(node: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            yield from _walk(child, rel + "/")
        elif child.name.endswith(".h"):
            yield rel, child


def header_paths() -> list[str]:
    """Every header, relative to the include root (``acl/acl_rt.h``, ``acl/ops/acl_dvpp.h``...)."""
    return [rel for rel, _ in _walk(include_root(), "")]


@functools.cache
def _texts() -> dict[str, str]:
    return {rel: node.read_text(encoding="utf-8") for rel, node in _walk(include_root(), "")}


def _c_view(text: str) -> str:
    """The text a C compiler would parse: no comments, no C++-only blocks, no directives."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"#ifdef __cplusplus\n.*?#endif", " ", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


# -------------------------------------------------------------------------------------- prototypes


def _norm(c_type: str) -> str:
    """Canonical spelling: single spaces, ``T *`` and ``T **``, ``*const`` kept together."""
    t = re.sub(r"\s+", " ", c_type).strip()
    t = re.sub(r"\s*\*\s*", "*", t)
    t = re.sub(r"(?<=[\w)\]])\*", " *", t)
    t = re.sub(r"(?<=\w)\(", " (", t)
    return re.sub(r"\s+\)", ")", t)


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _parse_param(decl: str) -> Param:
    decl = re.sub(r"\s+", " ", decl).strip()
    if decl == "...":
        return Param("", "...", decl)
    pointer_to_function = re.search(r"\(\s*\*\s*(?:const\s+)?(\w+)\s*\)", decl)
    if pointer_to_function:
        name = pointer_to_function.group(1)
        start, end = pointer_to_function.span(1)
        return Param(name, _norm(decl[:start] + decl[end:]), decl)
    match = re.match(r"^(?P<base>.*?)(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]*\]\s*)*)$", decl)
    if not match or not match.group("base").strip():
        raise UnknownCType(f"unnamed or unparsable parameter {decl!r}")
    base, dims = match.group("base"), re.findall(r"\[[^\]]*\]", match.group("dims"))
    if not dims:
        c_type = base
    elif len(dims) == 1:
        c_type = base + " *"
    else:
        c_type = base + " (*)" + "".join(dims[1:])
    return Param(match.group("name"), _norm(c_type), decl)


def _parse_line(line: str, header: str) -> Prototype | None:
    match = PROTOTYPE_LINE.match(line.strip())
    if not match:
        return None
    head = re.match(r"^(?P<ret>.*?)(?P<name>[A-Za-z_]\w*)$", match.group("head"))
    if head is None:
        raise ValueError(f"{header}: cannot split return type and name in {line!r}")
    params_text = match.group("params").strip()
    params = (
        () if params_text in ("", "void") else tuple(map(_parse_param, _split_top(params_text)))
    )
    deprecated = None
    if match.group("dep"):
        deprecated = match.group("msg") if match.group("msg") is not None else ""
    return Prototype(
        name=head.group("name"),
        ret=_norm(head.group("ret")),
        params=params,
        header=header,
        library=LIBRARY_OF_HEADER.get(header, DEFAULT_LIBRARY),
        deprecated=deprecated,
    )


@functools.cache
def _prototypes() -> tuple[Prototype, ...]:
    found: list[Prototype] = []
    for header, text in _texts().items():
        for line in text.splitlines():
            proto = _parse_line(line, header)
            if proto is not None:
                found.append(proto)
            elif line.startswith("ACL_") and "ACL_FUNC_VISIBILITY" in line:
                raise ValueError(f"{header}: export line not in the one-line form: {line!r}")
    return tuple(found)


def prototypes() -> list[Prototype]:
    """Every exported call of every header, in header then line order."""
    return list(_prototypes())


@functools.cache
def by_name() -> dict[str, Prototype]:
    """Prototypes keyed by C name (names are unique across the headers)."""
    table: dict[str, Prototype] = {}
    for proto in _prototypes():
        if proto.name in table:
            raise ValueError(
                f"{proto.name} declared in {table[proto.name].header} and {proto.header}"
            )
        table[proto.name] = proto
    return table


# ------------------------------------------------------------------------------------------- types


def _typedef_statements(text: str) -> Iterator[str]:
    """Each ``typedef ...;`` statement (braces matched), whitespace collapsed."""
    for match in re.finditer(r"\btypedef\b", text):
        depth, i = 0, match.start()
        while i < len(text):
            ch = text[i]
            depth += ch == "{"
            depth -= ch == "}"
            if ch == ";" and depth == 0:
                break
            i += 1
        yield re.sub(r"\s+", " ", text[match.start() : i + 1])


def _int_value(text: str) -> int | None:
    text = text.strip().strip("()").strip()
    match = re.fullmatch(r"(-?)(0[xX][0-9a-fA-F]+|\d+)[uUlL]*", text)
    if not match:
        return None
    return int(match.group(1) + match.group(2), 0)


def _record_from(stmt: str, kind: str, enums: set[str], records: dict[str, Record]) -> None:
    braced = re.fullmatch(r"typedef (?:enum|struct|union) (?:\w+ )?\{(.*)\} ?(\w+) ?;", stmt)
    if braced is None:
        tagged = re.fullmatch(r"typedef (?:struct|union|enum) (\w+) (\w+) ?;", stmt)
        if tagged:  # opaque, or a typedef of a tag defined elsewhere
            if kind == "enum":
                enums.add(tagged.group(2))
            else:
                records.setdefault(tagged.group(2), Record(kind, None))
        return
    if kind == "enum":
        enums.add(braced.group(2))
    else:
        records[braced.group(2)] = Record(kind, braced.group(1).strip())


@functools.cache
def _types() -> HeaderTypes:
    enums: set[str] = set()
    records: dict[str, Record] = {}
    aliases: dict[str, str] = {}
    int_macros: dict[str, int] = {}
    for raw in _texts().values():
        for name, value in re.findall(r"^#define (\w+) (.+?)\s*$", raw, flags=re.M):
            if (number := _int_value(value)) is not None:
                int_macros[name] = number
        for stmt in _typedef_statements(_c_view(raw)):
            kind = re.match(r"typedef (enum|struct|union)\b", stmt)
            if kind:
                _record_from(stmt, kind.group(1), enums, records)
                continue
            funcptr = re.fullmatch(r"typedef (.+?)\( ?\* ?(\w+) ?\)(.*);", stmt)
            if funcptr:
                aliases[funcptr.group(2)] = _norm(f"{funcptr.group(1)}(*){funcptr.group(3)}")
                continue
            plain = re.fullmatch(r"typedef (.+?)(\w+) ?;", stmt)
            if plain:
                aliases[plain.group(2)] = _norm(plain.group(1))
    return HeaderTypes(frozenset(enums), records, aliases, int_macros)


def _base_name(c_type: str) -> str:
    name = QUALIFIERS.sub(" ", c_type)
    name = re.sub(r"\b(?:struct|union|enum)\b", " ", name)
    return re.sub(r"\s+", " ", name).strip()


def abi_type(c_type: str) -> str:
    """The ABI-equivalent type of ``c_type`` that cffi can declare without our headers.

    Pointers of any kind (handles, ``T *``, arrays, function pointers and the typedefs of all of
    these) are ``void *``; enums are ``int`` (every enumerator fits an int); ``aclError`` is
    ``int``, ``aclFloat16`` is ``uint16_t``, ``bool`` is ``_Bool``; other scalars are kept. A
    struct passed by value keeps its name: :func:`abi_prelude` defines it. Raises
    :class:`UnknownCType` for anything else.
    """
    t = _norm(c_type)
    if t == "...":
        return "..."
    if any(ch in t for ch in "*[("):
        return "void *"
    base = _base_name(t)
    if base in SCALAR_ABI:
        return SCALAR_ABI[base]
    types = _types()
    if base in types.enums:
        return "int"
    if base in types.aliases:
        return abi_type(types.aliases[base])
    record = types.records.get(base)
    if record is not None and record.body is not None:
        return base
    if record is not None:
        raise UnknownCType(f"{c_type!r} is opaque and cannot be passed by value")
    raise UnknownCType(f"{c_type!r} is neither a C scalar nor defined in the headers")


def _abi_param(param: Param) -> str:
    if param.type == "...":
        return "..."
    abi = abi_type(param.type)
    return f"{abi}{'' if abi.endswith('*') else ' '}{param.name}"


def abi_decl(proto: Prototype) -> str:
    """A full C declaration of ``proto`` in ABI types, e.g. ``int aclrtMalloc(void *devPtr, ...);``.

    Struct-by-value parameters use the names :func:`abi_prelude` defines.
    """
    ret = abi_type(proto.ret)
    params = ", ".join(_abi_param(p) for p in proto.params) or "void"
    return f"{ret}{'' if ret.endswith('*') else ' '}{proto.name}({params});"


def _by_value(c_type: str) -> str | None:
    abi = abi_type(c_type)
    return abi if abi in _types().records else None


def by_value_structs() -> list[str]:
    """Names of the structs (or unions) some call takes or returns by value, e.g. ``dim3``."""
    names = set()
    for proto in _prototypes():
        for c_type in [proto.ret, *(p.type for p in proto.params)]:
            if (name := _by_value(c_type)) is not None:
                names.add(name)
    return sorted(names)


def _abi_field(field: str, needed: list[str]) -> str:
    field = re.sub(r"^ACL_DEPRECATED(?:_MESSAGE\(\"[^\"]*\"\))?\s*", "", field.strip())
    match = re.fullmatch(r"(?P<type>.+?)(?P<name>\w+)\s*(?P<dims>(?:\[[^\]]*\]\s*)*)", field)
    if match is None or "{" in field:
        raise UnknownCType(f"cannot map struct field {field!r}")
    dims = ""
    for dim in re.findall(r"\[([^\]]*)\]", match.group("dims")):
        value = _int_value(dim)
        if value is None:
            value = _types().int_macros.get(dim.strip())
        if value is None:
            raise UnknownCType(f"array size {dim!r} of field {field!r} is not a known constant")
        dims += f"[{value}]"
    abi = abi_type(match.group("type"))
    if abi in _types().records and abi not in needed:
        needed.append(abi)
    return f"{abi}{'' if abi.endswith('*') else ' '}{match.group('name')}{dims};"


def abi_prelude() -> str:
    """cffi cdef text defining every by-value struct in ABI types (nested ones first)."""
    needed = by_value_structs()
    definitions: dict[str, str] = {}
    i = 0
    while i < len(needed):
        name = needed[i]
        record = _types().records[name]
        assert record.body is not None
        fields = [_abi_field(f, needed) for f in _split_top(record.body, ";")]
        definitions[name] = f"typedef {record.kind} {{ {' '.join(fields)} }} {name};"
        i += 1
    return "\n".join(definitions[name] for name in reversed(needed)) + "\n"


# --------------------------------------------------------------------------------------- constants


@functools.cache
def constants() -> dict[str, int]:
    """Every integer constant the headers define: enumerators, integer macros, static consts."""
    values: dict[str, int] = dict(_types().int_macros)
    for raw in _texts().values():
        text = _c_view(raw)
        for name, value in re.findall(r"static const \w+ (\w+) = (-?\w+);", text):
            if (number := _int_value(value)) is not None:
                values[name] = number
        for stmt in _typedef_statements(text):
            body = re.fullmatch(r"typedef enum (?:\w+ )?\{(.*)\} ?\w+ ?;", stmt)
            if body is None:
                continue
            for item in _split_top(body.group(1)):
                enumerator = re.fullmatch(
                    r"(\w+)(?: ACL_DEPRECATED\w*(?:\([^)]*\))?)? ?= ?(.+)", item
                )
                if enumerator and (number := _int_value(enumerator.group(2))) is not None:
                    values[enumerator.group(1)] = number
    return values


def error_codes() -> dict[str, int]:
    """The ACL error codes (``ACL_SUCCESS``, ``ACL_ERROR_*``, ``ACL_RT_SUCCESS``...) by name."""
    texts = _texts()
    names: set[str] = set()
    for header in ERROR_CODE_HEADERS:
        text = texts[header]
        names.update(re.findall(r"static const \w+ (\w+) =", text))
        names.update(re.findall(r"^#define (ACL\w*)\s+-?\d+", text, flags=re.M))
    values = constants()
    return {name: values[name] for name in sorted(names)}
