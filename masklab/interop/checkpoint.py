"""Reading other tools' files safely: `torch.load(weights_only=True)` with a short, explicit list of extra types.

A checkpoint is a pickle, and unpickling runs whatever callables the file names. torch's `weights_only`
unpickler allows only tensors, numbers, strings and containers; masklab adds exactly what the reference
codebases put in their checkpoint dicts and nothing else (SAFE_GLOBALS):

- `numpy._core.multiarray.scalar` (also under its numpy 1.x path `numpy.core.multiarray.scalar`), `numpy.dtype`
  and the numeric dtype classes (`numpy.dtypes.Float64DType`, ...): numpy scalars, e.g. a `best_acc1` or `epoch`
  kept as `np.float64` / `np.int64`;
- `argparse.Namespace`: the Biprop code's `args`, and `pathlib.PosixPath`, which such a Namespace holds
  (hidden-networks sets `args.ckpt_base_dir` to a path). Both only hold values: building one runs no code
  of the file's choosing.

Anything else (a pickled nn.Module, a function such as `os.system`) is refused before it is called, with
one line naming it. `.npz` files are read with `allow_pickle=False`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pathlib
import pickle
import re
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklab.errors import UserError

MAX_FILE_BYTES = 16 << 30  # a checkpoint larger than 16 GiB is not one of a supermask network


def safe_globals() -> list:
    """The extra globals a checkpoint may name (see the module docstring), in torch's safe-globals form."""
    scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
    dtypes = sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}, key=lambda t: t.__name__)
    return [(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes,
            argparse.Namespace, pathlib.PosixPath]


def check_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` as a Path if it is a readable regular file (a one-line UserError otherwise)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise UserError(f"{what} {path} is {st.st_size:,} bytes, more than the limit of {MAX_FILE_BYTES:,}")
    return path


def read_bytes(path: Path, what: str = "file") -> bytes:
    try:
        return check_file(path, what).read_bytes()
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read: {e.strerror or e}") from None


FILE_KINDS = {"npz": "an .npz file of numpy arrays", "torch": "a torch checkpoint (torch.save)",
              "zip": "a zip archive that is neither an .npz file nor a torch checkpoint",
              "other": "neither an .npz file nor a torch checkpoint"}


def file_kind(data: bytes) -> str:
    """What the bytes of an import file are, from their content (never from the name): "npz" (a zip whose
    entries are all .npy arrays), "torch" (torch.save's zip with its data.pkl, or a legacy pickle), "zip",
    "damaged" (a zip that cannot be opened: truncated) or "other" (see FILE_KINDS)."""
    import zipfile

    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "damaged"
        if all(name.endswith(".npy") for name in names):
            return "npz"
        if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return "torch"
        return "zip"
    if data[:1] == b"\x80" and len(data) > 1 and 2 <= data[1] <= 5:  # a pickle (torch's legacy format)
        return "torch"
    return "other"


def check_file_kind(path: Path, data: bytes, format: str, readable: str) -> None:
    """Refuse a file whose content is not what `format` reads (`readable`: "npz" or "torch"), saying what the
    file is instead and which format reads it: `import x.pt --format npz` names the checkpoint."""
    kind = file_kind(data)
    if kind == readable or kind in ("damaged", "other"):
        return  # (the reader names a damaged file, or what it is not, in its own words)
    instead = {"npz": "--format npz", "torch": "--format hidden-networks or --format torch-prune"}.get(kind)
    fix = f"import it with {instead}" if instead else "pass the file masklab exported or the checkpoint itself"
    raise UserError(f"{path} is {FILE_KINDS[kind]}, not what --format {format} reads ({FILE_KINDS[readable]}); "
                    f"{fix}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def load_torch(path: Path, data: bytes) -> Any:
    """Unpickle torch.save'd `data` (read from `path`) with weights_only=True and SAFE_GLOBALS, on CPU.
    A file that names any other callable is refused (UserError) and nothing of it runs."""
    try:
        with torch.serialization.safe_globals(safe_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (torch warns about pickle protocols; the error below says it all)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL_RE.search(str(e))
        culprit = (found.group(1) or found.group(2)) if found else ""
        named = f" (it names {culprit})" if culprit else ""
        hint = " save `model.state_dict()` instead of the model" if "torch.nn" in culprit else ""
        raise UserError(f"{path} is not a safe checkpoint{named}: masklab loads checkpoints with "
                        "torch.load(weights_only=True) and allows only tensors, numbers, strings, containers, numpy "
                        f"scalars and argparse.Namespace; refusing to unpickle it{';' + hint if hint else ''}"
                        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError, IndexError, KeyError,
            UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a torch checkpoint that torch.load can read "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def load_npz(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, in file order, with allow_pickle=False (object arrays are refused)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UserError(f"{path} holds object arrays (pickled Python objects); masklab reads .npz files with "
                            "allow_pickle=False: save plain numeric or boolean arrays") from None
        raise UserError(f"{path} is not a readable .npz file ({' '.join(str(e).split())[:200]})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})") from None


def plain(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of a small checkpoint value (numbers, strings, numpy scalars); None for tensors,
    containers deeper than one level and anything else."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value if not isinstance(value, str) or len(value) <= 200 else value[:200]
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (list, tuple)) and depth == 0 and len(value) <= 16:
        return [plain(v, 1) for v in value]
    return None


def attribute(obj: Any, key: str) -> Any:
    """`obj[key]` for a dict, `obj.key` for a Namespace, else None."""
    if isinstance(obj, dict):
        return obj.get(key)
    if isinstance(obj, argparse.Namespace):
        return getattr(obj, key, None)
    return None


def as_array(value: Any, key: str, path: Path) -> np.ndarray:
    """A tensor or array of a state dict as a numpy array (CPU), refusing anything else."""
    if isinstance(value, torch.Tensor):
        if value.is_sparse or value.layout != torch.strided:
            raise UserError(f"{path}: {key} is a sparse or non-strided tensor; save dense tensors")
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise UserError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
