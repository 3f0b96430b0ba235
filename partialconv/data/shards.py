"""The ``shards`` backend: an ImageFolder split stored as WebDataset tar shards plus an index, read map-style.

``python -m scripts.write_shards SRC OUT`` writes ``OUT/shard-NNNNNN.tar`` (members ``<key>.<ext>``, the image
file's original bytes, and ``<key>.cls``, its class index as text, in ImageFolder's sorted order) and
``OUT/index.json``, written last:

- ``classes``: the class names (index = target); ``source_fingerprint``: sha256 of the source list (relative path,
  class and size of every file, and the classes);
- ``shards``: per shard its ``name``, ``size`` and ``sha256``;
- ``samples``: columns ``name`` (the file's path in the source folder), ``shard``, ``offset`` and ``size`` (where
  the image member's bytes lie in its shard) and ``class``;
- ``fingerprint``: sha256 of all of the above, what a run records as the identity of its data.

Sample ``i`` is one ``pread`` of ``size`` bytes at ``offset`` in its shard, decoded by the same
:class:`~partialconv.data.decode.SampleDecode` as the image-folder backends: the seeded sampler, exact validation,
per-sample augmentation seeds and mid-epoch resume carry over, and a run on shards is the run on the folder.

A URL (``https://host/imagenet/train``, ``s3://bucket/train``: any fsspec URL; http(s) through the standard
library, so no aiohttp is needed) is read through a node-local cache (``shard_cache.ShardCache``): each shard is fetched
whole on first use, once per node (a lock per shard), checked against the index's size and sha256, and read by
offset from there; the least recently used shards are evicted beyond the cache's size limit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
from torch.utils.data import Dataset

from .backends import Backend, Splits, is_url
from .cropped_decode import decoder_unavailable
from .decode import SampleDecode, crop_and_flip_only, split_decoders
from .errors import DataError, Param
from .params import DataParams
from .shard_cache import ShardCache, default_cache_dir, join_url, read_url

__all__ = [
    "FORMAT",
    "INDEX_NAME",
    "VERSION",
    "SHARDS_BACKEND",
    "ShardIndex",
    "ShardSamples",
    "ShardStore",
    "index_fingerprint",
    "open_shard_splits",
]

INDEX_NAME = "index.json"
FORMAT = "partialconv-shards"
VERSION = 1


def index_fingerprint(body: dict[str, Any]) -> str:
    """sha256 of an index's content (everything but the fingerprint itself), canonical JSON."""
    content = {k: v for k, v in body.items() if k != "fingerprint"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ShardIndex:
    """A split's index (``index.json``), sample columns as numpy arrays (no per-sample Python objects, so forked
    DataLoader workers do not copy them page by page through reference counts)."""

    classes: list[str]
    shards: list[dict[str, Any]]  # name, size, sha256
    names: np.ndarray  # bytes: each sample's path in the source folder (for messages)
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    target: np.ndarray
    source_fingerprint: str
    fingerprint: str

    def __len__(self) -> int:
        return len(self.target)

    @classmethod
    def parse(cls, data: bytes, where: str) -> ShardIndex:
        """The index from its file's bytes; ``where`` names it in the :class:`ValueError` of a damaged one."""
        try:
            body = json.loads(data)
            if body.get("format") != FORMAT or body.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} v{VERSION} index")
            samples = body["samples"]
            index = cls(
                classes=[str(c) for c in body["classes"]],
                shards=[
                    {"name": str(s["name"]), "size": int(s["size"]), "sha256": str(s["sha256"])} for s in body["shards"]
                ],
                names=np.array([n.encode() for n in samples["name"]], dtype=bytes),
                shard=np.asarray(samples["shard"], dtype=np.int32),
                offset=np.asarray(samples["offset"], dtype=np.int64),
                size=np.asarray(samples["size"], dtype=np.int64),
                target=np.asarray(samples["class"], dtype=np.int64),
                source_fingerprint=str(body["source_fingerprint"]),
                fingerprint=str(body["fingerprint"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{where}: damaged shard index ({type(e).__name__}: {e})") from None
        n = len(index.target)
        if not (len(index.names) == len(index.shard) == len(index.offset) == len(index.size) == n):
            raise ValueError(f"{where}: damaged shard index (sample columns of different lengths)")
        if n and (index.shard.min() < 0 or index.shard.max() >= len(index.shards)):
            raise ValueError(f"{where}: damaged shard index (a sample names a shard it does not list)")
        if n and (index.target.min() < 0 or index.target.max() >= len(index.classes)):
            raise ValueError(f"{where}: damaged shard index (a class index out of range)")
        return index


class ShardStore:
    """Reads byte ranges of one split's shards: from ``location`` (a directory) or through ``cache`` (a URL).
    Files are opened once per process, lazily; ``opened`` and ``bytes_read`` count what this process did."""

    def __init__(self, location: str, index: ShardIndex, cache: Optional[ShardCache] = None) -> None:
        self.location = location
        self.index = index
        self.cache = cache
        self._fds: dict[int, int] = {}
        self.opened = 0
        self.bytes_read = 0

    def __getstate__(self) -> dict[str, Any]:  # file descriptors do not travel to spawned workers
        return {**self.__dict__, "_fds": {}}

    def shard_path(self, shard: int) -> Path:
        entry = self.index.shards[shard]
        if self.cache is not None:
            return self.cache.path(self.location, entry)
        return Path(self.location) / entry["name"]

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            path = self.shard_path(shard)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"shard {path}: {e.strerror}") from None
            size, expected = os.fstat(fd).st_size, self.index.shards[shard]["size"]
            if size != expected:
                os.close(fd)
                raise DataError(f"shard {path}: {size} bytes, the index says {expected} (an incomplete copy?)")
            self._fds[shard] = fd
            self.opened += 1
        return fd

    def read(self, shard: int, offset: int, size: int) -> bytes:
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise DataError(f"shard {self.index.shards[shard]['name']} in {self.location}: short read at {offset}")
        self.bytes_read += size
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class ShardSamples(Dataset):
    """A split's samples from its shards, following the sample protocol: ``dataset[(i, seed)]`` is
    ``(image, target)`` decoded and augmented by ``decode`` (the image-folder backends' own), or ``None`` for an
    undecodable image under ``on_bad_image="skip"``. A shard that cannot be read or fetched is a
    :class:`~partialconv.data.errors.DataError` whatever the policy: it is not a bad image."""

    def __init__(self, store: ShardStore, decode: SampleDecode, collate_fn: Callable) -> None:
        self.store = store
        self.index = store.index
        self.decode = decode
        self.collate_fn = collate_fn
        self.classes = store.index.classes

    def __len__(self) -> int:
        return len(self.index)

    @property
    def targets(self) -> list[int]:
        return self.index.target.tolist()

    def name(self, i: int) -> str:
        shard = self.index.shards[int(self.index.shard[i])]["name"]
        return f"{join_url(self.store.location, shard)}:{self.index.names[i].decode()}"

    def __getitem__(self, key: Union[int, tuple[int, int]]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        data = self.store.read(int(self.index.shard[i]), int(self.index.offset[i]), int(self.index.size[i]))
        image = self.decode(data, self.name(i), seed)
        return None if image is None else (image, int(self.index.target[i]))


def load_index(location: str, param: str) -> ShardIndex:
    """The index of the split at ``location`` (directory or URL); a :class:`DataError` naming ``param`` if absent
    or damaged."""
    where = join_url(location, INDEX_NAME)
    try:
        if is_url(location):
            data = read_url(where)
        else:
            data = (Path(location) / INDEX_NAME).read_bytes()
    except FileNotFoundError:
        raise DataError(
            Param(param, location), f": no {INDEX_NAME} (write one with python -m scripts.write_shards)"
        ) from None
    except OSError as e:
        raise DataError(Param(param, location), f": {e}") from None
    try:
        return ShardIndex.parse(data, where)
    except ValueError as e:
        raise DataError(Param(param, location), f": {e}") from None


def detect_shards(path: Union[str, Path]) -> bool:
    """``auto``: a URL (only shards are read from URLs) or a directory holding an index."""
    return is_url(str(path)) or (Path(path) / INDEX_NAME).is_file()


def dataset_identity(train: ShardIndex, val: ShardIndex) -> str:
    """What a run records as its data: both splits' index fingerprints."""
    return f"shards train {train.fingerprint} val {val.fingerprint}"


def shard_pipeline(params: DataParams) -> str:
    """The decode of a run on shards, that of the folder backend a run on the source folder takes by default:
    ``turbo``'s crop-only decode where libturbojpeg 3 loads, else ``pil_fast``'s uint8 pipeline (the folder's
    ``auto`` takes ``pil`` there, for old checkpoints; shards have none); ``pil``'s transforms when policy
    augmentation, random erasing or a non-bilinear interpolation is asked for."""
    if not crop_and_flip_only(params):
        return "pil"
    return "turbo" if decoder_unavailable() is None else "pil_fast"


def open_shard_splits(params: DataParams) -> Splits:
    """The ``shards`` backend's splits: both indexes loaded and checked (same classes), then the decode of the
    image-folder backends over shard bytes (:func:`shard_pipeline`)."""
    cache = None
    if is_url(params.train_dir) or is_url(params.val_dir):
        limit = None if params.cache_limit_gb is None else int(params.cache_limit_gb * 1e9)
        cache = ShardCache(params.cache_dir or default_cache_dir(), limit)
    indexes = {name: load_index(getattr(params, name), name) for name in ("train_dir", "val_dir")}
    train_index, val_index = indexes["train_dir"], indexes["val_dir"]
    if train_index.classes != val_index.classes:
        raise DataError(
            Param("train_dir", params.train_dir), " and ", Param("val_dir", params.val_dir), " have different classes"
        )
    train_decode, val_decode, collate = split_decoders(params, shard_pipeline(params))

    def store(location: str, index: ShardIndex) -> ShardStore:
        return ShardStore(location, index, cache if is_url(location) else None)

    warnings = []
    remote = sum(
        sum(s["size"] for s in i.shards)
        for p, i in ((params.train_dir, train_index), (params.val_dir, val_index))
        if is_url(p)
    )
    if cache is not None and cache.limit_bytes is not None and remote > cache.limit_bytes:
        warnings.append(
            f"the shard cache limit ({cache.limit_bytes / 1e9:g} GB) is below the {remote / 1e9:.1f} GB of shards this "
            "run reads: every epoch visits all shards, so evicted shards will be fetched again and again"
        )
    return Splits(
        ShardSamples(store(params.train_dir, train_index), train_decode, collate),
        ShardSamples(store(params.val_dir, val_index), val_decode, collate),
        train_index.classes,
        warnings=warnings,
        identity=dataset_identity(train_index, val_index),
    )


SHARDS_BACKEND = Backend(
    "shards",
    open_shard_splits,
    detect=detect_shards,
    reads_urls=True,
    help="WebDataset tar shards with an index (python -m scripts.write_shards), a directory or any fsspec URL "
    "(fetched into --data-cache); read by offset, same images, crops and order as the folder they came from",
)
