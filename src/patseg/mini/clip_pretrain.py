"""Contrastive pretraining of the tiny OVSS-mini CLIP, its zero-shot check, and its on-disk cache.

OVSS-mini needs a CLIP that, like a real one, has seen the *whole* world at image level, unseen concepts
included. We build open_clip's own CLIP class from the config ``patseg-mini-ViT`` (shipped in
``patseg/resources/clip``) and train it from scratch on random views of generated scenes with two losses:

- symmetric InfoNCE between each view and its caption ("a photo of red circle, grass and brick wall."); with
  hard negatives (optional), each view also brings a caption wrong by one word ("... blue circle, grass and
  brick wall.") into the image->text softmax, so colour and shape words must be read, not guessed from context;
- a concept loss: softmax over the K concept prompts (random SAN "vild" template each), with the target spread
  evenly over the concepts visible in the view. It trains what SAN later does with CLIP: pick the best class
  name for a region by cosine similarity x logit scale.

Views are square crops resized to CLIP's input: some random (35-100% of the scene area), the rest
(``object_crops``, half by default) framing one thing, so the model learns regions and objects, not only whole
scenes. A concept covering less than ``MIN_FRACTION`` of a view is neither a positive nor a negative. The result
is cached per world as ``mini_clip.safetensors`` (an open_clip state dict, loadable with
``open_clip.create_model('patseg-mini-ViT', pretrained=path)``) beside ``mini_clip.json`` (metadata).

:func:`evaluate_zero_shot` measures it two ways: retrieval mAP / top-n accuracy of the concepts in whole
multi-concept scenes, and top-1 accuracy of naming one concept shown alone (:func:`single_concept_top1`), each
split into seen and unseen concepts.

Regenerate the shipped copy with the :data:`RECIPE` defaults (about 15 minutes on one CPU thread)::

    python -m patseg.mini.clip_pretrain --half --out-dir src/patseg/resources/mini_clip
    # options: --steps, --batch-size, --lr, --[no-]hard-negatives, --object-crops, --seed, --threads
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from patseg import paths
from patseg.atomic import atomic_save_safetensors, atomic_write_text
from patseg.errors import CheckpointError, MissingFileError
from patseg.mini.scenes import render_scene, scene_rng, shape_mask
from patseg.mini.world import WorldConfig, make_caption, world_hash
from patseg.resources import CLIP_CONFIG_DIR, RESOURCE_DIR, load_templates

MODEL_NAME = "patseg-mini-ViT"
WEIGHTS_FILE, META_FILE = "mini_clip.safetensors", "mini_clip.json"
RENDER_SIZE = 128  # scenes are rendered at the OVSS-mini image size; CLIP sees them at half size (SAN's 0.5)
MIN_FRACTION = 0.01  # a concept must cover 1% of a view to count as present in it
CROP_AREA = (0.35, 1.0)  # scene-area fraction of a random crop
OBJECT_CROPS = 0.5  # fraction of views framing one thing instead (sample_views' default)


@dataclass(frozen=True)
class Recipe:
    """Pretraining settings of the shipped mini CLIP, the defaults of pretraining here and on the command line."""

    steps: int = 2400  # 1200 -> 2400 with object crops 0.5 -> 0.65: single-concept top-1 unseen 0.375 -> 0.482
    batch_size: int = 32
    lr: float = 2e-3
    hard_negatives: bool = False  # tried: no gain at 1200 steps (see the commit that added it)
    object_crops: float = 0.65


RECIPE = Recipe()


class ViewBatch(NamedTuple):
    images: torch.Tensor  # (B, 3, S, S) float, CLIP-normalised
    captions: list[str]  # B captions naming the concepts present in each view
    targets: torch.Tensor  # (B, K) bool: concept covers >= MIN_FRACTION of the view
    valid: torch.Tensor  # (B, K) bool: concept is present or absent (not a sliver)
    negatives: list[str] | None = None  # B hard-negative captions: one concept name changed by one word


@dataclass
class ZeroShotReport:
    """Image-level zero-shot recognition on held-out whole scenes, text embeddings averaged over templates."""

    per_concept_ap: dict[str, float]  # retrieval AP of the images containing each concept
    map_seen: float
    map_unseen: float
    top_n_accuracy: float  # mean over images of |top-n scored concepts ∩ present| / n, n = number present
    num_scenes: int
    # Naming one concept: mean over concepts of the top-1 accuracy on images showing that concept alone (stuff:
    # one texture filling the view, named among all concepts; things: one large thing on a texture, named among
    # the things). Defaults keep reports from before this measure constructible.
    top1_seen: float = float("nan")
    top1_unseen: float = float("nan")
    per_concept_top1: dict[str, float] = dataclasses.field(default_factory=dict)


def _register_config() -> None:
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CLIP_CONFIG_DIR)


def create_mini_clip(weights: Path | None = None) -> open_clip.CLIP:
    """open_clip CLIP built from ``patseg-mini-ViT``; random init, or the given safetensors file (strict)."""
    _register_config()
    if weights is not None and not Path(weights).is_file():
        raise MissingFileError(f"mini CLIP weights not found: {weights} (run `python -m {__name__}`)")
    return open_clip.create_model(MODEL_NAME, pretrained=str(weights) if weights is not None else None)


def mini_clip_tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    """open_clip's BPE tokenizer with the config's context length."""
    _register_config()
    return open_clip.get_tokenizer(MODEL_NAME)


def _normalise(images: torch.Tensor, model: open_clip.CLIP) -> torch.Tensor:
    """uint8-range float (B, 3, S, S) -> CLIP input with the model's preprocessing mean/std."""
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    return (images / 255.0 - mean) / std


