"""A reader of CTranslate2's `model.bin` (the layout of ctranslate2/specs/model_spec.py `_serialize` and
src/models/model.cc `load`), without ctranslate2: the variables as float32 torch tensors.

Layout, little-endian: u32 binary version (CTranslate2 4.x writes 6); from version 2 the spec name (a string) and
u32 spec revision; u32 number of variables; per variable: its name (string), u8 rank, rank x u32 dims, then from
version 4 u8 dtype id (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16) and u32 byte count (before 4:
u8 item size and u32 item count), then the raw data; from version 3, u32 number of aliases, then per alias two
strings (alias, variable it names: a variable stored once for two names, such as a tied embedding). A string is
u16 length counting a closing NUL byte, then the bytes and the NUL.

Read here: versions 2 to 6; float32, float16 and bfloat16 weights become float32 tensors; small integer variables
(the spec's settings CTranslate2 stores as scalars, e.g. `decoder/activation` as int8) stay integer tensors.
Quantized weights (an int8 / int16 `.../weight` with its `..._scale`: `--quantization int8`) are refused in one line:
convert the model with `--quantization float16` or none.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from utils.errors import FileFormatError, MissingFileError

VERSIONS = range(2, 7)  # binary versions read here (6: CTranslate2 3.x and 4.x)
DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}


@dataclass
class CT2Model:
    """What model.bin holds: the spec name (e.g. WhisperSpec), its revision, the binary version, the variables
    (float32, aliases resolved to the tensor they name) and the alias table."""

    spec: str
    revision: int
    version: int
    variables: dict[str, Tensor]
    aliases: dict[str, str] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise FileFormatError(f"{self.path}: truncated CTranslate2 model.bin: {what} needs {n} byte(s) at offset "
                                  f"{self.pos}, the file ends at {len(self.data)}")
        out = self.data[self.pos: self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.u("H", f"the length of {what}")
        if n == 0:
            raise FileFormatError(f"{self.path}: {what} has length 0 at offset {self.pos - 2}; expected a "
                                  f"NUL-terminated string (a CTranslate2 model.bin)")
        return self.take(n, what)[:-1].decode("utf-8", errors="replace")


def read_model_bin(path: str | Path) -> CT2Model:
    """model.bin (or the folder holding it) -> CT2Model. A missing, truncated, quantized or unknown-version file is
    a one-line UserError naming the file and what was expected."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file; expected a CTranslate2 model folder holding model.bin "
                               f"(ct2-transformers-converter --output_dir writes one)")
    r = _Reader(path.read_bytes(), path)
    version = r.u("I", "the binary version")
    if version not in VERSIONS:
        raise FileFormatError(f"{path}: CTranslate2 binary version {version}; expected {VERSIONS.start} to "
                              f"{VERSIONS.stop - 1} (this is not a CTranslate2 model.bin, or one of a format this "
                              f"reader does not know)")
    spec, revision = r.string("the spec name"), r.u("I", "the spec revision")
    variables: dict[str, Tensor] = {}
    for _ in range(r.u("I", "the number of variables")):
        name = r.string("a variable name")
        rank = r.u("B", f"the rank of {name}")
        shape = [r.u("I", f"the shape of {name}") for _ in range(rank)]
        if version >= 4:
            type_id = r.u("B", f"the dtype of {name}")
            nbytes = r.u("I", f"the byte count of {name}")
        else:  # the item size alone: 4 was float32 (2 and 1: int16, int8)
            size = r.u("B", f"the item size of {name}")
            type_id = {4: 0, 2: 2, 1: 1}.get(size, -1)
            nbytes = r.u("I", f"the item count of {name}") * size
        if type_id not in DTYPES:
            raise FileFormatError(f"{path}: variable {name} has dtype id {type_id}; expected one of "
                                  f"{', '.join(f'{i} ({n})' for i, n in DTYPE_NAMES.items())}")
        if not DTYPES[type_id].is_floating_point and (name.endswith("weight") or name.endswith("_scale")):
            raise FileFormatError(f"{path}: variable {name} is {DTYPE_NAMES[type_id]}: a quantized model; expected "
                                  f"float32, float16 or bfloat16 weights (convert with --quantization float16)")
        dtype = DTYPES[type_id]
        count = 1
        for d in shape:
            count *= d
        if nbytes != count * dtype.itemsize:
            raise FileFormatError(f"{path}: variable {name} of shape {tuple(shape)} has {nbytes} bytes; expected "
                                  f"{count * dtype.itemsize} ({DTYPE_NAMES[type_id]})")
        raw = bytearray(r.take(nbytes, f"the data of {name}"))
        tensor = torch.frombuffer(raw, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
        tensor = tensor.reshape(shape)
        variables[name] = tensor.float() if tensor.is_floating_point() else tensor
    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(r.u("I", "the number of aliases")):
            alias = r.string("an alias")
            target = r.string(f"the variable alias {alias} names")
            if target not in variables:
                raise FileFormatError(f"{path}: alias {alias} names {target}, which the file does not hold")
            aliases[alias] = target
            variables[alias] = variables[target]
    return CT2Model(spec, revision, version, variables, aliases)


def write_model_bin(path: str | Path, spec: str, variables: dict[str, Tensor], *, revision: int = 1,
                    aliases: dict[str, str] | None = None, version: int = 6) -> Path:
    """Write variables in the layout above (version 6, float32 / float16 / bfloat16 as given): for tests and tools;
    CTranslate2 itself reads the result when `spec` is a spec it knows."""
    ids = {v: k for k, v in DTYPES.items()}
    path = Path(path)

    def string(s: str) -> bytes:
        b = s.encode("utf-8") + b"\0"
        return struct.pack("<H", len(b)) + b

    out = [struct.pack("<I", version), string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, t in variables.items():
        t = t.detach().contiguous().cpu()
        data = t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out += [string(name), struct.pack("<B", t.dim()), struct.pack(f"<{t.dim()}I", *t.shape),
                struct.pack("<B", ids[t.dtype]), struct.pack("<I", len(data)), data]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [string(alias), string(target)]
    path.write_bytes(b"".join(out))
    return path
