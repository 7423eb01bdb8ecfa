"""The decider table: who is in a key, decided in one place so that "first in" and
"last out" are answered exactly once.

How this works
--------------
Some questions about a group have to be answered once for the whole cluster: when
two connections of one user join a presence channel at the same moment on two
gateways, exactly one of them may announce ``member_added``. No rule over reads of
the gateways can tell them apart (docs/pusher.md, "Why a decider"), so each key has
one *decider*: a gateway chosen by the workers (rendezvous hashing of the key over
the gateway addresses, ``gatewayclient.decider``). The decider keeps, per key, which
connections of which member are in, and answers:

- ``join(key, member, conn)`` -> ``(member_new, key_new)``: the member had no
  connection before this one; the key had no connection at all;
- ``leave(key, member, conn)`` -> ``(member_last, key_last)``: this was the member's
  last connection; the key has none left.

The gateway loop runs one command at a time, so each answer is atomic: of two joins
at once, one is first. A member is any string: a presence user id, or ``""`` for
channels whose members do not matter (only the key's first and last count).

A key the table does not hold is *unknown* (``None``): this gateway restarted empty,
or the gateway set changed and the key moved here. The worker then reads the key's
live members from every gateway and offers them with ``seed(key, members)``; the
first seed wins, later ones are refused (``False``) and their senders just retry
their operation on the seeded key.

Connections that leave while a key is being rebuilt may be missing from the seed
(they were gone from their gateway when it was read) and then leave a key that
never had them: a *ghost* leave. The answer must still say whether the member (or
the key) went away, once: a ghost leave of a member the table does not hold counts
as its last, unless the member was already seen going since the seed
(``Entry.gone``); the same for the key as a whole (``Entry.vacated``). Those marks
matter only for the stragglers of a seed, so :meth:`DecisionTable.sweep` drops them
``settle`` seconds after it.

Every operation carries the *epoch* of its sender: a number naming the gateway set
the sender chose the decider from. A different epoch than the table's empties the
table (its keys may have moved away and back, and what it holds is stale) and is
then the table's epoch; the keys are seeded again as they are used.

Keys that became empty are kept ``linger`` seconds (a join or leave in flight around
the moment a key empties still finds it), then dropped by :meth:`sweep`, so the
table holds only keys in use. Pure: no I/O, the time is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DecisionTable", "Entry", "LINGER", "SETTLE", "check_members"]

LINGER = 60.0
"""Seconds an empty key stays known before :meth:`DecisionTable.sweep` drops it."""
SETTLE = 30.0
"""Seconds after a seed during which ghost leaves are tracked (``gone``, ``vacated``)."""


@dataclass(slots=True)
class Entry:
    """One key: ``members`` -> their connections, and the marks of the ghost rule."""

    members: dict[str, set[str]]
    seeded: float
    """When the key was seeded (the time given to :meth:`DecisionTable.seed`)."""
    conns: int = 0
    """Connections in ``members``, all members together."""
    empty_since: float | None = None
    """When a sweep (or the seed) first saw ``conns`` at 0; ``None`` otherwise."""
    gone: set[str] = field(default_factory=set)
    """Members whose departure was answered since the seed (and not back since)."""
    vacated: bool = False
    """The key's emptying was answered since the seed (and nobody joined since)."""
    settled: bool = False
    """More than ``settle`` seconds since the seed: the marks are no longer kept."""


def check_members(members: object) -> dict[str, list[str]]:
    """A seed's ``{member: [conn, ...]}``; ``TypeError`` when it is not that."""
    if type(members) is not dict or not all(
        type(m) is str and type(c) is list and all(type(x) is str for x in c)
        for m, c in members.items()
    ):
        raise TypeError("members must be a map of str to lists of str")
    return members


class DecisionTable:
    """Keys -> members -> connections, answering join and leave exactly once."""

    __slots__ = ("keys", "epoch", "linger", "settle")

    def __init__(self, linger: float = LINGER, settle: float = SETTLE) -> None:
        self.keys: dict[str, Entry] = {}
        self.epoch: int | None = None
        self.linger = linger
        self.settle = settle

    def _entry(self, epoch: int, key: str) -> Entry | None:
        if epoch != self.epoch:
            self.keys.clear()
            self.epoch = epoch
            return None
        return self.keys.get(key)

    def seed(self, epoch: int, key: str, members: Mapping[str, list[str]], now: float) -> bool:
        """Hold ``key`` with these ``members`` (``{member: [conn, ...]}``) unless it
        is already held: ``True`` if this seed was taken."""
        if self._entry(epoch, key) is not None:
            return False
        held = {member: set(conns) for member, conns in members.items() if conns}
        entry = Entry(held, now, sum(len(c) for c in held.values()))
        if not entry.conns:
            entry.empty_since = now
        self.keys[key] = entry
        return True

    def join(self, epoch: int, key: str, member: str, conn: str) -> tuple[bool, bool] | None:
        """``conn`` of ``member`` is in: ``(member_new, key_new)``, or ``None`` for
        an unknown key (seed it, then ask again)."""
        entry = self._entry(epoch, key)
        if entry is None:
            return None
        conns = entry.members.get(member)
        if conns is None:
            conns = entry.members[member] = set()
        if conn in conns:  # asked twice: it is in already, nothing is new
            return False, False
        member_new, key_new = not conns, entry.conns == 0
        conns.add(conn)
        entry.conns += 1
        entry.empty_since = None
        entry.gone.discard(member)
        entry.vacated = False
        return member_new, key_new

    def leave(self, epoch: int, key: str, member: str, conn: str) -> tuple[bool, bool] | None:
        """``conn`` of ``member`` is out: ``(member_last, key_last)``, or ``None`` for
        an unknown key. A ghost (a ``conn`` the key never held, see the module
        docstring) is the member's last when the member is not held and was not
        answered gone since the seed; the same for the key."""
        entry = self._entry(epoch, key)
        if entry is None:
            return None
        conns = entry.members.get(member)
        if conns is not None and conn in conns:
            conns.discard(conn)
            entry.conns -= 1
            member_last = not conns
            if member_last:
                del entry.members[member]
        elif conns:  # a ghost of a member still held: not its last
            return False, False
        else:  # a ghost of a member not held
            member_last = member not in entry.gone
        key_last = entry.conns == 0 and not entry.vacated
        if not entry.settled:
            if member_last:
                entry.gone.add(member)
            if key_last:
                entry.vacated = True
        return member_last, key_last  # an empty key's time starts at the next sweep

    def sweep(self, now: float) -> None:
        """Drop keys empty for more than ``linger`` seconds, and the ghost marks of
        keys seeded more than ``settle`` seconds ago. About once a second."""
        for key, entry in list(self.keys.items()):
            if not entry.settled and now - entry.seeded > self.settle:
                entry.settled = True
                entry.gone.clear()
                entry.vacated = False
            if entry.conns == 0:
                if entry.empty_since is None:
                    entry.empty_since = now
                elif now - entry.empty_since > self.linger:
                    del self.keys[key]