def _view_targets(label: np.ndarray, num_concepts: int) -> tuple[np.ndarray, np.ndarray]:
    fraction = np.bincount(label.ravel(), minlength=num_concepts) / label.size
    present = fraction >= MIN_FRACTION
    return present, present | (fraction == 0)


def _crop_box(
    label: np.ndarray, num_stuff: int, rng: np.random.Generator, object_crops: float | None = None
) -> tuple[int, int, int]:
    """A random square crop (y0, x0, side): a fraction ``object_crops`` (default OBJECT_CROPS) of them framing
    one thing, as object photos frame objects."""
    size = label.shape[0]
    things = [c for c in np.unique(label) if c >= num_stuff]
    if things and rng.random() < (OBJECT_CROPS if object_crops is None else object_crops):
        ys, xs = np.nonzero(label == rng.choice(things))
        extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        side = int(np.clip(extent * rng.uniform(1.3, 2.5), size // 4, size))
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        y0, x0 = (int(np.clip(round(c - side / 2), 0, size - side)) for c in (cy, cx))
        return y0, x0, side
    side = round(size * np.sqrt(rng.uniform(*CROP_AREA)))
    y0, x0 = rng.integers(0, size - side + 1, size=2)
    return int(y0), int(x0), side


def _one_word_swaps(names: tuple[str, ...]) -> list[list[int]]:
    """For each concept, the concepts whose names differ from it in exactly one word ("red circle" -> "blue
    circle", "red stripes" -> "red dots"); a name with none (e.g. "brick wall") may swap for any other stuff."""
    words = [n.split() for n in names]
    swaps = []
    for a in words:
        swaps.append([j for j, b in enumerate(words) if len(b) == len(a) and sum(x != y for x, y in zip(a, b)) == 1])
    return swaps


def _hard_negative(
    listed: list[int], present: np.ndarray, swaps: list[list[int]], num_stuff: int, rng: np.random.Generator
) -> list[int]:
    """``listed`` with one concept replaced by an absent one differing by a word (another colour, shape or
    pattern) when possible, else by any absent concept of the same kind (stuff or thing)."""
    slot = int(rng.integers(len(listed)))
    concept = listed[slot]
    options = [j for j in swaps[concept] if not present[j]]
    if not options:
        same_kind = np.arange(num_stuff) if concept < num_stuff else np.arange(num_stuff, len(present))
        options = [int(j) for j in same_kind if not present[j]]
    if not options:  # every concept of that kind is in the view; any absent concept still makes it false
        options = [int(j) for j in np.flatnonzero(~present)]
    swapped = list(listed)
    swapped[slot] = int(options[int(rng.integers(len(options)))])
    return swapped


def sample_views(
    world: WorldConfig,
    rng: np.random.Generator,
    model: open_clip.CLIP,
    batch_size: int,
    *,
    hard_negatives: bool = False,
    object_crops: float | None = None,
) -> ViewBatch:
    """Render ``batch_size`` fresh scenes and take one random square crop of each, resized to CLIP's input.

    With ``hard_negatives``, each view also gets a caption that is wrong by one word (:func:`_hard_negative`)."""
    side = model.visual.image_size[0]
    names = world.concept_names
    swaps = _one_word_swaps(names) if hard_negatives else []
    images, captions, targets, valid, negatives = [], [], [], [], []
    for _ in range(batch_size):
        scene = render_scene(world, rng, RENDER_SIZE)
        y0, x0, crop = _crop_box(scene.label, world.num_stuff, rng, object_crops)
        pixels = torch.from_numpy(scene.image[y0 : y0 + crop, x0 : x0 + crop].transpose(2, 0, 1).copy())
        images.append(F.interpolate(pixels[None].float(), size=(side, side), mode="bilinear", antialias=True))
        present, known = _view_targets(scene.label[y0 : y0 + crop, x0 : x0 + crop], len(names))
        order = rng.permutation(np.flatnonzero(present))  # caption order is augmentation here
        captions.append(make_caption([names[i] for i in order], world.caption_prefix))
        if hard_negatives:
            wrong = _hard_negative([int(i) for i in order], present, swaps, world.num_stuff, rng)
            negatives.append(make_caption([names[i] for i in wrong], world.caption_prefix))
        targets.append(present)
        valid.append(known)
    return ViewBatch(
        images=_normalise(torch.cat(images), model),
        captions=captions,
        targets=torch.from_numpy(np.stack(targets)),
        valid=torch.from_numpy(np.stack(valid)),
        negatives=negatives if hard_negatives else None,
    )


def clip_contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    negative_emb: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP Eq.): image_emb, text_emb (B, D) unit-norm, row i of each is a matching pair.

    ``negative_emb`` (M, D), if given, adds captions that match no image to the image->text softmax only."""
    logits = logit_scale * image_emb @ text_emb.T
    labels = torch.arange(len(logits), device=logits.device)
    i2t = logits if negative_emb is None else torch.cat([logits, logit_scale * image_emb @ negative_emb.T], dim=1)
    return 0.5 * (F.cross_entropy(i2t, labels) + F.cross_entropy(logits.T, labels))


def concept_loss(
    image_emb: torch.Tensor,
    concept_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of softmax over concepts against the uniform distribution on the present ones.

    image_emb (B, D), concept_emb (K, D) unit-norm; targets, valid (B, K) bool. Invalid concepts are dropped
    from the softmax; every row needs at least one target.
    """
    logits = (logit_scale * image_emb @ concept_emb.T).masked_fill(~valid, float("-inf"))
    log_p = F.log_softmax(logits, dim=-1).masked_fill(~valid, 0.0)
    weights = targets.float() / targets.sum(dim=1, keepdim=True)
    return -(weights * log_p).sum(dim=1).mean()


Tokenizer: TypeAlias = open_clip.tokenizer.SimpleTokenizer


def _encode_texts(model: open_clip.CLIP, tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """(len(texts), D) unit-norm text embeddings."""
    return model.encode_text(tokenizer(texts), normalize=True)


def _training_step(model: open_clip.CLIP, tokenizer: Tokenizer, batch: ViewBatch, prompts: list[str]) -> torch.Tensor:
    """Caption InfoNCE + concept loss of one batch; ``prompts`` holds one prompt per concept, in index order."""
    image_emb = model.encode_image(batch.images, normalize=True)
    negatives = batch.negatives or []
    text_emb = _encode_texts(model, tokenizer, batch.captions + negatives + prompts)
    b, m = len(batch.captions), len(negatives)
    captions, wrong, concepts = text_emb[:b], text_emb[b : b + m], text_emb[b + m :]
    scale = model.logit_scale.exp()
    return clip_contrastive_loss(image_emb, captions, scale, wrong if m else None) + concept_loss(
        image_emb, concepts, scale, batch.targets, batch.valid
    )


def _optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    # As open_clip_train: no weight decay on gains, biases, embeddings' 1-d params and the logit scale.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to zero."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))


def train_mini_clip(
    world: WorldConfig,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float = 1e-3,
    log_every: int = 0,
    hard_negatives: bool = False,
    object_crops: float | None = None,
) -> tuple[open_clip.CLIP, float]:
    """Train a fresh mini CLIP on ``steps`` batches of fresh views; returns (model, mean loss of the last 10%).

    ``hard_negatives`` and ``object_crops`` are passed to :func:`sample_views`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0x0C11])
    model, tokenizer, templates = create_mini_clip(), mini_clip_tokenizer(), load_templates("san_vild")
    optimizer = _optimizer(model, lr)
    model.train()
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        batch = sample_views(world, rng, model, batch_size, hard_negatives=hard_negatives, object_crops=object_crops)
        prompts = [templates[rng.integers(len(templates))].format(n) for n in world.concept_names]
        loss = _training_step(model, tokenizer, batch, prompts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))  # CLIP's cap on the temperature
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():.1f}", flush=True)
    model.eval()
    tail = losses[-max(1, steps // 10) :]
    return model, float(np.mean(tail))


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of ranking ``scores`` (N,) against binary ``positive`` (N,); NaN when there are no positives."""
    if not positive.any():
        return float("nan")
    hits = positive[np.argsort(-scores, kind="stable")]
    precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hit.mean())


@torch.no_grad()
def concept_text_embeddings(model: open_clip.CLIP, names: tuple[str, ...], templates: str = "san_vild") -> torch.Tensor:
    """(K, D) unit-norm class embeddings: each name's prompts encoded, averaged over templates, re-normalised."""
    tokenizer, prompts = mini_clip_tokenizer(), load_templates(templates)
    emb = torch.stack([_encode_texts(model, tokenizer, [t.format(n) for t in prompts]).mean(0) for n in names])
    return F.normalize(emb, dim=-1)


@torch.no_grad()
def evaluate_zero_shot(
    model: open_clip.CLIP, world: WorldConfig, *, num_scenes: int = 256, seed: int = 0
) -> ZeroShotReport:
    """Image-level zero-shot concept recognition on ``num_scenes`` whole held-out scenes (split "clip-val")."""
    model.eval()
    side = model.visual.image_size[0]
    names = world.concept_names
    scenes = [render_scene(world, scene_rng(seed, "clip-val", i), RENDER_SIZE) for i in range(num_scenes)]
    pixels = torch.from_numpy(np.stack([s.image for s in scenes]).transpose(0, 3, 1, 2).copy()).float()
    pixels = F.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True)
    image_emb = model.encode_image(_normalise(pixels, model), normalize=True)
    text_emb = concept_text_embeddings(model, names)
    scores = (image_emb @ text_emb.T).numpy()  # (N, K)
    present, known = map(np.stack, zip(*[_view_targets(s.label, len(names)) for s in scenes]))
    ap = {n: _average_precision(scores[known[:, k], k], present[known[:, k], k]) for k, n in enumerate(names)}
    hits = []
    for row, pos, ok in zip(scores, present, known):
        ranked = np.argsort(-np.where(ok, row, -np.inf), kind="stable")  # slivers are neither right nor wrong
        hits.append(pos[ranked[: pos.sum()]].mean())
    top1 = single_concept_top1(model, world, seed=seed, text_emb=text_emb)
    return ZeroShotReport(
        per_concept_ap=ap,
        map_seen=float(np.nanmean([ap[n] for n in world.seen_names])),
        map_unseen=float(np.nanmean([ap[n] for n in world.unseen_names])),
        top_n_accuracy=float(np.mean(hits)),
        num_scenes=num_scenes,
        top1_seen=float(np.mean([top1[n] for n in world.seen_names])),
        top1_unseen=float(np.mean([top1[n] for n in world.unseen_names])),
        per_concept_top1=top1,
    )


