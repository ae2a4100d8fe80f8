"""SCL, DSCL and PBSD (long-tailed recognition): ``params.py`` (torch-free) and ``method.py``."""
