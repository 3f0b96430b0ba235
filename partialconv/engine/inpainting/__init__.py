"""The inpainting engine (scripts/train_inpainting.py, inpaint.py, eval_inpainting.py): the PConv U-Net's step and
validation (``training``), a trained model's use (``inference``), per-image quality (``metrics``) and TensorBoard
grids (``grid``). Logs, run checkpoints, preemption and AMP are the shared engine's, one level up."""