def single_concept_images(
    world: WorldConfig, concept: int, count: int, seed: int, size: int = RENDER_SIZE
) -> np.ndarray:
    """(count, size, size, 3) uint8 images of ``concept`` alone: its texture filling the image, or (a thing) one
    large instance of it, rotated at random, over a single random texture."""
    plain = dataclasses.replace(world, stuff_per_scene=(1, 1), things_per_scene=(0, 0))
    if concept < world.num_stuff:  # a world whose only stuff is this one renders it full-frame
        plain = dataclasses.replace(plain, stuff=(world.stuff[concept],), unseen=())
    images = []
    for index in range(count):
        rng = scene_rng(seed, f"single-{concept}", index)
        image = render_scene(plain, rng, size).image.astype(np.float64)
        if concept >= world.num_stuff:
            colour, shape = divmod(concept - world.num_stuff, len(world.shapes))
            cy, cx = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size
            mask = shape_mask(
                world.shapes[shape], size, cy, cx, rng.uniform(0.3, 0.4) * size, rng.uniform(0, 2 * np.pi)
            )
            rgb = np.asarray(world.colours[colour].rgb, dtype=np.float64)
            image[mask] = rgb * rng.uniform(1 - world.brightness_jitter, 1 + world.brightness_jitter)
            image[mask] += rng.normal(0.0, world.noise_std, size=image[mask].shape)
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return np.stack(images)


