"""The uncompressed kernel inside a bzImage, for PVH direct boot.

Under TCG, decompressing the kernel (xz, in Debian's) costs the guest seconds of emulated
work on every boot. QEMU boots an ELF vmlinux that carries a PVH entry note straight
away, so the image builder unpacks it once, here, when the kernel supports it.
"""

from __future__ import annotations

import lzma
import struct
import zlib

_ELF_MAGIC = b"\x7fELF"
_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def _notes(elf: bytes) -> list[tuple[bytes, int]]:
    """(name, type) of every ELF note of a 64-bit little-endian ELF file."""
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    found = []
    for index in range(phnum):
        header = phoff + index * phentsize
        p_type = struct.unpack_from("<I", elf, header)[0]
        if p_type != _PT_NOTE:
            continue
        offset, _, _, size = struct.unpack_from("<QQQQ", elf, header + 8)
        position, end = offset, offset + size
        while position + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, position)
            name = elf[position + 12 : position + 12 + namesz].rstrip(b"\0")
            found.append((name, note_type))
            position += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return found


def has_pvh_entry(elf: bytes) -> bool:
    if not elf.startswith(_ELF_MAGIC) or elf[4] != 2:  # 64-bit only
        return False
    return (b"Xen", _XEN_ELFNOTE_PHYS32_ENTRY) in _notes(elf)


def _decompress(bzimage: bytes) -> bytes | None:
    xz = bzimage.find(b"\xfd7zXZ\x00")
    if xz >= 0:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[xz:])
    gz = bzimage.find(b"\x1f\x8b\x08\x00")
    if gz >= 0:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bzimage[gz:])
    return None  # zstd, lz4, ...: not in the standard library; the bzImage boots anyway


def pvh_kernel(bzimage: bytes) -> bytes | None:
    """The vmlinux ELF inside `bzimage` if it can boot through PVH, else None."""
    try:
        elf = _decompress(bzimage)
    except (lzma.LZMAError, zlib.error):
        return None
    return elf if elf is not None and has_pvh_entry(elf) else None
