"""The inpainting engine (scripts/train_inpainting.py, inpaint.py, eval_inpainting.py): the PConv U-Net's step and
validation (``training``), a trained model's use (``inference``), per-image quality (``metrics``) and TensorBoard
grids (``grid``). Logs, run checkpoints, preemption and AMP are the shared engine's, one level up."""

from ...checkpoint_io import CheckpointError
from ...fileio import WriteError
from ..cli import EXIT_USER_ERROR

# The inpainting programs' expected failures (bad paths, unreadable files, bad values) as run_cli's rule: one line on
# stderr, exit 2.
CLI_ERRORS = [((CheckpointError, FileNotFoundError, ValueError, WriteError), EXIT_USER_ERROR)]