@torch.no_grad()
def single_concept_top1(
    model: open_clip.CLIP,
    world: WorldConfig,
    *,
    per_concept: int = 8,
    seed: int = 0,
    text_emb: torch.Tensor | None = None,
) -> dict[str, float]:
    """Per-concept top-1 accuracy of naming :func:`single_concept_images` (stuff among all concepts, a thing
    among the things, since its background texture is rightly also there)."""
    model.eval()
    side, names = model.visual.image_size[0], world.concept_names
    text_emb = concept_text_embeddings(model, names) if text_emb is None else text_emb
    accuracy = {}
    for k, name in enumerate(names):
        pixels = torch.from_numpy(single_concept_images(world, k, per_concept, seed).transpose(0, 3, 1, 2).copy())
        pixels = F.interpolate(pixels.float(), size=(side, side), mode="bilinear", antialias=True)
        scores = model.encode_image(_normalise(pixels, model), normalize=True) @ text_emb.T
        if k >= world.num_stuff:
            scores[:, : world.num_stuff] = -torch.inf
        accuracy[name] = float((scores.argmax(dim=1) == k).float().mean())
    return accuracy


SHIPPED_DIR = RESOURCE_DIR / "mini_clip"  # regenerate: see the README's OVSS-mini section


def shipped_mini_clip(world: WorldConfig) -> Path | None:
    """The mini CLIP shipped with patseg, if it was trained on ``world`` with the current model config.

    Set PATSEG_NO_SHIPPED_MINI_CLIP=1 to ignore it (the tests do, to exercise pretraining and caching)."""
    meta_path, weights = SHIPPED_DIR / META_FILE, SHIPPED_DIR / WEIGHTS_FILE
    if os.environ.get("PATSEG_NO_SHIPPED_MINI_CLIP") or not (meta_path.is_file() and weights.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("world_hash") != world_hash(world) or meta.get("model_config") != _model_config():
        return None
    return weights


def cache_dir_for(world: WorldConfig) -> Path:
    """``<cache>/mini_clip/<world-hash>``, the cache being :func:`patseg.paths.cache_dir`."""
    return paths.cache_dir() / "mini_clip" / world_hash(world)


def _model_config() -> dict:
    return json.loads((CLIP_CONFIG_DIR / f"{MODEL_NAME}.json").read_text())


def pretrain_mini_clip(
    world: WorldConfig,
    *,
    steps: int = RECIPE.steps,
    batch_size: int = RECIPE.batch_size,
    seed: int = 0,
    lr: float = RECIPE.lr,
    out_dir: Path | None = None,
    eval_scenes: int = 256,
    log_every: int = 0,
    half: bool = False,
    hard_negatives: bool = RECIPE.hard_negatives,
    object_crops: float = RECIPE.object_crops,
) -> Path:
    """Train the mini CLIP on ``world``, evaluate it, and write weights + metadata into ``out_dir``.

    ``out_dir`` defaults to :func:`cache_dir_for`. The weights are written first and the JSON last, both
    atomically, so a metadata file always describes a complete weights file. Returns the weights path.
    """
    out_dir = Path(out_dir) if out_dir is not None else cache_dir_for(world)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, final_loss = train_mini_clip(
        world,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        lr=lr,
        log_every=log_every,
        hard_negatives=hard_negatives,
        object_crops=object_crops,
    )
    train_seconds = time.perf_counter() - start
    report = evaluate_zero_shot(model, world, num_scenes=eval_scenes, seed=seed + 1)
    # half=True stores float16 (the copy shipped in patseg/resources/mini_clip); loading casts back to float32.
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().contiguous()
        for k, v in model.state_dict().items()
    }
    meta: dict[str, Any] = {
        "world_hash": world_hash(world),
        "world": world.to_dict(),
        "model_name": MODEL_NAME,
        "model_config": _model_config(),
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "lr": lr,
        "hard_negatives": hard_negatives,
        "object_crops": object_crops,
        "final_loss": final_loss,
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "zero_shot": asdict(report),
    }
    weights = out_dir / WEIGHTS_FILE
    atomic_save_safetensors(state, weights, metadata={"world_hash": meta["world_hash"]})
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return weights


