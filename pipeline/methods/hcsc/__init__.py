"""HCSC (hierarchical prototypes and selective coding): ``params.py`` (torch-free) and ``method.py``."""
