"""What hpsearch searches: the problem registry (``registry``, the one extension point), the
tasks that search a user's own table (``tabular``) or images (``images``), each shipped data
set as a preset of a task in a module of its own (``usps``, ``house_prices``: its data and
defaults), what every data loader returns (``splits``), and the metrics and classic baselines
the problems share.

Importing this package registers the tasks and the shipped problems.
"""

# isort: off
# Registered in this order, which the registry lists: the tasks, then their presets.
from hpsearch.problems import tabular
from hpsearch.problems import images
from hpsearch.problems import usps
from hpsearch.problems import house_prices

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
