"""Root pytest configuration. Notebook kernels started by nbval inherit this
environment: in strict mode a lab check that does not pass raises, so a solution
notebook whose check fails is a failing test, not a printed "NOT YET"."""
import os

os.environ.setdefault("XAILAB_STRICT_CHECKS", "1")
