"""SelfCon (multi-exit network): ``params.py`` (torch-free) and ``method.py``."""
