"""The verdicts a policy has already reached for a kind of event, kept for the policy's lifetime and bounded."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.core.classify import Verdict

# (seller at home, ship-from at home, category path, category id, HS code), see classify.judge.
VerdictKey = tuple[bool | str | None, ...]


class VerdictMemo:
    """classify.judge's verdicts that hold for every event with the same key, under one policy.

    A Policy owns one (a new policy starts empty, so no verdict outlives the
    policy it was reached under). classify.judge is the only writer
    (``remember``, for verdicts no seller, date or price decided); it and
    worker/core/fast.py read through ``get``, the dict's own lookup, which costs
    one C call per event. A flood of distinct categories clears it instead of
    growing memory.
    """

    __slots__ = ("_limit", "_verdicts", "get")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._verdicts: dict[VerdictKey, Verdict] = {}
        self.get = self._verdicts.get

    def remember(self, key: VerdictKey, verdict: Verdict) -> None:
        verdicts = self._verdicts
        if len(verdicts) >= self._limit:
            verdicts.clear()  # in place: ``get`` stays bound to this dict
        verdicts[key] = verdict

    def __len__(self) -> int:
        return len(self._verdicts)
