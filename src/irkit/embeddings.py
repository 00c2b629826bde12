"""Gallery image embeddings: parallel decoding, batched inference and an on-disk cache.

:func:`encode_image_files` returns ``[N, D]`` float32 L2-normalised rows in the order of
``paths`` (with ``normalize=False``: the image tower's raw output as float32). Work is split
into batches handled by DataLoader worker processes:

- on CPU, each worker decodes its batch (PIL open -> RGB -> the model's preprocess) *and*
  runs the image tower on it with one torch thread: data-parallel inference. On few cores this
  beats one process running the model with several threads while others decode: intra-op
  threads synchronise at every layer, so any decoding (or any other program) that preempts
  one of them stalls all of them, and small per-thread batches stay in cache. (Forked
  workers must stay single-threaded: GNU OpenMP hangs in a child forked after the parent
  used its thread pool.) The workers share the model's weights copy-on-write.
- on an accelerator, workers only decode; the main process runs the model.
- with ``num_workers=0`` everything runs in the main process with ``num_threads()`` threads.

Cache: ``<cache_dir>/<key>.npy`` + ``<key>.json``. The key is a hash of everything that
changes the result: model name, weights id (checkpoint content hash / pretrained tag /
random-init seed), precision, transform config (incl. image size), the image reader (EXIF
orientation on/off, pixel limit), the ordered list of (absolute path, size, BLAKE2b-128 of the
file's bytes), normalised or raw (``kind``: ``image_embeddings`` or ``image_features_raw``)
and :data:`CACHE_FORMAT_VERSION`. Content, not mtime: a file rewritten at the same size with
its mtime kept (``cp -p``, ``rsync -t``, tar) gets a new key. The json stores that key material,
the sha256 of the npy bytes, shape and dtype; a cached array is used only when all of them
match, otherwise (e.g. a truncated or corrupt file) it is recomputed with a warning. Embeddings
are checked to be finite where they are computed (a NaN/Inf names the model's weights) and
where a cache entry is read (a NaN/Inf names the cached file).
Normalised and raw entries are kept apart rather than normalising cached raw rows on read:
that is bit-identical on CPU, but on an accelerator the encoder normalises on the device, so
rows normalised on read could differ in the last bit from today's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from irkit.errors import InputError
from irkit.finite import require_finite
from irkit.io import atomic_write_bytes, atomic_write_json, stable_hash
from irkit.transforms import USER_FOLDER_READER, ImageReader

if TYPE_CHECKING:  # pragma: no cover
    from irkit.models import LoadedModel

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: content hashes instead of mtimes; the image reader in the key
NUM_THREADS_ENV = "IRKIT_NUM_THREADS"


def num_threads() -> int:
    """Torch intra-op threads for inference: ``$IRKIT_NUM_THREADS``, else the usable CPU count."""
    value = os.environ.get(NUM_THREADS_ENV)
    if value:
        try:
            if int(value) > 0:
                return int(value)
        except ValueError:
            pass
        raise InputError(f"{NUM_THREADS_ENV} must be a positive integer, got '{value}'", field=NUM_THREADS_ENV)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(count: Optional[int] = None) -> Iterator[int]:
    """Set torch's intra-op thread count for a block (default :func:`num_threads`), then restore."""
    count = count or num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- decoding

