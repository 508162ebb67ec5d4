"""User-facing errors: one line that names the problem and the fix."""


class Msd3dError(Exception):
    """An error caused by user input or environment, shown as one line with a non-zero exit."""


class ConfigError(Msd3dError):
    """A config key, value or file is invalid."""


class UnsupportedByPrior(ConfigError):
    """The chosen prior cannot serve the chosen method (VSD's LoRA on a prior without a network)."""


class ModelLoadError(Msd3dError):
    """Model weights could not be found or loaded."""


class CheckpointError(Msd3dError):
    """A run directory has no usable checkpoint."""


class DiskFullError(Msd3dError):
    """The file system ran out of space (ENOSPC / EDQUOT) while writing ``path``."""

    def __init__(self, path: object, detail: str = "") -> None:
        self.path = path
        super().__init__(f"no space left on device writing {path}{detail}")
