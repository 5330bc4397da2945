"""Tests of the fitness reports and the shared up set (machi.core.fitness)."""

from __future__ import annotations

from dataclasses import replace

from machi.core.fitness import Report, born_of, choose_up, merge


def _r(obs: str, t: int, *unreach: str, down_until: int = 0) -> Report:
    return Report(obs, t, frozenset(unreach), down_until)


def test_merge_keeps_newest_per_observer_and_commutes() -> None:
    """Last writer wins per observer, whatever the merge order."""
    m1 = {"a": _r("a", 1, "b"), "b": _r("b", 5)}
    m2 = {"a": _r("a", 3), "c": _r("c", 2, "a")}
    assert merge(m1, m2) == merge(m2, m1)
    assert merge(m1, m2)["a"].unreachable == frozenset()


def test_one_way_cut_excludes_one_side_deterministically() -> None:
    """a cannot reach b (and so b cannot read a): the largest conflict-free set wins,
    ties broken by names, so everyone with the same reports picks the same chain."""
    reports = {"a": _r("a", 10, "b"), "b": _r("b", 10, "a"), "c": _r("c", 10)}
    assert choose_up("abc", reports, now_ms=20, stale_ms=100) == frozenset("ac")
    assert choose_up("abc", {"a": reports["a"]}, now_ms=20, stale_ms=100) == frozenset("ac")


def test_isolated_node_and_stale_reports() -> None:
    """A node everyone reports unreachable is out; reports older than stale_ms are
    ignored; admin-down members are out until their time passes."""
    reports = {"a": _r("a", 10, "c"), "b": _r("b", 10, "c")}
    assert choose_up("abc", reports, now_ms=20, stale_ms=100) == frozenset("ab")
    assert choose_up("abc", reports, now_ms=500, stale_ms=100) == frozenset("abc")
    held = {"b": _r("b", 10, down_until=300)}
    assert choose_up("abc", held, now_ms=200, stale_ms=1000) == frozenset("ac")
    assert choose_up("abc", held, now_ms=400, stale_ms=1000) == frozenset("abc")


def test_greedy_beyond_exact_limit_is_conflict_free() -> None:
    """More than EXACT_MAX members: the greedy choice still has no conflict inside."""
    names = [f"n{i:02d}" for i in range(16)]
    reports = {n: _r(n, 1, names[(i + 1) % 16]) for i, n in enumerate(names)}
    up = choose_up(names, reports, now_ms=2, stale_ms=100)
    assert len(up) == 8
    for n in up:
        assert not reports[n].unreachable & up


def test_observe_drops_after_misses_and_time_and_strikes_double_both() -> None:
    """A silent member is dropped after misses_min rounds and after_ms; each drop earns a
    strike that doubles both thresholds (up to strikes_max); one answer makes it
    reachable again at once; a strike is forgotten per decay period."""
    from machi.core.fitness import LivenessRule, observe, unreachable_of

    rule = LivenessRule(misses_min=3, after_ms=100, strikes_max=2, strike_decay_ms=10_000)
    live = observe({}, ["x"], {"x"}, now_ms=0, rule=rule)

    def silent_until_dropped(live, t):  # type: ignore[no-untyped-def]
        rounds = 0
        while not unreachable_of(live):
            t += 10
            rounds += 1
            live = observe(live, ["x"], set(), now_ms=t, rule=rule)
        return live, t, rounds

    drops = []
    t = 0
    for _ in range(4):
        live, t2, rounds = silent_until_dropped(live, t)
        drops.append((rounds, t2 - t))
        t = t2 + 10
        live = observe(live, ["x"], {"x"}, now_ms=t, rule=rule)
        assert not unreachable_of(live)
    assert drops == [(10, 100), (20, 200), (40, 400), (40, 400)]
    assert live["x"].strikes == 4
    live = observe(live, ["x"], {"x"}, now_ms=t + 10_000, rule=rule)
    assert live["x"].strikes == 3


def test_equal_up_sets_exclude_the_member_with_more_strikes() -> None:
    """One conflict edge c--d: the largest conflict-free sets tie; the one keeping the
    member that others dropped less often wins (not the name order)."""
    reports = {
        "c": Report("c", 0, frozenset("d")),
        "a": Report("a", 0, frozenset(), strikes=(("c", 2),)),
    }
    assert choose_up("abcde", reports, now_ms=1, stale_ms=100) == frozenset("abde")
    plain = {"c": Report("c", 0, frozenset("d"))}
    assert choose_up("abcde", plain, now_ms=1, stale_ms=100) == frozenset("abce")
    back = Report.from_json(reports["a"].to_json())
    assert back == reports["a"]


def test_ages_are_judged_on_the_receivers_clock() -> None:
    """With birth times on my clock (born_ms), an observer clock far ahead or behind
    mine changes nothing: freshness and admin-down holds follow the report's age."""
    ahead = {"b": _r("b", 9_000_000, "c", down_until=9_000_300)}  # b's clock: far ahead
    # born at my t=100: fresh until 100 + stale, held down for 300 ms of its age
    born = {"b": 100}
    assert choose_up("abc", ahead, now_ms=150, stale_ms=1000, born_ms=born) == frozenset("ac")
    assert choose_up("abc", ahead, now_ms=500, stale_ms=1000, born_ms=born) == frozenset("ab")
    assert choose_up("abc", ahead, now_ms=1_200, stale_ms=1000, born_ms=born) == frozenset(
        "abc")
    behind = {"a": _r("a", 5, "c")}  # a's clock: far behind mine
    assert choose_up("abc", behind, now_ms=10**9, stale_ms=1000,
                     born_ms={"a": 10**9 - 10}) == frozenset("ab")
    # without birth times (one shared clock) the observer's time decides, as before
    assert choose_up("abc", behind, now_ms=10**9, stale_ms=1000) == frozenset("abc")


def test_born_of_takes_the_largest_age_of_the_same_report() -> None:
    """The oldest age any holder gives the merged report wins (ages only grow, so an
    unrenewed report dies out); another version's age and missing ages count as new."""
    new, old = _r("b", 50, "c"), _r("b", 40)
    merged = merge({"b": old}, {"b": new})
    sources = [({"b": new}, {"b": 30}), ({"b": new}, {"b": 70}), ({"b": old}, {"b": 900}),
               ({"b": new}, {})]
    assert born_of(merged, sources, now_ms=1_000) == {"b": 930}
    assert born_of(merged, [({"b": new}, {})], now_ms=1_000) == {"b": 1_000}


def test_a_later_incarnation_beats_a_later_clock() -> None:
    """A restarted observer (host reboot: its clock starts again, lower) is judged by its
    new reports: the incarnation orders one observer's reports before its clock."""
    before = Report("c", 36_000_000, frozenset("a"), incarnation=1)
    after = Report("c", 5_000, frozenset(), incarnation=2)
    assert merge({"c": before}, {"c": after})["c"] == after
    assert merge({"c": after}, {"c": before})["c"] == after
    # within one incarnation the clock decides, as before
    assert merge({"c": after}, {"c": replace(after, time_ms=6_000)})["c"].time_ms == 6_000
    assert choose_up("abc", merge({"c": before}, {"c": after}), now_ms=6_000,
                     stale_ms=100_000_000) == frozenset("abc")


def test_report_json_carries_the_incarnation_and_old_peers_count_as_zero() -> None:
    r = Report("c", 7, frozenset("a"), 0, (("a", 1),), incarnation=3)
    assert Report.from_json(r.to_json()) == r
    legacy = {k: v for k, v in r.to_json().items() if k != "incarnation"}
    assert Report.from_json(legacy).incarnation == 0