def read_metadata(weights: Path) -> dict:
    """The ``mini_clip.json`` written beside ``weights``."""
    return json.loads((Path(weights).parent / META_FILE).read_text())


def load_or_pretrain_mini_clip(
    world: WorldConfig,
    *,
    steps: int = RECIPE.steps,
    batch_size: int = RECIPE.batch_size,
    seed: int = 0,
    cache_dir: Path | None = None,
    eval_scenes: int = 256,
) -> Path:
    """Weights path of the cached mini CLIP for ``world``, training it first when no valid cache exists.

    A cache is valid when its metadata names this world's hash and the current ``patseg-mini-ViT`` config;
    ``steps``/``batch_size``/``seed`` only shape a fresh training run. A cache made for a different model config
    is an error (delete it, or pass another ``cache_dir``) rather than something silently replaced.
    """
    shipped = shipped_mini_clip(world)
    if shipped is not None and cache_dir is None:
        return shipped
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_dir_for(world)
    weights, meta_path = cache_dir / WEIGHTS_FILE, cache_dir / META_FILE
    if meta_path.is_file() and weights.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("world_hash") != world_hash(world):
            raise CheckpointError(f"{meta_path} was trained on world {meta.get('world_hash')}, not {world_hash(world)}")
        if meta.get("model_config") != _model_config():
            raise CheckpointError(f"{meta_path} was trained with another {MODEL_NAME} config; delete {cache_dir}")
        return weights
    return pretrain_mini_clip(
        world, steps=steps, batch_size=batch_size, seed=seed, out_dir=cache_dir, eval_scenes=eval_scenes
    )


