"""Training engine: typed config, poly schedule, DDP helpers, safe checkpoints and the train loop."""

from patseg.engine.checkpoint import TrainState, last_checkpoint, load_checkpoint, load_model_weights, save_checkpoint
from patseg.engine.schedule import PolySchedule, build_param_groups, poly_lr
from patseg.engine.train_config import TrainConfig, load_train_config, model_config
from patseg.engine.trainer import TrainResult, train
from patseg.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "PolySchedule",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "build_param_groups",
    "last_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "load_train_config",
    "model_config",
    "poly_lr",
    "save_checkpoint",
    "train",
]
