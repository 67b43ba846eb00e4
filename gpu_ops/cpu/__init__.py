"""C kernels for the fast CPU path; see ``build.load`` and ``kernels.c``."""
