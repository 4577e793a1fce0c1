"""The budget rules are stated once, in Python (:mod:`taximeter.pricing.budgets`);
each gate must decide exactly as they do. The Redis gate restates them in Lua,
so every case here runs a sequence of admissions, settlements and releases
through a gate and through the Python rules, and compares each answer.

The cases are the edges written out below plus generated sequences (a fixed
seed, so a failure names a case that can be replayed)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetConfig, BudgetState, Reservation, UsageEvent
from taximeter.store.base import Admission, Gate
from taximeter.store.local_gate import LocalGate
from tests.support.factories import usage_event

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
SEED = 20261125
GENERATED = 400


@dataclass(frozen=True)
class Admit:
    tokens: int
    nanos: int


@dataclass(frozen=True)
class Settle:
    index: int  # which earlier admission (among those held) ends
    tokens: int
    nanos: int


@dataclass(frozen=True)
class Release:
    index: int


Step = Admit | Settle | Release


def budget(
    mode: str = "both",
    token_limit: int | None = 1000,
    cost_nanos: int | None = 1000,
    *,
    pause_at_limit: bool = True,
    tokens_used: int = 0,
    cost_used_nanos: int = 0,
    pause_reason: str | None = None,
) -> BudgetState:
    config = BudgetConfig(
        client_id="-",
        mode=mode,
        period="none",
        timezone="UTC",
        currency="BRL",
        token_limit=token_limit,
        cost_limit=None if cost_nanos is None else Decimal(cost_nanos) / 10**9,
        pause_at_limit=pause_at_limit,
    )
    return BudgetState(
        config=config,
        period_start=T0 - timedelta(days=1),
        tokens_used=tokens_used,
        cost_used_nanos=cost_used_nanos,
        paused=pause_reason is not None,
        pause_reason=pause_reason,
    )


EDGES: list[tuple[str, BudgetState, list[Step]]] = [
    ("one token under the limit", budget(tokens_used=999), [Admit(1, 0), Admit(1, 0)]),
    ("exactly at the token limit", budget(tokens_used=1000), [Admit(0, 0)]),
    ("exactly at the cost limit", budget(cost_used_nanos=1000), [Admit(0, 0)]),
    ("tokens do not count in cost mode", budget("cost", tokens_used=10**6), [Admit(10**6, 1)]),
    ("cost does not count in token mode", budget("tokens", cost_used_nanos=10**6), [Admit(1, 10**6)]),
    ("a zero limit refuses at once", budget(token_limit=0), [Admit(0, 0)]),
    ("soft budgets never refuse", budget(pause_at_limit=False, tokens_used=5000), [Admit(5000, 5000)] * 2),
    ("a manual pause wins", budget(tokens_used=10, pause_reason="manual"), [Admit(0, 0)]),
    ("a limit pause keeps its reason", budget(pause_reason="cost_limit"), [Admit(0, 0)]),
    (
        "reservations fill the limit, then settle for less",
        budget(),
        [Admit(600, 0), Admit(600, 0), Admit(1, 0), Settle(0, 50, 0), Release(0), Admit(900, 0)],
    ),
    (
        "a settlement reaching the limit pauses",
        budget(tokens_used=900),
        [Admit(50, 0), Settle(0, 100, 0), Admit(0, 0)],
    ),
    (
        "a settlement of cost pauses at the cost limit",
        budget("cost", token_limit=None),
        [Admit(0, 500), Settle(0, 0, 1000), Admit(0, 0)],
    ),
    ("no limits at all", budget(token_limit=None, cost_nanos=None), [Admit(10**9, 10**9)] * 3),
]


def generated(rng: random.Random) -> tuple[BudgetState, list[Step]]:
    def maybe(value: int) -> int | None:
        return None if rng.random() < 0.2 else value

    state = budget(
        rng.choice(budgets.MODES),
        maybe(rng.randrange(0, 2000)),
        maybe(rng.randrange(0, 2000)),
        pause_at_limit=rng.random() < 0.85,
        tokens_used=rng.randrange(0, 2500),
        cost_used_nanos=rng.randrange(0, 2500),
        pause_reason=rng.choice([None, None, None, "manual", "token_limit", "cost_limit"]),
    )
    steps: list[Step] = []
    for _ in range(rng.randrange(1, 10)):
        kind = rng.random()
        if kind < 0.55:
            steps.append(Admit(rng.randrange(0, 800), rng.randrange(0, 800)))
        elif kind < 0.85:
            steps.append(Settle(rng.randrange(0, 4), rng.randrange(0, 900), rng.randrange(0, 900)))
        else:
            steps.append(Release(rng.randrange(0, 4)))
    return state, steps


def _cases() -> list[tuple[str, BudgetState, list[Step]]]:
    rng = random.Random(SEED)
    return EDGES + [(f"generated #{i} (seed {SEED})", *generated(rng)) for i in range(GENERATED)]


CASES = _cases()


def _event(client_id: str, request_id: str, tokens: int, nanos: int) -> UsageEvent:
    return usage_event(request_id, client_id=client_id, input_tokens=tokens, cost=Decimal(nanos) / 10**9)


async def replay(
    gate: Gate, client_id: str, state: BudgetState, steps: list[Step]
) -> tuple[list[str], list[str]]:
    """Run ``steps`` through ``gate`` and the Python rules side by side: the
    differences, one line each (none when the gate obeys the rules), and the
    gate's answers."""
    state = replace(state, config=replace(state.config, client_id=client_id))
    await gate.load(client_id, state, T0)
    held: list[tuple[str, int, int]] = []  # request id, tokens, nanos
    differences, answers = [], []
    for n, step in enumerate(steps):
        if isinstance(step, Admit):
            request_id = f"{client_id}-{n}"
            reserved = (sum(h[1] for h in held), sum(h[2] for h in held))
            expected = budgets.admission(state, *reserved)
            event = replace(_event(client_id, request_id, step.tokens, step.nanos), estimated=True)
            answer = await gate.admit(Reservation(event, step.nanos, T0 + timedelta(hours=1)), T0)
            answers.append(answer.outcome)
            if (answer.outcome, answer.reason) != expected:
                differences.append(f"step {n} {step}: gate {answer}, rules {expected}")
            if answer.outcome == "ok":
                held.append((request_id, step.tokens, step.nanos))
        elif held:
            request_id, _, _ = held.pop(step.index % len(held))
            if isinstance(step, Settle):
                spent = _event(client_id, request_id, step.tokens, step.nanos)
                await gate.settle(spent, step.nanos, T0)
                state = budgets.apply_usage(state, step.tokens, step.nanos)
            else:
                await gate.release(client_id, request_id)
    return differences, answers


async def test_every_gate_decides_as_the_python_rules(gate: Gate) -> None:
    failures, outcomes = [], []
    for n, (name, state, steps) in enumerate(CASES):
        differences, answers = await replay(gate, f"client-{n}", state, steps)
        failures += [f"{name}: {d}" for d in differences]
        outcomes += answers
    assert failures == []
    # The cases reach every answer, many times over.
    assert min(outcomes.count(o) for o in ("ok", "refused", "busy")) >= 20, outcomes


async def test_the_comparison_catches_a_gate_that_strays() -> None:
    """A gate off by one token at the limit is caught: the replay can fail."""

    class OffByOne(LocalGate):
        async def admit(self, reservation: Reservation, now: datetime) -> Admission:
            answer = await super().admit(reservation, now)
            return replace(answer, outcome="ok", reason=None) if answer.reason == "token_limit" else answer

    _, state, steps = EDGES[1]
    differences, _ = await replay(OffByOne(max_age_s=3600), "stray", state, steps)
    assert differences != []
