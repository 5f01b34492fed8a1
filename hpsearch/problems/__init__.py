"""What hpsearch searches: the problem registry (``registry``, the one extension point), each
shipped problem in a module of its own (``usps``, ``house_prices``: data, model, metrics and
baseline as one ``Problem`` entry), the tasks that search a user's own table (``tabular``) or
images (``images``), what every data loader returns (``splits``), and the metrics and classic
baselines the problems share.

Importing this package registers the shipped problems.
"""

# isort: off
# Registered in this order, which the registry lists (usps first, as the lab report has it).
from hpsearch.problems import usps
from hpsearch.problems import house_prices
from hpsearch.problems import tabular
from hpsearch.problems import images

# isort: on
from hpsearch.problems.registry import (
    PROBLEMS,
    Calibration,
    Problem,
    get_problem,
    register_problem,
)
from hpsearch.problems.splits import Splits

__all__ = [
    "PROBLEMS",
    "Calibration",
    "Problem",
    "Splits",
    "get_problem",
    "house_prices",
    "images",
    "register_problem",
    "tabular",
    "usps",
]
