"""gzip -c FILE on every CPU, for elements/dpkg/shims/pigz (pigz's way, written anew).

The file is cut into blocks, each deflated on its own thread (zlib lets go of the GIL)
with the 32 KiB before it as preset dictionary, every block but the last ended with a
sync flush so that the pieces join into one deflate stream; one gzip member around it
(no name, no time: like gzip -n). Decompressed, the output is the file, byte for byte.
Usage: pargzip.py [-1..-9] -c FILE  (anything else: exit 2, the shim runs gzip).
"""

import concurrent.futures
import os
import struct
import sys
import zlib

BLOCK = 1 << 20
WINDOW = 32 << 10


def deflate(level, block, dictionary, last):
    if dictionary:
        packer = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,
                                  dictionary)
    else:
        packer = zlib.compressobj(level, zlib.DEFLATED, -15)
    return packer.compress(block) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def compress(source, out, level=6, threads=None):
    threads = threads or os.cpu_count() or 1
    out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")  # gzip, deflate, no name/time, Unix
    crc = 0
    size = 0
    previous = b""
    block = source.read(BLOCK)
    pending = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        while True:
            following = source.read(BLOCK) if block else b""
            last = not following
            crc = zlib.crc32(block, crc)
            size += len(block)
            pending.append(pool.submit(deflate, level, block, previous[-WINDOW:], last))
            while len(pending) > 2 * threads or (last and pending):
                out.write(pending.pop(0).result())
            if last:
                break
            previous, block = block, following
    out.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))


def main(argv):
    level = 6
    args = list(argv)
    if args and len(args[0]) == 2 and args[0][0] == "-" and args[0][1] in "123456789":
        level = int(args.pop(0)[1])
    if len(args) != 2 or args[0] != "-c":
        return 2
    with open(args[1], "rb") as source:
        out = sys.stdout.buffer
        compress(source, out, level)
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
