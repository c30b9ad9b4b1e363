"""The chaos run's checker (tests/helpers/chaos.py runs the sale): one place that judges a
run's history and final state against the promises (the answers documented and in time, no
oversell, one order per user, each order's events once and in order, selling resumed within the
bound after each heal), and the resume times it reports."""

from __future__ import annotations

from collections import Counter, defaultdict

from tests.helpers.chaos import (
    CANCELLED,
    CHANGE_DEFINITE,
    DEADLINE_MARGIN_S,
    FINAL_STATE,
    PAID,
    PENDING,
    REASONS,
    RESUME_BOUND_S,
    RETRYABLE,
    SECKILL_DEFINITE,
    VALID_PATHS,
    Call,
    Event,
    Final,
    Heal,
    History,
)


def check(history: History, final: Final) -> list[str]:
    """Every violation of the promises in the history and the final state; [] when none."""
    return ([f"the database crashed: {c}" for c in final.crashes] + _answers(history.calls)
            + _stock(history, final) + _orders(history.calls, final) + _feed(final)
            + _resumed(history))


def _answers(calls: list[Call]) -> list[str]:
    """Answers from the documented set (refusals with their documented reasons), each within
    its deadline."""
    return ([f"answer outside the documented set: {c}" for c in calls
             if c.code not in RETRYABLE and c.code != "OK"
             and c.reason not in REASONS.get((c.rpc, c.code), set())]
            + [f"answered after its deadline: {c.ended - c.started:.2f}s {c}" for c in calls
               if c.ended - c.started > c.deadline + DEADLINE_MARGIN_S])


def _stock(history: History, final: Final) -> list[str]:
    """No oversell; stock + the units of the active orders = the units added."""
    bad = [f"oversold: stock {final.stock}"] if final.stock < 0 else []
    active_units = sum(q for _, q, state in final.orders.values() if state in (PENDING, PAID))
    if final.stock + active_units != history.units_added:
        bad.append(f"units unbalanced: stock {final.stock} + active {active_units}"
                   f" != added {history.units_added}")
    return bad


def _orders(calls: list[Call], final: Final) -> list[str]:
    """At most one active order a user; every acknowledged order and change durable; no
    order that no call could have placed."""
    bad: list[str] = []
    orders = final.orders
    active_per_user = Counter(u for u, _, state in orders.values() if state in (PENDING, PAID))
    bad += [f"{u} holds {n} active orders" for u, n in active_per_user.items() if n > 1]
    asked_cancel = {c.order_id for c in calls if c.rpc == "CancelOrder"}
    after = {"PayOrder": PAID, "CancelOrder": CANCELLED}
    for c in calls:
        held = orders.get(c.order_id)
        if c.code == "ALREADY_EXISTS" and (held is None or held[0] != c.user):
            bad.append(f"ALREADY_EXISTS naming an order not the user's: {c} -> {held}")
        if c.code != "OK":
            continue
        if c.rpc == "Seckill" and (held is None or held[:2] != (c.user, c.quantity)):
            bad.append(f"acknowledged order lost or changed: {c} -> {held}")
        elif c.rpc == "Seckill" and held is not None and held[2] == CANCELLED \
                and c.order_id not in asked_cancel:
            bad.append(f"order cancelled that nobody cancelled: {c}")
        elif c.rpc in after and (held is None or held[2] != after[c.rpc]):
            bad.append(f"{c.rpc} acknowledged, the order is not so: {c} -> {held}")
    # An order nobody was told of: only for a user with a call the platform left unanswered
    # (the commit went through, its answer did not).
    told = {c.order_id for c in calls if c.rpc == "Seckill" and c.code in ("OK", "ALREADY_EXISTS")}
    unanswered = {c.user for c in calls if c.rpc == "Seckill" and c.code in RETRYABLE}
    bad += [f"order {i} of {user} that no call placed" for i, (user, _, _) in orders.items()
            if i not in told and user not in unanswered]
    return bad


