"""The `compliance-worker` command: worker, check, sample."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from worker.core import ComplianceError, Policy, load_bundled_policy, load_policy_file
from worker.settings import Settings, settings_table


def _policy_from(path: str | None, env: Mapping[str, str]) -> Policy:
    chosen = path or env.get("POLICY_FILE") or None
    return load_policy_file(chosen) if chosen else load_bundled_policy()


def _settings_help() -> str:
    rows = "\n".join(f"  {variable:<26} default: {default or '(bundled policy)'}" for variable, default in settings_table())
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

    sample = commands.add_parser("sample", help="print a realistic sample catalog as JSON lines")
    sample.add_argument("--count", type=int, default=1000)
    sample.add_argument("--seed", type=int, default=7)
    sample.add_argument("--malformed-ratio", type=float, default=0.01)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if env is None else env
    try:
        if args.command == "check":
            from worker.check import run_check

            return run_check(args.file, _policy_from(args.policy, env), summary_json=args.summary_json)
        if args.command == "sample":
            from worker.sample import generate

            out = sys.stdout.buffer
            for _key, value in generate(args.count, seed=args.seed, malformed_ratio=args.malformed_ratio):
                out.write(value.replace(b"\n", b" ") + b"\n")
            out.flush()
            return 0
        if args.command == "worker":
            from worker.app import run_worker

            settings = Settings.from_env(
                env, worker_web_port=args.web_port, worker_web_host=args.web_host,
                policy_file=args.policy,
            )
            return run_worker(settings)
    except ComplianceError as exc:
        sys.stderr.write(f"compliance-worker {args.command}: {exc.message}\n")
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
