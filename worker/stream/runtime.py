"""What the running worker's parts share: settings, the processor (and so the policy in force), metrics, state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from worker.core import Policy
from worker.settings import Settings
from worker.stream.metrics import ComplianceMetrics
from worker.stream.processing import Overrides, Processor
from worker.stream.state_store import TableStateStore


@dataclass
class Runtime:
    """One per worker process: the app's views, the agent and the policy lifecycle read and swap what is in force here."""

    settings: Settings
    processor: Processor
    metrics: ComplianceMetrics
    store: TableStateStore | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def policy(self) -> Policy:
        return self.processor.policy

    @property
    def overrides(self) -> Overrides:
        return self.processor.overrides
