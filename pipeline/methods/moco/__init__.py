"""MoCo v2: ``params.py`` (torch-free) and ``method.py``."""
