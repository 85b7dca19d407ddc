"""Kernel struct layouts and type ids from the running kernel's BTF (/sys/kernel/btf/vmlinux).

bcc compiles against whatever kernel headers are installed, which may belong to another
kernel (Debian's 6.1 headers on a 6.18 kernel here). So the eBPF program never takes a
struct offset from those headers: every offset it reads at comes from here, from the BTF
the running kernel describes itself with, and is passed to the compiler as a -D flag.
The tp_btf attach also needs the BTF id of each tracepoint's ``btf_trace_<name>`` typedef.

A small reader of the BTF format (Documentation/bpf/btf.rst): it indexes names once and
decodes only the types asked for. No library: it is a few dozen lines of struct.unpack.
"""

from __future__ import annotations

import struct

VMLINUX = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F

# kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_QUALIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BtfError(Exception):
    """The BTF cannot be read, or lacks what was asked; the message says which in one line."""


def _extra_bytes(kind: int, vlen: int) -> int:
    """Bytes that follow the 12-byte common header of a type of this kind."""
    if kind in (INT, VAR, DECL_TAG):
        return 4
    if kind == ARRAY:
        return 12
    if kind in (STRUCT, UNION, DATASEC, ENUM64):
        return 12 * vlen
    if kind in (ENUM, FUNC_PROTO):
        return 8 * vlen
    return 0


class Btf:
    """One BTF blob (vmlinux's): type ids and member offsets by name."""

    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BtfError("BTF data is truncated")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != MAGIC:
            raise BtfError("not BTF data (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self._where = [0]          # byte position of each type id's header; id 0 is void
        self._by_name: dict = {}   # (kind, name) -> first type id
        position, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        wanted = (STRUCT, UNION, TYPEDEF, FUNC)
        while position < end:
            name_off, info, _ = unpack(data, position)
            kind, vlen = info >> 24 & 0x1F, info & 0xFFFF
            self._where.append(position)
            if name_off and kind in wanted:
                self._by_name.setdefault((kind, self._string(name_off)), len(self._where) - 1)
            position += 12 + _extra_bytes(kind, vlen)

    @classmethod
    def load(cls, path: str = VMLINUX) -> "Btf":
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as exc:
            raise BtfError(f"cannot read the kernel's BTF at {path}: {exc.strerror}") from None

    def _string(self, offset: int) -> str:
        return self._strings[offset:self._strings.index(b"\0", offset)].decode()

    def _type(self, type_id: int):
        """(kind, name, vlen, kind_flag, size_or_type, position of the extra bytes)."""
        position = self._where[type_id]
        name_off, info, size_or_type = struct.unpack_from("<III", self._data, position)
        return (info >> 24 & 0x1F, self._string(name_off) if name_off else "", info & 0xFFFF,
                info >> 31, size_or_type, position + 12)

    def type_id(self, kind: int, name: str) -> int:
        try:
            return self._by_name[(kind, name)]
        except KeyError:
            raise BtfError(f"the kernel's BTF has no {_KIND_NAMES.get(kind, kind)} {name}") from None

    def _resolve(self, type_id: int) -> int:
        """Through typedefs and qualifiers to the type that has a layout."""
        while type_id and self._type(type_id)[0] in _QUALIFIERS:
            type_id = self._type(type_id)[4]
        return type_id

    def size(self, type_id: int) -> int:
        kind, _name, _vlen, _flag, size_or_type, extra = self._type(self._resolve(type_id))
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, count = struct.unpack_from("<III", self._data, extra)
            return count * self.size(elem)
        return size_or_type

    def _members(self, type_id: int):
        kind, _name, vlen, kind_flag, _size, extra = self._type(type_id)
        for i in range(vlen):
            name_off, member_type, offset = struct.unpack_from("<III", self._data, extra + 12 * i)
            bitfield = offset >> 24 if kind_flag else 0
            yield (self._string(name_off) if name_off else "", member_type,
                   offset & 0xFFFFFF if kind_flag else offset, bitfield)

    def _find_member(self, type_id: int, name: str):
        """(bit offset, member type) of ``name`` in a struct/union, looking into anonymous members."""
        for member, member_type, bit_offset, bitfield in self._members(type_id):
            if member == name:
                if bitfield:
                    raise BtfError(f"{name} is a bit field: it cannot be read at a byte offset")
                return bit_offset, member_type
            if not member:
                inner = self._resolve(member_type)
                if self._type(inner)[0] in (STRUCT, UNION):
                    found = self._find_member(inner, name)
                    if found is not None:
                        return bit_offset + found[0], found[1]
        return None

    def offset(self, struct_name: str, path: str) -> tuple:
        """(byte offset, byte size) of ``path`` ("a.b.c") inside ``struct struct_name``."""
        type_id = self.type_id(STRUCT, struct_name)
        bits, member_type = 0, type_id
        for part in path.split("."):
            container = self._resolve(member_type)
            if self._type(container)[0] not in (STRUCT, UNION):
                raise BtfError(f"struct {struct_name}: {part} is inside something that is not a struct")
            found = self._find_member(container, part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {path}")
            bits += found[0]
            member_type = found[1]
        if bits % 8:
            raise BtfError(f"struct {struct_name}.{path} does not start on a byte")
        return bits // 8, self.size(member_type)


_KIND_NAMES = {STRUCT: "struct", UNION: "union", TYPEDEF: "typedef", FUNC: "function"}
