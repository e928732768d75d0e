"""Ray Tune searches over methods, LoRA ranks, seeds, data sizes and α choices, and the
tables and plots of docs/RESULTS.md made from their results.

    tune.spec     SearchSpec: the search file (configs/search_*.yaml), validated
    tune.trials   trial points and the stream transformation each method is
    tune.search   run_search: prepare shared items, run / resume the Tune experiment
    tune.table    results table -> RESULTS.md sections and PNG plots
    tune.alpha_trace  α(s) of a stored composer over one episode (paper Fig. 5)
    tune.cli      the `psec tune` subcommand
"""

from tune.search import SearchSummary, run_search
from tune.spec import SearchSpec, load_search

__all__ = ["SearchSpec", "SearchSummary", "load_search", "run_search"]