def _summary(meta: dict) -> str:
    zs, nan = meta["zero_shot"], float("nan")
    worst = sorted(zs["per_concept_ap"].items(), key=lambda kv: kv[1])[:5]
    return (
        f"trained {meta['steps']} steps x {meta['batch_size']} in {meta['train_seconds']} s "
        f"({meta['torch_threads']} threads), final loss {meta['final_loss']:.3f}\n"
        f"zero-shot mAP seen {zs['map_seen']:.3f}  unseen {zs['map_unseen']:.3f}  "
        f"top-n accuracy {zs['top_n_accuracy']:.3f}  "
        f"single-concept top-1 seen {zs.get('top1_seen', nan):.3f}  unseen {zs.get('top1_unseen', nan):.3f}\n"
        f"lowest AP: " + ", ".join(f"{n} {ap:.2f}" for n, ap in worst)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain the OVSS-mini CLIP on the default world and cache it.")
    parser.add_argument("--steps", type=int, default=RECIPE.steps)
    parser.add_argument("--batch-size", type=int, default=RECIPE.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=RECIPE.lr)
    parser.add_argument(
        "--hard-negatives",
        action=argparse.BooleanOptionalAction,
        default=RECIPE.hard_negatives,
        help="add one-word-wrong captions to the image->text softmax",
    )
    parser.add_argument("--object-crops", type=float, default=RECIPE.object_crops, help="share of thing-framing views")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: $PATSEG_CACHE/mini_clip/<world-hash>")
    parser.add_argument("--eval-scenes", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--half", action="store_true", help="store float16 weights (the shipped copy)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = pretrain_mini_clip(
        WorldConfig(),
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        out_dir=args.out_dir,
        eval_scenes=args.eval_scenes,
        log_every=max(1, args.steps // 20),
        half=args.half,
        hard_negatives=args.hard_negatives,
        object_crops=args.object_crops,
    )
    print(weights)
    print(_summary(read_metadata(weights)))


if __name__ == "__main__":
    main()
