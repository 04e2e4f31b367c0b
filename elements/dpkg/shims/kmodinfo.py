"""The answers of ``modinfo -k VERSION -F firmware MODULE`` for every module of a kernel,
for elements/dpkg/shims/mkinitramfs-paths.sh (run on the image's python3; never in the
image).

initramfs-tools asks modinfo, one program each, for the firmware of every module it
copies (some 750 for a stock kernel, about 2 ms each). modinfo prints the value of every
``firmware=`` string of the module's ``.modinfo`` ELF section, one a line, in their
order. This reads the same section of every uncompressed ``*.ko`` file under
MODULES_DIR (directories that are symlinks not followed) and writes, for each one it
could read, ANSWERS_DIR/<the path below MODULES_DIR> holding exactly those lines (an
empty file: no firmware). A module it cannot read has no file there, and modinfo itself
answers for it. Usage: kmodinfo.py MODULES_DIR ANSWERS_DIR (exit 2 on bad usage).
"""

import os
import struct
import sys

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
HEADER = struct.Struct("<16xHHIQQQIHHHHHH")  # the ELF64 header after e_ident
SECTION = struct.Struct("<IIQQQQIIQQ")  # one ELF64 section header
MAX_SECTION = 16 << 20


class NotAModule(Exception):
    """The file is not an ELF64 little-endian module with a .modinfo section as expected."""


def read_at(source, offset, size):
    if size < 0 or size > MAX_SECTION:
        raise NotAModule("section size out of bounds")
    source.seek(offset)
    data = source.read(size)
    if len(data) != size:
        raise NotAModule("truncated")
    return data


def modinfo_section(source):
    """The bytes of the module's ``.modinfo`` section (the first of that name)."""
    ident = source.read(64)
    if len(ident) < 64 or ident[:4] != ELF_MAGIC or ident[4] != ELFCLASS64 \
            or ident[5] != ELFDATA2LSB:
        raise NotAModule("not ELF64 little-endian")
    fields = HEADER.unpack(ident)
    shoff, shentsize, shnum, shstrndx = fields[5], fields[10], fields[11], fields[12]
    if shentsize != SECTION.size or not 0 < shnum < 65280 or shstrndx >= shnum:
        raise NotAModule("unexpected section table")
    table = read_at(source, shoff, shentsize * shnum)
    sections = [SECTION.unpack_from(table, i * shentsize) for i in range(shnum)]
    names_header = sections[shstrndx]
    names = read_at(source, names_header[4], names_header[5])
    for header in sections:
        start = header[0]
        end = names.find(b"\0", start)
        if 0 <= start < len(names) and end >= 0 and names[start:end] == b".modinfo":
            return read_at(source, header[4], header[5])
    raise NotAModule("no .modinfo section")


def firmware_lines(section):
    """modinfo -F firmware's output for a module with this .modinfo section."""
    values = []
    for entry in section.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key == b"firmware":
            values.append(value + b"\n")
    return b"".join(values)


def answer(path, target):
    try:
        with open(path, "rb") as source:
            lines = firmware_lines(modinfo_section(source))
    except (OSError, NotAModule, struct.error):
        return  # modinfo itself answers for this one
    with open(target, "wb") as out:
        out.write(lines)


def write_answers(modules, answers):
    for directory, _, files in os.walk(modules):  # does not descend into symlinked dirs
        mirror = os.path.join(answers, os.path.relpath(directory, modules))
        for name in files:
            path = os.path.join(directory, name)
            if name.endswith(".ko") and os.path.isfile(path) and not os.path.islink(path):
                os.makedirs(mirror, exist_ok=True)
                answer(path, os.path.join(mirror, name))


def main(argv):
    if len(argv) != 2 or not os.path.isdir(argv[0]) or not os.path.isdir(argv[1]):
        return 2
    write_answers(argv[0], argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
