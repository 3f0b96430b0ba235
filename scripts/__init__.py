"""Thin launchers of the programs in partialconv/programs/, run as modules from the repository root:
``python -m scripts.<name>`` (installed, the same program is the console script ``partialconv-<name>``)."""
