"""Training recipes: named sets of TrainConfig defaults (``--recipe official|finetune``).

A recipe fills only the TrainConfig fields the user left unset; a field given explicitly (a CLI
flag, a ``TrainConfig(...)`` argument) always wins. The resolved values are what the run
records in ``args.yaml``.

``official`` is the google/automl EfficientDet training recipe, read as facts from the
official source (github.com/google/automl at commit 6a54c87, 2025-03-01; paths below are
under ``efficientdet/``); each value carries its source line in :data:`OFFICIAL_SOURCES`.
``finetune`` (the default) is this project's small-data recipe: the official optimisation
with 50 epochs and a warm-up that starts at a tenth of the peak learning rate.

Where ours differs from the official code (kept on purpose, or not expressible here):

- learning rate: 0.08 per 64 images, scaled linearly with the total batch (all processes),
  as ``tf2/train_lib.py:41``; the official warm-up starts at the absolute 0.008
  (``lr_warmup_init``, not scaled), so below a total batch of 6.4 it ramps *down*; ours too.
- cosine: the official ``CosineLrSchedule`` (``tf2/train_lib.py:114``) takes
  ``cos(pi * step / (total - warmup))`` of the global step, so it reaches 0 ``warmup`` steps
  before the end and rises again; ours decays over ``(step - warmup) / (total - warmup)``.
- EMA warm-up: the official ``MovingAverage(dynamic_decay=True)`` uses
  ``min(decay, (1 + n) / (10 + n))``; ours ``decay * (1 - exp(-n / ema_warmup_steps))``
  (:mod:`efficientdet.engine.ema`).
- gradient clipping: the official code clips each gradient to norm 10 and then the global
  norm to 10 (``tf2/train_lib.py:677-681``); ours clips the global norm only (identical
  whenever no single tensor's gradient norm exceeds 10).
- anchors are not part of a recipe: the official code today uses aspect ratios 1, 2, 0.5
  (``hparams_config.py:207``, our ``--aspect-ratios official-v2``); the model default stays
  ``official-v1``, what the released COCO weights expect.
- the batch size is not set: the official default is 64 (``tf2/train.py:80``); the learning
  rate follows the batch you give instead.
"""

from __future__ import annotations

from typing import Any

from ..config import get_model_config
from ..errors import ConfigError

OFFICIAL_COMMIT = "6a54c8741e7c3265d4547c4f35f47a0391122dc5"


class _FromRecipe:
    """The default of a TrainConfig field that its recipe fills in (see TrainConfig.__post_init__)."""

    def __repr__(self) -> str:
        return "FROM_RECIPE"


FROM_RECIPE: Any = _FromRecipe()  # typed Any: it stands in for a value of any field's type

# field -> (value, where the official code says so). lr_per_64 is the learning rate for a
# total batch of 64 images (TrainConfig.lr is resolved from it when a run starts).
_OFFICIAL: dict[str, tuple[Any, str]] = {
    "epochs": (300, "hparams_config.py:221 h.num_epochs = 300"),
    "optimizer": ("sgd", "hparams_config.py:213 h.optimizer = 'sgd'"),
    "lr_per_64": (
        0.08,
        "hparams_config.py:214 h.learning_rate = 0.08; tf2/train_lib.py:41 lr * batch_size / 64",
    ),
    "momentum": (0.9, "hparams_config.py:212 h.momentum = 0.9"),
    "weight_decay": (
        4e-5,
        "hparams_config.py:242 h.weight_decay = 4e-5 (L2 on kernels/weights only, "
        "tf2/train_lib.py:486)",
    ),
    "warmup_epochs": (1.0, "hparams_config.py:216 h.lr_warmup_epoch = 1.0"),
    "warmup_lr": (0.008, "hparams_config.py:215 h.lr_warmup_init = 0.008"),
    "min_lr_ratio": (
        0.0,
        "hparams_config.py:278 h.lr_decay_method = 'cosine'; tf2/train_lib.py:114 (to 0)",
    ),
    "clip_grad": (10.0, "hparams_config.py:220 h.clip_gradients_norm = 10.0"),
    "ema": (True, "hparams_config.py:279 h.moving_average_decay = 0.9998 (non-zero: on)"),
    "ema_decay": (0.9998, "hparams_config.py:279 h.moving_average_decay = 0.9998"),
    "ema_warmup_steps": (
        2000,
        "ours (official: dynamic_decay min(d, (1+n)/(10+n)), tf2/train_lib.py:193)",
    ),
    "scale_min": (0.1, "hparams_config.py:184 h.jitter_min = 0.1"),
    "scale_max": (2.0, "hparams_config.py:185 h.jitter_max = 2.0"),
    "flip_prob": (
        0.5,
        "hparams_config.py:183 h.input_rand_hflip = True; "
        "object_detection/preprocessor.py random_horizontal_flip: 50%",
    ),
    "focal_alpha": (0.25, "hparams_config.py:231 h.alpha = 0.25"),
    "focal_gamma": (1.5, "hparams_config.py:232 h.gamma = 1.5"),
    "label_smoothing": (0.0, "hparams_config.py:229 h.label_smoothing = 0.0"),
    "box_loss": ("huber", "hparams_config.py:238 h.iou_loss_type = None (Huber box loss only)"),
    "huber_delta": (0.1, "hparams_config.py:235 h.delta = 0.1"),
    "box_loss_weight": (50.0, "hparams_config.py:237 h.box_loss_weight = 50.0"),
    "assigner": (
        "argmax",
        "tf2/anchors.py:174,184 ArgMaxMatcher, match_threshold=0.5 (= unmatched)",
    ),
    "freeze_bn": (False, "hparams_config.py:210 h.is_training_bn = True"),
}

