"""The oracles of our tuners: keras-tuner's, within a time budget, `[[initial]]` first.

Each is keras-tuner's oracle with two mixins: `run.budget.BudgetOracle` (no
trial starts that cannot finish usefully before the deadline) and
`run.ktcompat.InitialFirst` (the space's `[[initial]]` configurations before
random ones; GridSearch walks its grid from the defaults, as keras-tuner's
does). `HyperbandOracle` also counts the trials its brackets run
(`hyperband_trials`), so a progress line's "trial 3 of N" is true.
`run.tuners` builds the tuners on them.
"""

from __future__ import annotations

import math

import keras_tuner as kt

from resnet_tuner.run import budget as _budget
from resnet_tuner.run import ktcompat

__all__ = ["BayesianOptimizationOracle", "GridSearchOracle", "HyperbandOracle",
           "RandomSearchOracle", "hyperband_trials"]


class RandomSearchOracle(_budget.BudgetOracle, ktcompat.InitialFirst,
                         kt.oracles.RandomSearchOracle):
    """keras-tuner's random search oracle; `initial` configurations first."""


class BayesianOptimizationOracle(_budget.BudgetOracle, ktcompat.InitialFirst,
                                 kt.oracles.BayesianOptimizationOracle):
    """keras-tuner's Bayesian oracle; `initial` configurations are its first initial points."""


class GridSearchOracle(_budget.BudgetOracle, kt.oracles.GridSearchOracle):
    """keras-tuner's grid search oracle, within a time budget when one is given."""


def hyperband_trials(max_epochs: int, factor: int, iterations: float = 1) -> int | None:
    """The trials keras-tuner's Hyperband runs: the sizes of its brackets' rounds, summed.

    keras-tuner 1.4's `HyperbandOracle` runs `iterations` times a series of
    brackets (one per power of `factor` up to `max_epochs`); bracket `b` runs
    rounds `0..b` of `ceil(ceil(1 + log_factor(max_epochs)) / (b + 1) * factor^(b - r))`
    models each (`_get_size`), the best of each round going on to the next with
    `factor` times the epochs. A search whose space runs out of new
    configurations, or whose trials fail, runs fewer; never more.

    Args:
        max_epochs, factor, iterations: as keras-tuner's `Hyperband`
            (`iterations` inf or 0: no end, returns None).

    Example:
        >>> hyperband_trials(10, 3), hyperband_trials(2, 3), hyperband_trials(2, 3, 2)
        (30, 2, 4)
    """
    if not iterations or math.isinf(iterations):
        return None
    brackets, epochs = 0, max_epochs
    while epochs >= 1:  # HyperbandOracle._get_num_brackets with min_epochs 1
        epochs /= factor
        brackets += 1
    last_round = math.ceil(1 + math.log(max_epochs, factor))
    per_iteration = sum(math.ceil(last_round / (bracket + 1) * factor ** (bracket - round_))
                        for bracket in range(brackets) for round_ in range(bracket + 1))
    return per_iteration * int(iterations)


class HyperbandOracle(_budget.BudgetOracle, ktcompat.InitialFirst, kt.oracles.HyperbandOracle):
    """keras-tuner's Hyperband oracle; `initial` configurations are its first candidates.

    Its `max_trials` is the number of trials its brackets run
    (`hyperband_trials`), or the `max_trials` given if smaller, so that
    `remaining_trials()` and a progress line's total are true. On a resumed
    search the `hyperband_iterations` given win over the saved ones: raising
    them runs more brackets after the saved ones have ended.

    Args:
        max_trials: stop creating trials after this many (None: when the
            brackets are done), as the other oracles do.
    """

    def __init__(self, *args, max_trials: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        budget = hyperband_trials(self.max_epochs, self.factor, self.hyperband_iterations)
        if budget is None:
            self.max_trials = max_trials
        else:
            self.max_trials = budget if max_trials is None else min(max_trials, budget)

    def set_state(self, state):
        iterations = self.hyperband_iterations
        super().set_state(state)
        self.hyperband_iterations = iterations
