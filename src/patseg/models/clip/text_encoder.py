"""The frozen CLIP text tower as SAN's open-vocabulary classifier: prompt-ensembled class embeddings.

Facts from MendelXu/SAN ``san/model/clip_utils/classifier.py`` and ``utils.py``: a class
embedding is the mean over templates of the L2-normalised text embeddings of ``template.format(name)``,
re-normalised. Names are used verbatim. The tower is frozen and stays in eval mode; encoding runs without grad.

Embeddings are cached in memory and, when a cache is given, in that cache (``build`` hands over the disk cache of
``patseg.weights.text_cache``), keyed by the model name and a digest of the text tower's weights, so an entry can
never be served to another model, another checkpoint or another vocabulary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Tokenizer = Callable[[list[str]], Tensor]


class EmbeddingCache(Protocol):
    """Where encoded vocabularies are kept between runs (``patseg.weights.text_cache.DiskEmbeddingCache``)."""

    def load(self, key: str, names: Sequence[str], templates: Sequence[str]) -> Tensor | None: ...

    def save(self, key: str, names: Sequence[str], templates: Sequence[str], embeddings: Tensor) -> None: ...


def weights_digest(module: nn.Module) -> str:
    """Hex digest of every tensor (name, dtype, shape, bytes) in ``module``'s state dict: the weights identity."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _text_embed_dim(clip_model: nn.Module) -> int:
    """D of the text tower's output: open_clip's ``CLIP`` projects with ``text_projection`` (a Linear or a
    (width, D) matrix; None: the pooled width); ``CustomTextCLIP`` keeps its tower, with ``output_dim``, as ``text``."""
    text = getattr(clip_model, "text", None)
    if text is not None:
        return int(text.output_dim)
    proj = clip_model.text_projection
    if isinstance(proj, nn.Linear):
        return proj.out_features
    if proj is not None:
        return int(cast(Tensor, proj).shape[1])
    return int(clip_model.transformer.width)


class TextEncoder(nn.Module):
    """Template-averaged, L2-normalised CLIP text embeddings of class names.

    Args:
        clip_model: an open_clip ``CLIP``/``CustomTextCLIP`` whose ``visual`` is None (``load_clip`` hands the
            image tower to ClipBackbone first, so no weights are held twice). Its text tower and logit scale are
            used; all of it is frozen here.
        tokenizer: open_clip tokenizer for the model (``open_clip.get_tokenizer(name)``).
        cache: a persistent cache of encoded vocabularies, or None for the in-memory cache only.
        cache_key: names the model in the cache (e.g. ``ViT-B-16``); the weights digest is added to it.
        batch_size: prompts per text-tower call.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Tokenizer,
        *,
        cache: EmbeddingCache | None,
        cache_key: str,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        if getattr(clip_model, "visual", None) is not None:
            raise ValueError(
                "TextEncoder takes a CLIP model whose image tower was handed to ClipBackbone "
                "(set clip_model.visual = None first, as load_clip does)"
            )
        self.clip = clip_model
        self.clip.requires_grad_(False)
        self.tokenizer = tokenizer
        self.cache = cache
        self._model_key = cache_key
        self._digest: str | None = None  # computed on first use: weights are often loaded after construction
        self.batch_size = batch_size
        self._memory: dict[tuple[tuple[str, ...], tuple[str, ...]], Tensor] = {}
        # Any load_state_dict that reaches this module (the whole model's included) invalidates both caches' keys.
        self.register_load_state_dict_post_hook(
            lambda module, _incompatible: cast(TextEncoder, module).forget_weights()
        )
        self.train(False)

    @property
    def cache_key(self) -> str:
        """Model name + digest of the current text-tower weights: the identity the caches are keyed by."""
        if self._digest is None:
            self._digest = weights_digest(self.clip)
        return f"{self._model_key}-{self._digest}"

    def forget_weights(self) -> None:
        """Drop the weights digest and the in-memory embeddings (called after new weights are loaded)."""
        self._digest = None
        self._memory.clear()

    def train(self, mode: bool = True) -> TextEncoder:
        """The frozen text tower always stays in eval mode (SAN overrides ``train`` the same way)."""
        return super().train(False)

    @property
    def logit_scale(self) -> float:
        """exp of CLIP's frozen logit scale (100 for OpenAI weights)."""
        return float(self._logit_scale_param.detach().exp())

    @property
    def _logit_scale_param(self) -> Tensor:
        """CLIP's raw (log) logit scale; it lives wherever the text tower does."""
        return cast(Tensor, self.clip.logit_scale)

    def forward(self, class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
        """(C, D) L2-normalised class embeddings: mean over templates of normalised embeddings, re-normalised.

        The returned tensor is the cached one (float32, on the tower's device): do not modify it in place.
        """
        key = (tuple(class_names), tuple(templates))
        if not key[0] or not key[1]:
            raise ValueError("need at least one class name and one template")
        device = self._logit_scale_param.device
        emb = self._memory.get(key)
        if emb is None:
            emb = self._load_or_encode(*key)
        if emb.device != device:  # keep the memory copy where the tower is, so a hit costs no transfer
            emb = emb.to(device)
        self._memory[key] = emb
        return emb

    def prime(self, class_names: Sequence[str], templates: Sequence[str], embeddings: Tensor) -> None:
        """Put precomputed (C, D) class embeddings for this vocabulary into the in-memory cache, L2-normalised.

        Later calls with the same names and templates return them without running the text tower (the benchmarks
        use this to leave the tower's cost out). Like encoded embeddings, they are dropped when weights are loaded.
        """
        key = (tuple(class_names), tuple(templates))
        if not key[0] or not key[1]:
            raise ValueError("need at least one class name and one template")
        dim = _text_embed_dim(self.clip)
        if embeddings.ndim != 2 or tuple(embeddings.shape) != (len(key[0]), dim):
            raise ValueError(f"embeddings must be (C, D) = ({len(key[0])}, {dim}), got {tuple(embeddings.shape)}")
        device = self._logit_scale_param.device
        self._memory[key] = F.normalize(embeddings.detach().float(), dim=-1).to(device)

    def _load_or_encode(self, names: tuple[str, ...], templates: tuple[str, ...]) -> Tensor:
        emb = None if self.cache is None else self.cache.load(self.cache_key, names, templates)
        if emb is None:
            emb = self._encode(names, templates)
            if self.cache is not None:
                self.cache.save(self.cache_key, names, templates, emb)
        return emb

    @torch.no_grad()
    def _encode(self, names: Sequence[str], templates: Sequence[str]) -> Tensor:
        """(C, D) float32 on CPU; the tower runs in float32 even inside an autocast region."""
        device = self._logit_scale_param.device
        total = None
        with torch.autocast(device_type=device.type, enabled=False):
            for template in templates:
                prompts = [template.format(name) for name in names]
                emb = torch.cat(
                    [
                        self._encode_prompts(prompts[i : i + self.batch_size], device)
                        for i in range(0, len(prompts), self.batch_size)
                    ]
                )
                total = emb if total is None else total + emb
        assert total is not None  # templates is non-empty (checked by the callers)
        return F.normalize(total / len(templates), dim=-1).cpu()

    def _encode_prompts(self, prompts: list[str], device: torch.device) -> Tensor:
        """(P, D) normalised float32 embeddings of P prompts."""
        tokens = self.tokenizer(prompts).to(device)
        encode_text = cast(Callable[[Tensor], Tensor], self.clip.encode_text)
        return F.normalize(encode_text(tokens).float(), dim=-1)
