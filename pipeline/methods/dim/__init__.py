"""Deep InfoMax: ``params.py`` (torch-free) and ``method.py``."""
