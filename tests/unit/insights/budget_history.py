"""Realistic simulated compensation history for the budget plan's tests: several scenarios with their own
month-of-year and weekday shapes, a level that grows and wanders (a random walk on its log, month by month),
over-dispersed daily ticket counts (Poisson with a gamma-distributed mean), and a cost per ticket per
scenario that drifts slowly, with day-to-day noise. Seeded: the same seed gives the same history."""

from __future__ import annotations

import math
import random
from datetime import date, timedelta

from services.insights.domain.budget_plan import ScenarioDay

# Share of the yearly mean per month (a marketplace: double-digit sales in Nov/Dec, a dip after new year).
MONTH_SHAPE = (0.95, 0.82, 0.92, 0.95, 0.97, 1.0, 0.98, 0.97, 1.02, 1.05, 1.22, 1.30)
WEEKDAY_SHAPE = (1.12, 1.08, 1.03, 1.0, 0.98, 0.90, 0.89)
SCENARIOS = {  # reason -> (tickets a day, automatic cost per ticket, manual cost per ticket) in minor units
    "late_delivery": (180.0, 310.0, 20.0),
    "lost_in_transit": (40.0, 1900.0, 400.0),
    "damaged": (60.0, 450.0, 520.0),
    "not_received": (30.0, 1200.0, 300.0),
    "seller_cancelled": (25.0, 150.0, 10.0),
}


def simulate(seed: int, first: date, last: date, *, growth: float = 0.008, drift: float = 0.025,
             dispersion: float = 25.0) -> dict[date, dict[str, ScenarioDay]]:
    rng = random.Random(seed)
    shapes = {s: [m * math.exp(rng.gauss(0, 0.03)) for m in MONTH_SHAPE] for s in SCENARIOS}
    walk = {s: 0.0 for s in SCENARIOS}
    cost_walk = {s: 0.0 for s in SCENARIOS}
    out: dict[date, dict[str, ScenarioDay]] = {}
    day, months = first, 0
    while day <= last:
        if day.day == 1 or day == first:
            months += 1
            for s in SCENARIOS:
                walk[s] += rng.gauss(growth, drift)
                cost_walk[s] += rng.gauss(0, 0.02)
        by: dict[str, ScenarioDay] = {}
        for s, (rate, auto, manual) in SCENARIOS.items():
            mean = rate * math.exp(walk[s]) * shapes[s][day.month - 1] * WEEKDAY_SHAPE[day.weekday()]
            lam = rng.gammavariate(dispersion, mean / dispersion)
            n = _poisson(rng, lam)
            cost = math.exp(cost_walk[s])
            by[s] = ScenarioDay(n, round(n * auto * cost * rng.gammavariate(40, 1 / 40)),
                                round(n * manual * cost * rng.gammavariate(10, 1 / 10)))
        out[day] = by
        day += timedelta(days=1)
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:  # normal approximation: exact enough for counts this size, and fast
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
