"""Ballots: (round, proposer id), totally ordered, never reused by two proposers."""

from __future__ import annotations

from typing import Annotated

import msgspec

ROUND_MAX = 2**62  # rounds are stored as 64-bit integers; a larger one is refused as bad input


class Ballot(msgspec.Struct, frozen=True, order=True):
    """Compared as (round, proposer): a higher round wins, the proposer id breaks ties.

    The proposer id carries an incarnation number, so a restarted proposer never reissues
    a ballot it may have used before the restart.
    """

    round: Annotated[int, msgspec.Meta(ge=0, le=ROUND_MAX)]
    proposer: Annotated[str, msgspec.Meta(max_length=256)]

    def next(self, proposer: str) -> Ballot:
        """The smallest ballot of `proposer` above this one."""
        return Ballot(self.round + 1, proposer)

    def __str__(self) -> str:
        return f"{self.round}.{self.proposer}"


ZERO = Ballot(0, "")
