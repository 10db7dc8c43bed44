"""Command-line front ends (``build.py``, ``infer.py`` at the top level are thin wrappers)."""
