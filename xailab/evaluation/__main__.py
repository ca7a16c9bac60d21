"""``python -m xailab.evaluation``: compute the course's comparison and shortcut tables
(see ``xailab.evaluation.table``) and write them under ``data/results/``."""
from .table import main

main()