def encode_pixels(loaded: "LoadedModel", pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``[B, 3, S, S]`` preprocessed pixels -> ``[B, D]`` float32 on ``loaded.device``, no grad.

    ``normalize=True``: L2-normalised rows (:meth:`LoadedModel.encode_images`); ``False``: the
    image tower's output (``model.encode_image``) cast to float32.
    """
    if normalize:
        return loaded.encode_images(pixels)
    with torch.no_grad():
        return loaded.model.encode_image(pixels.to(loaded.device, loaded.input_dtype)).float()


class ImageBatches(Dataset):
    """Item b = ``(first row, result, errors)`` for the images ``[b*B, (b+1)*B)``.

    ``result`` is the ``[n, D]`` float32 embeddings (:func:`encode_pixels` with ``normalize``)
    when ``encode`` is set, else the ``[n, 3, S, S]`` preprocessed pixels. Errors (undecodable
    images) are returned as ``[(row, message)]`` rather than raised, so the main process can
    raise one clean InputError naming the file (a worker's exception would arrive wrapped in a
    traceback).
    """

    def __init__(self, loaded: "LoadedModel", paths: Sequence[Path], batch_size: int, encode: bool,
                 normalize: bool = True, reader: ImageReader = USER_FOLDER_READER) -> None:
        self.loaded, self.paths, self.batch_size, self.encode = loaded, list(paths), batch_size, encode
        self.normalize, self.reader = normalize, reader

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getitem__(self, batch: int) -> tuple[int, Any, list[tuple[int, str]]]:
        first = batch * self.batch_size
        pixels, errors = [], []
        for row in range(first, min(first + self.batch_size, len(self.paths))):
            try:
                pixels.append(self.loaded.preprocess(self.reader.open(self.paths[row])))
            except InputError as e:  # over the pixel limit: the reader's own line
                errors.append((row, f"{INPUT_ERROR_MARK}{e.detail}"))
            except Exception as e:  # undecodable, truncated, not an image ...
                errors.append((row, f"{type(e).__name__}: {e}"))
        if errors:
            return first, None, errors
        stacked = torch.stack(pixels)
        if not self.encode:
            return first, stacked, []
        with torch.inference_mode():
            return first, encode_pixels(self.loaded, stacked, self.normalize).cpu().numpy(), []


class ImageFileDataset(Dataset):
    """Item i = ``(i, pixels [3, S, S] or None, error message or None)`` — one image at a time,
    for callers that run their own model pass (unnormalised features, patch tokens)."""

    def __init__(self, paths: Sequence[Path], preprocess: Any, reader: ImageReader = USER_FOLDER_READER) -> None:
        self.paths, self.preprocess, self.reader = list(paths), preprocess, reader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Optional[torch.Tensor], Optional[str]]:
        try:
            return index, self.preprocess(self.reader.open(self.paths[index])), None
        except InputError as e:  # over the pixel limit: the reader's own line
            return index, None, f"{INPUT_ERROR_MARK}{e.detail}"
        except Exception as e:  # undecodable, truncated, not an image ...
            return index, None, f"{type(e).__name__}: {e}"


#: Prefix of a worker's error message that is already a complete InputError detail.
INPUT_ERROR_MARK = "input-error:"


def decode_error(path: Path, message: str) -> InputError:
    """The one-line InputError for a worker's error ``message`` about the image at ``path``."""
    if message.startswith(INPUT_ERROR_MARK):
        return InputError(message[len(INPUT_ERROR_MARK):], path=path)
    return InputError(f"cannot decode image ({message}); expected a readable image file", path=path)


def collate_decoded(items: list[tuple[int, Optional[torch.Tensor], Optional[str]]]):
    """``(indices, stacked pixels or None, [(index, error)])`` of :class:`ImageFileDataset` items."""
    errors = [(i, err) for i, _, err in items if err is not None]
    indices = torch.tensor([i for i, _, _ in items], dtype=torch.long)
    pixels = None if errors else torch.stack([t for _, t, _ in items])
    return indices, pixels, errors


def _unchanged(item: Any) -> Any:
    return item


#: Bytes read at a time when hashing a file's content.
HASH_CHUNK = 1 << 20


def content_hash(path: Path) -> str:
    """BLAKE2b-128 hex digest of the file's bytes (the content part of a cache key)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprints(paths: Sequence[Path]) -> list[list[Any]]:
    """``[absolute path, size, BLAKE2b-128 of the bytes]`` per file; a missing file raises InputError.

    Content, not mtime: a file changed at the same size with its mtime kept gets another
    fingerprint (cost: one read of each file per call; bench/bench_cache_hash.py measures it
    against decoding).
    """
    fingerprints = []
    for path in paths:
        absolute = Path(os.path.abspath(path))
        try:
            st = absolute.stat()
            if not absolute.is_file():
                raise InputError("expected an image file, found a directory or special file", path=path)
            digest = content_hash(absolute)
        except FileNotFoundError:
            raise InputError("image file not found", path=path) from None
        except OSError as e:
            raise InputError(f"image file cannot be read ({e.strerror})", path=path) from None
        fingerprints.append([str(absolute), int(st.st_size), digest])
    return fingerprints


def require_finite_embeddings(embeddings: np.ndarray, loaded: "LoadedModel", what: str) -> np.ndarray:
    """``embeddings`` unchanged when every value is finite; else one InputError naming the model's
    weights (a checkpoint with NaN/Inf weights, or one that overflows in this precision)."""
    return require_finite(embeddings, what, f"model '{loaded.model_name}' ({describe_weights(loaded)})",
                          path=getattr(loaded, "checkpoint_path", None))


def describe_weights(loaded: Any) -> str:
    """``checkpoint PATH`` / ``pretrained tag T`` / ``random init (seed S)`` / the weights id."""
    return getattr(loaded, "weights_source", None) or f"weights {loaded.weights_id}"


def _encode_uncached(loaded: "LoadedModel", paths: Sequence[Path], batch_size: int, num_workers: int,
                     desc: str, encode_in_workers: Optional[bool] = None, normalize: bool = True,
                     reader: ImageReader = USER_FOLDER_READER) -> np.ndarray:
    """Embed ``paths`` without the cache (see :func:`encode_image_files` for the process layout)."""
    embeddings = np.zeros((len(paths), loaded.embed_dim), dtype=np.float32)
    batches = ImageBatches(loaded, paths, batch_size, encode=True, normalize=normalize, reader=reader)
    workers = max(0, min(num_workers, len(batches)))
    if encode_in_workers is None:
        encode_in_workers = torch.device(loaded.device).type == "cpu"
    batches.encode = workers == 0 or encode_in_workers
    loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_unchanged,
                        prefetch_factor=2 if workers else None, persistent_workers=False)
    progress = tqdm(total=len(paths), desc=desc, unit="img", disable=len(paths) < 2 * batch_size)
    with torch_threads(), torch.inference_mode(), progress as bar:
        for first, result, errors in loader:
            if errors:
                row, message = errors[0]
                raise decode_error(paths[row], message)
            if not batches.encode:
                result = encode_pixels(loaded, result, normalize).cpu().numpy()
            embeddings[first:first + len(result)] = result
            bar.update(len(result))
    return require_finite_embeddings(embeddings, loaded, "image embeddings")


# --------------------------------------------------------------------------- cache

def image_cache_material(loaded: "LoadedModel", fingerprints: list[list[Any]],
                         normalize: bool = True, reader: ImageReader = USER_FOLDER_READER) -> dict[str, Any]:
    """Everything that determines the embeddings of these files (JSON-normalised).

    ``kind`` is ``image_embeddings`` (L2-normalised) or ``image_features_raw`` (``normalize=False``);
    ``reader`` is how the files were read (EXIF orientation, pixel limit).
    """
    material = {
        "irkit_cache_format": CACHE_FORMAT_VERSION,
        "kind": "image_embeddings" if normalize else "image_features_raw",
        "model_name": loaded.model_name,
        "weights_id": loaded.weights_id,
        "precision": loaded.precision,
        "subnormals": loaded.subnormals,
        "transform": loaded.transform_config.to_dict(),
        "image_size": loaded.image_size,
        "reader": reader.to_dict(),
        "files": fingerprints,
    }
    return json.loads(json.dumps(material))


def _cache_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.npy", cache_dir / f"{key}.json"


def load_cached_array(cache_dir: Path, key: str, material: dict[str, Any],
                      num_rows: Optional[int] = None) -> Optional[np.ndarray]:
    """The array cached under ``key`` when its record holds exactly ``material``, its bytes match
    their sha256 and it has ``num_rows`` rows (default: one per ``material["files"]`` entry); else
    None (a damaged or stale entry is logged and recomputed by the caller)."""
    npy_path, json_path = _cache_paths(cache_dir, key)
    if not json_path.exists() and not npy_path.exists():
        return None
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
        data = npy_path.read_bytes()
    except (OSError, ValueError) as e:
        log.warning("embedding cache %s unreadable (%s); recomputing", json_path, e)
        return None
    if not isinstance(record, dict) or record.get("material") != material:
        log.warning("embedding cache %s does not match its key material; recomputing", json_path)
        return None
    if hashlib.sha256(data).hexdigest() != record.get("npy_sha256"):
        log.warning("embedding cache %s is corrupt (sha256 mismatch); recomputing", npy_path)
        return None
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as e:
        log.warning("embedding cache %s cannot be parsed (%s); recomputing", npy_path, e)
        return None
    if list(array.shape) != record.get("shape") or str(array.dtype) != record.get("dtype") \
            or array.shape[0] != (len(material["files"]) if num_rows is None else num_rows):
        log.warning("embedding cache %s has an unexpected shape/dtype; recomputing", npy_path)
        return None
    if np.issubdtype(array.dtype, np.floating):
        require_finite(array, "cached embeddings", "the embedding cache entry (delete it to recompute)",
                       path=npy_path)
    return array


def save_cached_array(cache_dir: Path, key: str, material: dict[str, Any], array: np.ndarray) -> None:
    """Write ``array`` and its record (``material``, shape, dtype, sha256) under ``key``, atomically."""
    npy_path, json_path = _cache_paths(cache_dir, key)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    atomic_write_bytes(npy_path, data)
    # The json is written last: it is what makes the entry valid, and it pins the npy's hash.
    atomic_write_json(json_path, {
        "key": key, "material": material, "npy_sha256": hashlib.sha256(data).hexdigest(),
        "shape": list(array.shape), "dtype": str(array.dtype),
    })


def encode_image_files(
    loaded: "LoadedModel",
    paths: Sequence[os.PathLike | str],
    batch_size: int = 64,
    num_workers: int = 2,
    cache_dir: Optional[os.PathLike | str] = None,
    desc: str = "images",
    encode_in_workers: Optional[bool] = None,
    normalize: bool = True,
    reader: ImageReader = USER_FOLDER_READER,
) -> np.ndarray:
    """Embed image files -> ``[N, D]`` float32 L2-normalised rows, in the order of ``paths``.

    ``normalize=False`` returns the image tower's unnormalised output (``model.encode_image``
    as float32), e.g. the input of a LinCIR/SEARLE phi; it is cached under its own key.

    ``num_workers`` processes handle whole batches (on CPU: decode + encode, one thread each,
    so use about one worker per core; 0 = all in the main process). With ``cache_dir`` the
    result is read from / written to the on-disk cache (module docstring).
    ``encode_in_workers`` overrides the layout (default: True on CPU, False on accelerators);
    it never changes the result, so it is not part of the cache key.
    ``reader``: how files are read (EXIF orientation, pixel limit); default: the user-folder
    reader (orientation applied). A missing, undecodable or oversized image raises
    :class:`InputError` naming the file; a non-finite embedding one naming the weights.
    """
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}", field="batch_size")
    paths = [Path(p) for p in paths]
    fingerprints = file_fingerprints(paths)
    if not paths:
        return np.zeros((0, loaded.embed_dim), dtype=np.float32)
    if cache_dir is None:
        return _encode_uncached(loaded, paths, batch_size, num_workers, desc, encode_in_workers, normalize, reader)
    cache_dir = Path(cache_dir)
    material = image_cache_material(loaded, fingerprints, normalize, reader)
    key = stable_hash(material)
    cached = load_cached_array(cache_dir, key, material)
    if cached is not None:
        log.info("embedding cache hit %s (%d images)", key[:12], len(paths))
        return cached.astype(np.float32, copy=False)
    embeddings = _encode_uncached(loaded, paths, batch_size, num_workers, desc, encode_in_workers, normalize, reader)
    save_cached_array(cache_dir, key, material, embeddings)
    return embeddings


# --------------------------------------------------------------------------- image sources

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def collect_image_paths(source: os.PathLike | str) -> list[Path]:
    """Image files of a folder (recursive, sorted by relative path) or of a list file.

    A list file (e.g. ``images.txt``) holds one path per line, relative to the list file's
    folder or absolute; blank lines and lines starting with ``#`` are skipped.
    """
    source = Path(source)
    if source.is_dir():
        found = [p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        if not found:
            raise InputError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder", path=source)
        return sorted(found, key=lambda p: p.relative_to(source).as_posix())
    if not source.is_file():
        raise InputError("not found (expected an image folder or a text file listing image paths)", path=source)
    if source.suffix.lower() in IMAGE_EXTENSIONS:
        return [source]
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file (expected one image path per line)", path=source) from None
    paths = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if Path(entry).is_absolute() else source.parent / entry
        if not path.is_file():
            raise InputError(f"image file '{entry}' not found", path=source, line=number)
        paths.append(path)
    if not paths:
        raise InputError("the list names no image files", path=source)
    return paths
