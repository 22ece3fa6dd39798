"""The `compliance-worker` command: worker, check, simulate, policy, dead-letters, state, override, status, sample."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from worker.core import ComplianceError, Policy, load_bundled_policy, load_policy_file
from worker.core.policy import BUNDLED_POLICY, parse_instant, read_policy_file
from worker.core.errors import ErrorCode
from worker.settings import TOPIC_NAME_RE, Settings, settings_table


def _policy_from(path: str | None, env: Mapping[str, str]) -> Policy:
    chosen = path or env.get("POLICY_FILE") or None
    return load_policy_file(chosen) if chosen else load_bundled_policy()


def _policy_source(path: str | None, env: Mapping[str, str]) -> str:
    return path or env.get("POLICY_FILE") or f"bundled {BUNDLED_POLICY}"


def _instant(text: str) -> float:
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _error_code(text: str) -> str:
    code = text.strip().upper()
    if code not in ErrorCode.__members__:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dead-letter error code ({', '.join(ErrorCode)})")
    return code


def _offset(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an offset or partition (a whole number, 0 or more)")
    return number


def _count(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return number


def _topic_name(text: str) -> str:
    if TOPIC_NAME_RE.fullmatch(text) is None or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid Kafka topic name (letters, digits, . _ -; at most 249)")
    return text


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return seconds


def _settings_help() -> str:
    unset = {"POLICY_FILE": "(bundled policy)"}
    rows = "\n".join(
        f"  {variable:<28} default: {default or unset.get(variable, '(unset)')}" for variable, default in settings_table()
    )
    return "settings (environment variables):\n" + rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compliance-worker",
        description="Tags cross-border listings in Indonesia's restricted product clusters and publishes block/allow decisions.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker", help="run the Faust stream worker", epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--web-port", type=int, help="overrides WORKER_WEB_PORT")
    worker.add_argument("--web-host", help="overrides WORKER_WEB_HOST")
    worker.add_argument("--policy", help="overrides POLICY_FILE")

    check = commands.add_parser("check", help="classify product-upsert JSON lines offline")
    check.add_argument("file", nargs="?", default="-", help="JSON-lines file, or - for standard input (default)")
    check.add_argument("--policy", help="policy file (default: POLICY_FILE, else the bundled policy)")
    check.add_argument("--summary-json", action="store_true", help="print the closing summary as one JSON line")

    simulate = commands.add_parser(
        "simulate", help="what-if: how many decisions a new policy would change on a catalog of events",
    )
    simulate.add_argument("file", help="JSON-lines file of product-upsert events, or - for standard input")
    simulate.add_argument("--policy", required=True, metavar="NEW", help="the new policy file")
    simulate.add_argument("--current", metavar="CURRENT", help="the policy in force (default: POLICY_FILE, else the bundled policy)")
    simulate.add_argument("--at", type=_instant, metavar="WHEN",
                          help="decision time for both policies: a date or RFC 3339 timestamp (default: now)")
    simulate.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    policy = commands.add_parser("policy", help="validate or publish a policy file")
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = actions.add_parser("validate", help="check a policy file with the worker's own loader")
    validate.add_argument("file", help="policy file (YAML or JSON)")
    publish = actions.add_parser(
        "publish", help="validate, then produce the file unchanged to the policy topic (keyed by its version)",
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    publish.add_argument("file", help="policy file (YAML or JSON)")
    publish.add_argument("--bootstrap", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    publish.add_argument("--topic", help="overrides POLICY_TOPIC")
    publish.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker (default: 30)")

    dead_letters = commands.add_parser("dead-letters", help="replay dead letters onto the input topic")
    dead_letter_actions = dead_letters.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay = dead_letter_actions.add_parser(
        "replay", help="re-publish dead letters' original key, bytes and headers (a dry run unless --execute)",
        description="Reads DEAD_LETTER_TOPIC (read_committed, no consumer group) up to its end offsets at the start, "
                    "selects dead letters by the filters and, with --execute, publishes each one's original key, "
                    "value and headers to INPUT_TOPIC (or --to-topic), in dead-letter order, with the header "
                    "compliance-replay-of: TOPIC/PARTITION/OFFSET of the dead letter added after them. Without "
                    "--execute it only says what it would replay. Exit 0 when done, 1 when Kafka failed, 2 for "
                    "bad arguments or settings.",
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("--code", dest="codes", action="append", type=_error_code, metavar="CODE", default=[],
                        help="only dead letters with this error code (repeat for several; default: every code)")
    replay.add_argument("--since", type=_instant, metavar="WHEN",
                        help="only dead letters that failed at or after WHEN (their failed_at): a date (midnight UTC) "
                             "or an RFC 3339 timestamp with its offset")
    replay.add_argument("--until", type=_instant, metavar="WHEN", help="only dead letters that failed before WHEN")
    replay.add_argument("--partition", type=_offset, metavar="N", help="only this partition of the dead-letter topic")
    replay.add_argument("--from-offset", type=_offset, metavar="N",
                        help="with --partition: from this dead-letter offset (inclusive)")
    replay.add_argument("--to-offset", type=_offset, metavar="N",
                        help="with --partition: up to this dead-letter offset (inclusive)")
    replay.add_argument("--limit", type=_count, metavar="N", help="replay at most N dead letters")
    replay.add_argument("--to-topic", type=_topic_name, metavar="TOPIC", help="publish here instead of INPUT_TOPIC")
    replay.add_argument("--execute", action="store_true", help="publish (without it: a dry run, nothing is published)")
    replay.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    replay.add_argument("--bootstrap", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    replay.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait for the broker (default: 30)")

    state = commands.add_parser("state", help="the per-product state: move it after the input topic grew")
    state_actions = state.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate = state_actions.add_parser(
        "migrate", help="after INPUT_TOPIC grew, move each product's state to its new partition (a dry run unless --execute)",
        description="After partitions were added to INPUT_TOPIC, reads the state changelog (read_committed) and moves "
                    "each product's state to the changelog partition its events arrive on from now on, as the "
                    "upstream's partitioner places them; the partitioner is found from where the keys are "
                    "(--partitioner auto) or named. With --execute it grows the changelog to the input's partition "
                    "count, writes each moved state to its new partition, then a tombstone where it was. Every worker "
                    "of APP_ID must be stopped. Exit 0 when done (or nothing to do), 1 when Kafka failed (run it "
                    "again: it goes on where it stopped), 2 when it refuses, with one line saying why.",
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_argument("--partitioner", choices=("auto", "murmur2", "crc32", "fnv1a"), default="auto",
                         help="how the upstream producers place keys: murmur2 (Java clients, aiokafka), crc32 "
                              "(librdkafka's default consistent_random, and consistent), fnv1a; auto (default) finds "
                              "it from where the keys are")
    migrate.add_argument("--execute", action="store_true", help="migrate (without it: a dry run, nothing is written)")
    migrate.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    migrate.add_argument("--bootstrap", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    migrate.add_argument("--timeout", type=_seconds, default=30.0,
                         help="seconds to wait for each answer of the broker (default: 30)")

    _override_parsers(commands)

    status = commands.add_parser(
        "status", help="a product's decision in force, reasons, facts and override, as a running worker tells it",
        description="Asks a worker (GET URL/products/PRODUCT_ID; any worker of the group answers for every product) "
                    "and prints the decision in force, its reasons, the policy version, when it was decided, the facts "
                    "it rests on and the product's override. Exit 0 when answered, 3 for an unknown product (no "
                    "worker has decided it), 1 when no worker answers or it cannot answer now (e.g. recovering), 2 "
                    "for bad arguments.",
    )
    status.add_argument("product_id", metavar="PRODUCT_ID")
    status.add_argument("--url", help="the worker's web address (default: http://127.0.0.1:WORKER_WEB_PORT)")
    status.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for the answer (default: 10)")
    status.add_argument("--json", action="store_true", help="print the worker's answer as one JSON object")

    sample = commands.add_parser("sample", help="print a realistic sample catalog as JSON lines")
    sample.add_argument("--count", type=int, default=1000)
    sample.add_argument("--seed", type=int, default=7)
    sample.add_argument("--malformed-ratio", type=float, default=0.01)
    return parser


def _override_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    override = commands.add_parser("override", help="set, clear or list per-product overrides (compliance staff)")
    actions = override.add_subparsers(dest="action", required=True, metavar="ACTION")
    broker_help = "exit 0 when done, 1 when Kafka cannot be reached or did not acknowledge, 2 for bad arguments or settings"
    set_ = actions.add_parser(
        "set", help="publish an override: the product's decisions say DECISION until it expires or is cleared",
        usage="compliance-worker override set PRODUCT_ID --decision allow|block --reason TEXT [--reference ID] "
              "[--expires WHEN] [--author NAME] [--bootstrap SERVERS] [--topic TOPIC] [--timeout SECONDS]",
        description="Validates the override document as the worker will (one line and exit 2 if it is not valid, "
                    "an --expires not in the future included), then publishes it to OVERRIDES_TOPIC keyed by the "
                    "product id (acks=all, idempotent producer), creating the topic compacted with TOPIC_PARTITIONS "
                    "partitions if it is missing. A new override for the product replaces the one before. "
                    f"{broker_help[0].upper()}{broker_help[1:]}.",
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    set_.add_argument("product_id", metavar="PRODUCT_ID")
    set_.add_argument("--decision", metavar="allow|block", help="required: the decision while the override is in force")
    set_.add_argument("--reason", metavar="TEXT", help="required: why (up to 2,000 characters), for the audit trail")
    set_.add_argument("--reference", metavar="ID", help="a ticket or appeal id (up to 128 characters)")
    set_.add_argument("--expires", metavar="WHEN",
                      help="when it stops being in force: an RFC 3339 timestamp with its offset, or a date (midnight "
                           "UTC); written in UTC with milliseconds (default: until cleared)")
    set_.add_argument("--author", metavar="NAME", help="who sets it (default: the OS user)")
    clear = actions.add_parser(
        "clear", help="publish a tombstone: the product's decisions follow the policy again",
        description=f"Publishes a tombstone for the product to OVERRIDES_TOPIC and says what it replaced; {broker_help}.",
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    clear.add_argument("product_id", metavar="PRODUCT_ID")
    listing = actions.add_parser(
        "list", help="every product's latest override, by product id",
        description="Reads OVERRIDES_TOPIC (read_committed, no consumer group) up to its end offsets at the start and "
                    "shows each product's latest record: in force, expired, or invalid with the reason (the worker "
                    f"ignores an invalid record: that product has no override); {broker_help}.",
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--active", action="store_true", help="only the overrides in force now")
    listing.add_argument("--json", action="store_true", help="one JSON object per product (JSON lines)")
    for action in (set_, clear, listing):
        action.add_argument("--bootstrap", metavar="SERVERS", help="overrides KAFKA_BOOTSTRAP_SERVERS")
        action.add_argument("--topic", type=_topic_name, metavar="TOPIC", help="overrides OVERRIDES_TOPIC")
        action.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                            help="seconds to wait for the broker (default: 30)")


def _override_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from worker.commands import overrides

    where = {"bootstrap": args.bootstrap, "topic": args.topic, "timeout": args.timeout}
    if args.action == "set":
        return overrides.run_set(
            env, args.product_id, decision=args.decision, reason=args.reason, reference=args.reference,
            expires=args.expires, author=args.author, **where,
        )
    if args.action == "clear":
        return overrides.run_clear(env, args.product_id, **where)
    return overrides.run_list(env, active=args.active, as_json=args.json, **where)


def _policy_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    data, policy = read_policy_file(args.file)
    if args.action == "validate":
        sys.stdout.write(f"valid: {policy.summary()}\n")
        return 0
    from worker.commands.policy_publish import PublishError, publish_policy
    from worker.kafka.security import KafkaSecurityError, client_options, security_problem

    overrides = {"KAFKA_BOOTSTRAP_SERVERS": args.bootstrap, "POLICY_TOPIC": args.topic}
    settings = Settings.from_env({**env, **{k: v for k, v in overrides.items() if v is not None}})
    # aiokafka logs each failed connection attempt; the one line below says what went wrong instead.
    aiokafka_log = logging.getLogger("aiokafka")
    level, aiokafka_log.level = aiokafka_log.level, logging.CRITICAL
    try:
        published = asyncio.run(publish_policy(
            data, policy.version, bootstrap=settings.bootstrap_servers, topic=settings.policy_topic,
            replication_factor=settings.topic_replication_factor, timeout=args.timeout,
            security=client_options(settings),
        ))
    except PublishError:
        # aiokafka reports a refused handshake or password as "cannot connect"; say which, and that retrying won't help
        problem = asyncio.run(security_problem(settings, min(args.timeout, 10.0)))
        if problem is not None:
            raise KafkaSecurityError(f"cannot connect to Kafka: {problem}") from None
        raise
    finally:
        aiokafka_log.setLevel(level)
    for warning in published.warnings:
        sys.stderr.write(f"compliance-worker policy publish: warning: {warning}\n")
    created = " (created it: compacted, 1 partition)" if published.created_topic else ""
    sys.stdout.write(
        f"published policy {policy.version} ({len(data):,} bytes, digest {policy.digest}) to {published.topic}{created} "
        f"partition {published.partition} offset {published.offset} at {settings.kafka_bootstrap_servers}\n"
    )
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if env is None else env
    command = args.command + (f" {args.action}" if args.command in ("policy", "dead-letters", "state", "override") else "")
    try:
        if args.command == "policy":
            return _policy_command(args, env)
        if args.command == "override":
            return _override_command(args, env)
        if args.command == "status":
            from worker.commands.status import run_status

            return run_status(env, args.product_id, url=args.url, timeout=args.timeout, as_json=args.json)
        if args.command == "dead-letters":
            from worker.commands.dead_letters import Filters, run_replay

            filters = Filters(
                codes=frozenset(args.codes), since=args.since, until=args.until, partition=args.partition,
                from_offset=args.from_offset, to_offset=args.to_offset,
            )
            return run_replay(
                env, filters, to_topic=args.to_topic, execute=args.execute, limit=args.limit, timeout=args.timeout,
                as_json=args.json, bootstrap=args.bootstrap,
            )
        if args.command == "state":
            from worker.commands.state import run_migrate

            return run_migrate(env, partitioner=args.partitioner, execute=args.execute, timeout=args.timeout,
                               as_json=args.json, bootstrap=args.bootstrap)
        if args.command == "simulate":
            from worker.commands.simulate import run_simulate

            current = _policy_from(args.current, env)
            new = load_policy_file(args.policy)
            return run_simulate(
                args.file, current, new, current_source=_policy_source(args.current, env), new_source=args.policy,
                now=args.at, as_json=args.json,
            )
        if args.command == "check":
            from worker.commands.check import run_check

            return run_check(args.file, _policy_from(args.policy, env), summary_json=args.summary_json)
        if args.command == "sample":
            from worker.commands.sample import generate

            out = sys.stdout.buffer
            for _key, value in generate(args.count, seed=args.seed, malformed_ratio=args.malformed_ratio):
                out.write(value.replace(b"\n", b" ") + b"\n")
            out.flush()
            return 0
        if args.command == "worker":
            from worker.stream.app import run_worker

            settings = Settings.from_env(
                env, worker_web_port=args.web_port, worker_web_host=args.web_host,
                policy_file=args.policy,
            )
            return run_worker(settings)
    except ComplianceError as exc:
        sys.stderr.write(f"compliance-worker {command}: {exc.message}\n")
        # publish, replay, migrate, override, status: 1 = the broker or worker failed, try again; 2 (everywhere) = an
        # argument, the policy or a setting is wrong, or the command refuses to run
        return 1 if args.command in ("policy", "dead-letters", "state", "override", "status") and exc.retriable else 2
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
