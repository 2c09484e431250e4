"""A deterministic greedy covering design (all pairs, plus all triples of chosen factors) for the test matrix.

Given named factors, each with a list of values, and a predicate that says which (partial) rows are allowed,
`covering_design` returns rows (dicts factor -> value) such that every allowed pair of values of two different
factors appears together in at least one row, and so does every allowed combination of values of each factor
triple named in `triples` (a mixed-strength design: the interactions suspected to matter get strength 3, the
rest strength 2). A combination is demanded only where some full allowed row holds it.

The algorithm is the classic greedy one (AETG / IPO style, without randomness): while combinations are
uncovered, start a row from the first uncovered one (triples before pairs, then in factor and value order),
then fill the remaining factors one at a time (the factor with the most values first), each with the allowed
value that completes the most still-uncovered combinations (ties: the value listed first), backtracking where
a choice leaves a later factor no allowed value. The result depends only on the arguments.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import combinations, product
from typing import Any

Row = dict[str, Any]
Allowed = Callable[[Row], bool]
Combination = tuple[tuple[str, int], ...]  # ((factor, value index), ...) in factor order


def _combinations(factors: dict[str, Sequence[Any]], allowed: Allowed, triples: Sequence[tuple[str, ...]]):
    """Every combination to cover whose values `allowed` accepts together, in the order rows are seeded."""
    names = list(factors)
    groups = [tuple(sorted(t, key=names.index)) for t in triples] + list(combinations(names, 2))
    wanted: list[Combination] = []
    for group in groups:
        for indices in product(*(range(len(factors[n])) for n in group)):
            if allowed({n: factors[n][i] for n, i in zip(group, indices, strict=True)}):
                wanted.append(tuple(zip(group, indices, strict=True)))
    return wanted


def covering_design(factors: dict[str, Sequence[Any]], allowed: Allowed = lambda row: True,
                    triples: Sequence[tuple[str, str, str]] = (), initial: Sequence[Row] = ()) -> list[Row]:
    """Rows covering every allowed pair, and every allowed combination of each factor triple in `triples`.

    `allowed` receives partial rows (only some factors set) and must return False only when no completion of
    that row is valid. `initial` rows (full rows, kept first and as given) count as covering what they hold;
    the generator adds rows only for what they leave uncovered."""
    names = list(factors)
    order = sorted(names, key=lambda n: -len(factors[n]))  # stable: ties keep the given order
    seeds = _combinations(factors, allowed, triples)
    uncovered = set(seeds)
    containing: dict[tuple[str, int], list[Combination]] = defaultdict(list)
    for combo in seeds:
        for member in combo:
            containing[member].append(combo)

    def gain(name: str, index: int, choice: dict[str, int]) -> int:
        """Uncovered combinations that setting name = index completes, given the values already chosen."""
        return sum(
            1
            for combo in containing[(name, index)]
            if combo in uncovered and all(n == name or choice.get(n) == i for n, i in combo)
        )

    def complete(choice: dict[str, int]) -> dict[str, int] | None:
        rest = [n for n in order if n not in choice]
        if not rest:
            return choice
        name = rest[0]
        scored = []
        for index in range(len(factors[name])):
            trial = {**choice, name: index}
            if allowed({n: factors[n][k] for n, k in trial.items()}):
                scored.append((-gain(name, index, choice), index))
        for _, index in sorted(scored):
            done = complete({**choice, name: index})
            if done is not None:
                return done
        return None

    rows: list[Row] = [dict(row) for row in initial]
    for row in rows:
        indices = {n: list(factors[n]).index(row[n]) for n in names}
        uncovered -= {combo for combo in uncovered if all(indices[n] == i for n, i in combo)}
    for seed in seeds:  # seeds in order; each row starts from the first combination still uncovered
        if seed not in uncovered:
            continue
        choice = complete(dict(seed))
        if choice is None:  # no valid row holds this combination: it was never coverable
            uncovered.discard(seed)
            continue
        uncovered -= {combo for combo in uncovered if all(choice[n] == i for n, i in combo)}
        rows.append({n: factors[n][choice[n]] for n in names})
    return rows


def uncovered(rows: list[Row], factors: dict[str, Sequence[Any]], allowed: Allowed,
              triples: Sequence[tuple[str, str, str]] = ()) -> list[Row]:
    """The combinations (as partial rows) that an allowed row could hold but no row of `rows` does. Written
    independently of `covering_design` (a plain scan), for the generator's tests."""
    missing = []
    for combo in _combinations(factors, allowed, triples):
        want = {n: factors[n][i] for n, i in combo}
        if not any(all(row[n] == v for n, v in want.items()) for row in rows):
            missing.append(want)
    return missing
