"""The project's programs besides train.py, run as modules from the repository root: ``python -m scripts.<name>``."""
