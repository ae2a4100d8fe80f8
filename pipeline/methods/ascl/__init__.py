"""ASCL (Hard, AHCL, ASCL) and its BYOL variant: ``params.py`` (torch-free) and ``method.py``."""
