"""Pieces of the ``hf-videomoe`` command line: shared argument types and loaders (`common`) and the `train` command."""
