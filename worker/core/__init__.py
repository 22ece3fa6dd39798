"""The pure decision core: decoding, policy and classification, with no Kafka, Faust or Prometheus."""

from worker.core.classify import Decision, classify
from worker.core.errors import ComplianceError, InvalidEvent, InvalidPolicy
from worker.core.event import ProductEvent, decode_event
from worker.core.policy import Policy, load_bundled_policy, load_policy_file, parse_policy

__all__ = [
    "ComplianceError",
    "Decision",
    "InvalidEvent",
    "InvalidPolicy",
    "Policy",
    "ProductEvent",
    "classify",
    "decode_event",
    "load_bundled_policy",
    "load_policy_file",
    "parse_policy",
]
