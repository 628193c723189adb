"""Ballots: (round, proposer id), totally ordered, never reused by two proposers."""

from __future__ import annotations

import msgspec


class Ballot(msgspec.Struct, frozen=True, order=True):
    """Compared as (round, proposer): a higher round wins, the proposer id breaks ties.

    The proposer id carries an incarnation number, so a restarted proposer never reissues
    a ballot it may have used before the restart.
    """

    round: int
    proposer: str

    def next(self, proposer: str) -> Ballot:
        """The smallest ballot of `proposer` above this one."""
        return Ballot(self.round + 1, proposer)

    def __str__(self) -> str:
        return f"{self.round}.{self.proposer}"


ZERO = Ballot(0, "")