def _feed(final: Final) -> list[str]:
    """Each event once, revisions ascending, each order's changes once on a valid path ending
    in its state; the same events stored, and in JetStream."""
    bad: list[str] = []
    event_ids = [e.event_id for e in final.feed]
    twice = [i for i, n in Counter(event_ids).items() if n > 1]
    if twice:
        bad.append(f"events twice in the feed: {twice[:5]}")
    revisions = [e.revision for e in final.feed]
    if revisions != sorted(set(revisions)):
        bad.append("feed revisions not strictly ascending")
    if sorted(event_ids) != sorted(final.stored_event_ids):
        bad.append(f"feed != stored events: {len(event_ids)} vs {len(final.stored_event_ids)}")
    paths: dict[int, list[str]] = defaultdict(list)
    for e in final.feed:
        paths[e.order.id].append(Event.Type.Name(e.type))
    for i, (_, _, state) in final.orders.items():
        path = tuple(paths.get(i, []))
        if path not in VALID_PATHS:
            bad.append(f"order {i}: events {path}")
        elif FINAL_STATE[path[-1]] != state:
            bad.append(f"order {i}: last event {path[-1]} but state {state}")
    if set(paths) - set(final.orders):
        bad.append(f"events of unknown orders: {sorted(set(paths) - set(final.orders))[:5]}")
    consumed = Counter(final.consumed_ids)
    if set(consumed) != set(event_ids) or any(n > 1 for n in consumed.values()):
        bad.append(f"JetStream consumer: {len(set(consumed) - set(event_ids))} extra,"
                   f" {len(set(event_ids) - set(consumed))} missing,"
                   f" {sum(1 for n in consumed.values() if n > 1)} twice")
    if final.stream_messages != len(event_ids):
        bad.append(f"JetStream stream holds {final.stream_messages} messages for"
                   f" {len(event_ids)} events")
    return bad


def _resumed(history: History) -> list[str]:
    """After each heal a definite Seckill answer, and (when order changes were tried) a
    definite answer to one, started after the heal and ended within the bound. A window cut
    short by the next fault or the sale's end decides nothing (see `resume_times`)."""
    bad: list[str] = []
    for heal, window_end in windows(history):
        for rpcs, definite in (({"Seckill"}, SECKILL_DEFINITE),
                               ({"PayOrder", "CancelOrder"}, CHANGE_DEFINITE)):
            tried = [c for c in history.calls
                     if c.rpc in rpcs and heal.healed <= c.started < window_end]
            if any(c.code in definite and c.ended <= window_end for c in tried):
                continue
            if window_end >= heal.healed + RESUME_BOUND_S and (tried or rpcs == {"Seckill"}):
                bad.append(f"{'/'.join(sorted(rpcs))} not resumed within"
                           f" {RESUME_BOUND_S:g}s of healing {heal.fault}: "
                           f"{Counter((c.code, c.reason) for c in tried)}")
    return bad


def windows(history: History) -> list[tuple[Heal, float]]:
    """Each heal and the end of its resumption window: the bound, or earlier the next fault's
    start or the sale's end."""
    out = []
    for n, heal in enumerate(history.heals):
        end = min(heal.healed + RESUME_BOUND_S, history.ended)
        if n + 1 < len(history.heals):
            end = min(end, history.heals[n + 1].began)
        out.append((heal, end))
    return out


def resume_times(history: History) -> tuple[list[float], int]:
    """Per heal, seconds from the heal to the end of the first definite Seckill answer
    started after it; and how many windows were cut short before one."""
    out, cut = [], 0
    for heal, end in windows(history):
        ends = [c.ended for c in history.calls if c.rpc == "Seckill" and c.code in
                SECKILL_DEFINITE and heal.healed <= c.started and c.ended <= end]
        if ends:
            out.append(min(ends) - heal.healed)
        else:
            cut += 1
    return out, cut
