"""Assignment strategies: round robin, least open tickets, manual; fairness over many tickets."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from workflows.assignment import Candidate, Strategy, choose

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def team(*ids: int, **changes: object) -> list[Candidate]:
    return [replace(Candidate(agent_id=agent_id, open_tickets=0), **changes) for agent_id in ids]


# -- round robin ----------------------------------------------------------------------------------------

def test_round_robin_goes_in_agent_id_order_and_wraps() -> None:
    agents = team(7, 3, 12, 5)  # the order of the candidates does not matter, their ids do
    assert choose("round_robin", agents, last_assigned=None) == 3
    assert choose("round_robin", agents, last_assigned=3) == 5
    assert choose("round_robin", agents, last_assigned=5) == 7
    assert choose("round_robin", agents, last_assigned=7) == 12
    assert choose("round_robin", agents, last_assigned=12) == 3  # wrap-around


def test_round_robin_after_an_agent_who_left() -> None:
    agents = team(3, 5, 12)
    assert choose("round_robin", agents, last_assigned=4) == 5  # 4 is no candidate any more
    assert choose("round_robin", agents, last_assigned=99) == 3
    assert choose("round_robin", agents, last_assigned=0) == 3


def test_round_robin_ignores_open_tickets() -> None:
    agents = [Candidate(1, 50), Candidate(2, 0)]
    assert choose(Strategy.ROUND_ROBIN, agents, last_assigned=2) == 1


def test_round_robin_skips_away_and_inactive_agents() -> None:
    agents = [Candidate(1, 0), Candidate(2, 0, away=True), Candidate(3, 0, active=False), Candidate(4, 0)]
    assert choose("round_robin", agents, last_assigned=1) == 4
    assert choose("round_robin", agents, last_assigned=4) == 1
    assert choose("round_robin", agents, last_assigned=None) == 1


def test_round_robin_when_an_agent_comes_back() -> None:
    agents = team(1, 2, 3)
    away = [replace(agents[1], away=True), agents[0], agents[2]]
    sequence, last = [], None
    for _ in range(4):
        last = choose("round_robin", away, last_assigned=last)
        sequence.append(last)
    assert sequence == [1, 3, 1, 3]
    back = agents  # agent 2 is back: takes the next turn that reaches them
    for _ in range(3):
        last = choose("round_robin", back, last_assigned=last)
        sequence.append(last)
    assert sequence[4:] == [1, 2, 3]


def test_round_robin_is_fair_over_many_tickets() -> None:
    agents = team(11, 4, 23, 8, 15, 42, 16)
    counts: Counter[int] = Counter()
    last = None
    for _ in range(1_000):
        last = choose("round_robin", agents, last_assigned=last)
        assert last is not None
        counts[last] += 1
    assert set(counts) == {agent.agent_id for agent in agents}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == 1_000


def test_round_robin_stays_fair_while_agents_come_and_go() -> None:
    rng = random.Random(6)
    ids = list(range(1, 8))
    away: set[int] = set()
    counts: Counter[int] = Counter()
    last = None
    for ticket in range(2_000):
        if ticket % 50 == 0:  # now and then someone goes on a break or comes back
            away ^= {rng.choice(ids)}
        agents = [Candidate(agent_id, 0, away=agent_id in away) for agent_id in ids]
        last = choose("round_robin", agents, last_assigned=last)
        if last is None:
            assert len(away) == len(ids)
            continue
        assert last not in away
        counts[last] += 1
    # Breaks cost turns, but nobody present is passed over: every agent got a fair share of the tickets.
    assert min(counts.values()) > 2_000 / len(ids) / 2


# -- least open -----------------------------------------------------------------------------------------

def test_least_open_picks_the_fewest_open_tickets() -> None:
    agents = [Candidate(1, 4), Candidate(2, 1), Candidate(3, 3)]
    assert choose("least_open", agents, last_assigned=None) == 2
    assert choose("least_open", agents, last_assigned=2) == 2  # last_assigned plays no part


def test_least_open_tie_goes_to_who_waited_longest_then_lowest_id() -> None:
    agents = [
        Candidate(1, 2, last_assigned_at=T0 + timedelta(minutes=5)),
        Candidate(2, 2, last_assigned_at=T0),
        Candidate(3, 2, last_assigned_at=T0 + timedelta(minutes=1)),
        Candidate(4, 3, last_assigned_at=None),
    ]
    assert choose("least_open", agents, last_assigned=None) == 2
    agents.append(Candidate(9, 2, last_assigned_at=None))  # never assigned: waited longest of all
    assert choose("least_open", agents, last_assigned=None) == 9
    agents.append(Candidate(8, 2, last_assigned_at=None))
    assert choose("least_open", agents, last_assigned=None) == 8
    same = [Candidate(5, 1, last_assigned_at=T0), Candidate(3, 1, last_assigned_at=T0)]
    assert choose("least_open", same, last_assigned=None) == 3


def test_least_open_skips_away_and_inactive_agents() -> None:
    agents = [Candidate(1, 0, away=True), Candidate(2, 0, active=False), Candidate(3, 9)]
    assert choose("least_open", agents, last_assigned=None) == 3


def test_least_open_compares_naive_and_aware_times_without_error() -> None:
    agents = [Candidate(1, 0, last_assigned_at=T0), Candidate(2, 0, last_assigned_at=datetime(2020, 1, 1))]
    assert choose("least_open", agents, last_assigned=None) == 2


def test_least_open_balances_while_tickets_close() -> None:
    """A day of traffic: tickets arrive and agents close them at random. Each ticket goes to an agent
    holding the fewest open tickets, so an assignment never widens the spread beyond one; closing can
    widen it, and the next arrivals close it again."""
    rng = random.Random(1042)
    ids = list(range(1, 8))
    open_tickets = dict.fromkeys(ids, 0)
    last_at: dict[int, datetime | None] = dict.fromkeys(ids)
    given: Counter[int] = Counter()
    now = T0
    for _ in range(1_000):
        now += timedelta(minutes=1)
        agents = [Candidate(agent_id, open_tickets[agent_id], last_assigned_at=last_at[agent_id])
                  for agent_id in ids]
        before = max(open_tickets.values()) - min(open_tickets.values())
        chosen = choose("least_open", agents, last_assigned=None)
        assert chosen is not None
        assert open_tickets[chosen] == min(open_tickets.values())
        open_tickets[chosen] += 1
        last_at[chosen] = now
        given[chosen] += 1
        assert max(open_tickets.values()) - min(open_tickets.values()) <= max(before, 1)
        for _ in range(rng.choice((0, 0, 1, 1, 2))):  # about as many close as arrive
            busy = [agent_id for agent_id, count in open_tickets.items() for _ in range(count)]
            if busy:
                open_tickets[rng.choice(busy)] -= 1  # a random open ticket is closed
    # Then a rush with nobody closing: within a few tickets everyone is within one of each other.
    for _ in range(7 * max(open_tickets.values())):
        agents = [Candidate(agent_id, open_tickets[agent_id], last_assigned_at=last_at[agent_id])
                  for agent_id in ids]
        chosen = choose("least_open", agents, last_assigned=None)
        assert chosen is not None
        open_tickets[chosen] += 1
    assert max(open_tickets.values()) - min(open_tickets.values()) <= 1
    assert min(given.values()) > 1_000 / len(ids) / 2  # nobody was starved


def test_least_open_with_equal_loads_takes_turns() -> None:
    """With nobody closing, least-open hands tickets round like round robin, by who waited longest."""
    ids = [3, 1, 2]
    open_tickets = dict.fromkeys(ids, 0)
    last_at: dict[int, datetime | None] = dict.fromkeys(ids)
    order = []
    for minute in range(6):
        agents = [Candidate(a, open_tickets[a], last_assigned_at=last_at[a]) for a in ids]
        chosen = choose("least_open", agents, last_assigned=None)
        assert chosen is not None
        open_tickets[chosen] += 1
        last_at[chosen] = T0 + timedelta(minutes=minute)
        order.append(chosen)
    assert order == [1, 2, 3, 1, 2, 3]


# -- manual, empty, errors -----------------------------------------------------------------------------

def test_manual_leaves_every_ticket_in_the_queue() -> None:
    assert choose("manual", team(1, 2), last_assigned=1) is None
    assert choose(Strategy.MANUAL, [], last_assigned=None) is None


@pytest.mark.parametrize("strategy", list(Strategy))
def test_nobody_to_choose(strategy: Strategy) -> None:
    assert choose(strategy, [], last_assigned=None) is None
    assert choose(strategy, team(1, 2, away=True), last_assigned=1) is None
    assert choose(strategy, team(1, 2, active=False), last_assigned=None) is None
    assert choose(strategy, (Candidate(1, 0, away=True, active=False),), last_assigned=None) is None


@pytest.mark.parametrize("strategy", ["random", "", "Round_Robin", "least-open", None])
def test_unknown_strategy(strategy: object) -> None:
    with pytest.raises(ValueError, match=r"unknown assignment strategy .*'round_robin', 'least_open', 'manual'"):
        choose(strategy, team(1), last_assigned=None)  # type: ignore[arg-type]


def test_unknown_strategy_fails_even_with_nobody_to_choose() -> None:
    with pytest.raises(ValueError, match="unknown assignment strategy"):
        choose("fastest", [], last_assigned=None)


def test_repeated_agent_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="repeat an agent id"):
        choose("least_open", [Candidate(1, 0), Candidate(1, 3)], last_assigned=None)


def test_strategies_are_their_setting_strings() -> None:
    assert [str(member) for member in Strategy] == ["round_robin", "least_open", "manual"]


def test_candidate_is_frozen() -> None:
    candidate = Candidate(1, 0)
    assert candidate.available
    with pytest.raises(AttributeError):
        candidate.open_tickets = 3  # type: ignore[misc]
