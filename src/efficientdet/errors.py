"""Errors a user can cause. Each message is one line naming the file/item and the fix.

The CLI prints these as ``error: <message>`` and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class EfficientDetError(Exception):
    """Base class for user-facing errors."""


class ConfigError(EfficientDetError, ValueError):
    """A bad option or configuration value."""


class WeightsError(EfficientDetError):
    """A checkpoint or weights file that cannot be used for this model."""


class DataError(EfficientDetError):
    """A dataset, image or annotation file that cannot be used."""


class OutputError(EfficientDetError):
    """An output that cannot be written (disk full, read-only folder, a path under a file)."""


class ResourceError(EfficientDetError):
    """A step that needs more memory than the machine has (see ``efficientdet.resources``)."""


class ExportError(EfficientDetError):
    """An exported file that fails its parity check against PyTorch (nothing is written)."""


class CallbackError(EfficientDetError):
    """A training callback (user's or logger) raised: names the callback and the event."""


class TrainingDiverged(EfficientDetError):
    """Training stopped at a diverging loss: the trainer after ``max_bad_steps`` rollbacks (its
    last good checkpoint is kept), the Lightning adapter at the first non-finite loss or gradient
    norm (the model keeps the last good step's weights and BatchNorm statistics)."""
