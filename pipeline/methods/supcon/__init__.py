"""SupCon, SimCLR and SupCon-S: ``params.py`` (torch-free) and ``method.py``."""
