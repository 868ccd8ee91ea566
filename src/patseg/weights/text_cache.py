"""The on-disk cache of class-name embeddings (``$PATSEG_CACHE/text``), handed to the text encoder by ``build``.

One safetensors file per (model, weights, vocabulary, templates): the file name hashes all four and the metadata
repeats them, so an entry can never be served to another model, another checkpoint or another vocabulary. Writes
are atomic. Only text towers loaded from a file get the disk cache (:func:`text_embedding_cache`): a randomly
initialised tower has new weights whenever its seed or config changes, and would add files that nothing reads.
The text encoder (``patseg.models.clip.text_encoder``) only sees the ``load``/``save`` interface, so the model
layer does no file I/O of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from safetensors import safe_open
from torch import Tensor

from patseg.atomic import atomic_save_safetensors
from patseg.errors import CheckpointError
from patseg.paths import cache_dir


class DiskEmbeddingCache:
    """Text embeddings in ``folder``, keyed by the encoder's cache key (model name + weights digest)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str, names: Sequence[str], templates: Sequence[str]) -> Path:
        """The file of this model, weights and vocabulary."""
        blob = json.dumps([key, list(names), list(templates)], ensure_ascii=False)
        return self.folder / f"{hashlib.sha256(blob.encode('utf-8')).hexdigest()[:32]}.safetensors"

    @staticmethod
    def _metadata(key: str, names: Sequence[str], templates: Sequence[str]) -> dict[str, str]:
        return {
            "cache_key": key,
            "class_names": json.dumps(list(names), ensure_ascii=False),
            "templates": json.dumps(list(templates), ensure_ascii=False),
        }

    def load(self, key: str, names: Sequence[str], templates: Sequence[str]) -> Tensor | None:
        """The cached (C, D) embeddings, or None when there are none yet."""
        path = self.path(key, names, templates)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            if f.metadata() != self._metadata(key, names, templates):
                raise CheckpointError(f"text-embedding cache {path} holds another vocabulary or model; delete it")
            return f.get_tensor("embeddings")

    def save(self, key: str, names: Sequence[str], templates: Sequence[str], embeddings: Tensor) -> None:
        atomic_save_safetensors(
            {"embeddings": embeddings.contiguous()},
            self.path(key, names, templates),
            metadata=self._metadata(key, names, templates),
        )


def text_embedding_cache(tower_from_file: bool) -> DiskEmbeddingCache | None:
    """The disk cache (``$PATSEG_CACHE/text``) for a text tower whose weights come from a file (a CLIP checkpoint,
    a patseg weights file, a SAN checkpoint); None, the in-memory cache only, for a randomly initialised one."""
    return DiskEmbeddingCache(cache_dir() / "text") if tower_from_file else None
