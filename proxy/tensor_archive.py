"""``torch.save``'s file format for one dense tensor, written directly.

Why: ``prompt_embeds`` on the wire is ``torch.save(tensor)`` (a zip archive:
a pickle that rebuilds the tensor, a few small records and the raw bytes).
``torch.save`` builds it with about 40 small writes, a pickler with Python
callbacks and a config lookup per record: 0.3 ms for a 30-token prompt on a
2-core VM, a large share of the proxy's own cost. The archive for a dense
tensor is always the same few records, so it is written here (0.02 ms;
the records around the data are cached per dtype and shape): byte for
byte what ``torch.save`` writes with ``compute_crc32=False`` (the test
suite compares the two), except for the random serialization id.
The tensor's bytes are never copied: they are one of the returned pieces.

Limits: a dense, contiguous CPU tensor whose archive stays under 4 GiB (no
zip64 records per entry); anything else goes through ``torch.save``.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import os
import pickle
import struct
import sys
import threading
from typing import SupportsIndex

import torch
from torch.utils.serialization import config as serialization_config

ALIGNMENT = 64  # torch aligns every record's data to 64 bytes (its ``.storage_alignment``)
_LIMIT = 0xFFFFFFFF - (1 << 20)  # keep every offset and size a 32-bit zip field
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_DESCRIPTOR = struct.Struct("<IIII")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")
_FLAGS = 0x0808  # sizes in a data descriptor after the data; UTF-8 names
_DATA = b"<data>"  # placeholders, split out of the cached skeleton
_ID = b"<id>"
ID_DIGITS = 40
_CRC32_TOGGLE = threading.Lock()
_STORAGE_TYPES = {dtype: getattr(torch, name) for dtype, name in torch.storage._dtype_to_storage_type_map().items()}


def tensor_archive(tensor: torch.Tensor) -> list[bytes | memoryview]:
    """The bytes of ``torch.save(tensor)`` as pieces; the tensor's own bytes are one of them, not copied.

    The tensor must stay alive (and unchanged) while the pieces are used.
    """
    if (
        tensor.dtype not in _STORAGE_TYPES
        or tensor.device.type != "cpu"
        or tensor.is_sparse
        or not tensor.is_contiguous()
        or not tensor.numel()  # torch writes no data record for an empty storage
        or tensor.nbytes > _LIMIT
    ):
        return [torch_save_archive(tensor)]
    data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]  # numpy stubs
    before_data, before_id, after_id = _skeleton(tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
    return [before_data, data, before_id, _serialization_id(), after_id]


def archive_nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int | None:
    """The size of :func:`tensor_archive` for a dense contiguous CPU tensor of this dtype and shape, before it exists.

    None where the direct writer would not be used (its size then depends on ``torch.save``).
    """
    numel = math.prod(shape)
    if dtype not in _STORAGE_TYPES or not numel or numel * dtype.itemsize > _LIMIT:
        return None
    stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
    return sum(map(len, _skeleton(dtype, tuple(shape), stride))) + numel * dtype.itemsize + ID_DIGITS


@functools.lru_cache(maxsize=1024)
def _skeleton(dtype: torch.dtype, shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[bytes, bytes, bytes]:
    """Everything but the tensor's bytes and the id, for one dtype and shape (prompts repeat lengths)."""
    numel = math.prod(shape)
    size = numel * dtype.itemsize
    records = [
        (b"archive/data.pkl", _pickle(dtype, numel, shape, stride)),
        (b"archive/.format_version", b"1"),
        (b"archive/.storage_alignment", str(ALIGNMENT).encode()),
        (b"archive/byteorder", sys.byteorder.encode()),
        (b"archive/data/0", _DATA),
        (b"archive/version", b"3\n"),
        (b"archive/.data/serialization_id", _ID),
    ]
    out: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for name, payload in records:
        length = {_DATA: size, _ID: ID_DIGITS}.get(payload, len(payload))
        header = _local_header(name, offset)
        out += (header, payload, _DESCRIPTOR.pack(0x08074B50, 0, length, length))
        central += (
            _CENTRAL.pack(0x02014B50, 0, 0, _FLAGS, 0, 0, 0, 0, length, length, len(name), 0, 0, 0, 0, 0, offset),
            name,
        )
        offset += len(header) + length + _DESCRIPTOR.size
    directory = b"".join(central)
    count = len(records)
    out.append(
        directory
        + _ZIP64_END.pack(0x06064B50, 44, 0x031E, 0x2D, 0, 0, count, count, len(directory), offset)
        + _ZIP64_LOCATOR.pack(0x07064B50, 0, offset + len(directory), 1)
        + _END.pack(0x06054B50, 0, 0, count, count, len(directory), offset, 0)
    )
    data_at, id_at = out.index(_DATA), out.index(_ID)
    return b"".join(out[:data_at]), b"".join(out[data_at + 1 : id_at]), b"".join(out[id_at + 1 :])


def _local_header(name: bytes, offset: int) -> bytes:
    """A local file header whose extra field ("FB" + "Z" padding) puts the data on a 64-byte boundary."""
    start = offset + _LOCAL.size + len(name) + 4
    padding = -start % ALIGNMENT
    extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
    return _LOCAL.pack(0x04034B50, 0, _FLAGS, 0, 0, 0, 0, 0, 0, len(name), len(extra)) + name + extra


class _Storage:
    """Stands for the tensor's storage in the pickle; becomes torch's persistent id."""


class _TensorPickle:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())``: torch's own."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args: tuple[object, ...] = (storage, 0, shape, stride, False, collections.OrderedDict())

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple:
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, storage: _Storage, storage_id: tuple) -> None:
        super().__init__(file, protocol=2)
        self.storage = storage
        self.storage_id = storage_id

    def persistent_id(self, obj: object) -> tuple | None:
        return self.storage_id if obj is self.storage else None


def _pickle(dtype: torch.dtype, numel: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    storage = _Storage()
    out = io.BytesIO()
    _Pickler(out, storage, ("storage", _STORAGE_TYPES[dtype], "0", "cpu", numel)).dump(
        _TensorPickle(storage, shape, stride)
    )
    return out.getvalue()


def _serialization_id() -> bytes:
    """Forty digits, fresh per archive: torch only logs it; a fixed one would link requests together."""
    return b"%040d" % (int.from_bytes(os.urandom(17)) % 10**ID_DIGITS)


def torch_save_archive(tensor: torch.Tensor) -> bytes:
    """``torch.save`` without the CRC32: the general path, for what the direct writer does not cover."""
    out = io.BytesIO()
    with _CRC32_TOGGLE:  # the setting is process-wide: two threads must not interleave their save/restore
        before = serialization_config.save.compute_crc32
        serialization_config.save.compute_crc32 = False
        try:
            torch.save(tensor, out)
        finally:
            serialization_config.save.compute_crc32 = before
    return out.getvalue()