OFFICIAL_SOURCES: dict[str, str] = {k: source for k, (_, source) in _OFFICIAL.items()}

RECIPES: dict[str, dict[str, Any]] = {
    "official": {k: value for k, (value, _) in _OFFICIAL.items()},
    "finetune": {
        **{k: value for k, (value, _) in _OFFICIAL.items()},
        "epochs": 50,  # small datasets: many short epochs converge well before 300
        "warmup_lr": None,  # None: a tenth of the peak learning rate
    },
}
RECIPE_NAMES = tuple(RECIPES)
DEFAULT_RECIPE = "finetune"
# TrainConfig fields a recipe sets (lr_per_64 resolves to ``lr`` once the total batch is known)
RECIPE_FIELDS = tuple(k for k in RECIPES[DEFAULT_RECIPE] if k != "lr_per_64")
ADAMW_LR = 1e-3  # AdamW (not in the official recipe): a fixed peak learning rate


def recipe_table(name: str) -> dict[str, Any]:
    """The TrainConfig defaults of recipe ``name`` (model- and batch-independent part)."""
    key = str(name).lower()
    if key not in RECIPES:
        raise ConfigError(
            f"recipe={name!r}: unknown recipe; fix: --recipe {' or --recipe '.join(RECIPE_NAMES)}"
        )
    return {k: v for k, v in RECIPES[key].items() if k != "lr_per_64"}


def recipe_lr(name: str, optimizer: str, total_batch: int) -> float:
    """Peak learning rate: SGD ``lr_per_64 * total_batch / 64`` (linear scaling, as
    ``tf2/train_lib.py:41``), AdamW :data:`ADAMW_LR`."""
    recipe_table(name)  # validates the name
    if total_batch < 1:
        raise ConfigError(f"total batch {total_batch}: need at least 1 image per step")
    if str(optimizer).lower() != "sgd":
        return ADAMW_LR
    return float(RECIPES[str(name).lower()]["lr_per_64"]) * total_batch / 64.0


def resolve_recipe(
    name: str, model_name: str, total_batch: int, optimizer: str | None = None
) -> dict[str, Any]:
    """Every TrainConfig value recipe ``name`` gives ``model_name`` trained with ``total_batch``
    images per step (all processes): the table, ``lr`` scaled with the batch (for
    ``optimizer``, default the recipe's) and ``image_size`` [H, W] (the model's official
    input size: the per-model ``image_size`` of ``hparams_config.py``)."""
    values = recipe_table(name)
    values["lr"] = recipe_lr(name, optimizer or values["optimizer"], total_batch)
    values["image_size"] = list(get_model_config(model_name).image_size)
    return values


def warmup_start_factor(warmup_lr: float | None, lr: float) -> float:
    """The scheduler's warm-up start as a fraction of the peak ``lr``: ``warmup_lr / lr``
    (None: 0.1, a tenth of the peak)."""
    return 0.1 if warmup_lr is None else float(warmup_lr) / float(lr)
