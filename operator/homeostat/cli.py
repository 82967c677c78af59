"""The ``homeostat`` command: parse flags, check the cluster is reachable, then hand over to kopf.

Failing fast with one clear line (instead of kopf retrying a dead API server forever, or a
traceback) is what a person starting the operator by hand, or a crash-looping pod's log, needs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from homeostat import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="homeostat",
        description="Keeps replicated services healthy; asks a human before anything risky.",
    )
    parser.add_argument("--version", action="version", version=f"homeostat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the current cluster")
    run.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, then $KUBECONFIG)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; globs allowed)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    run.add_argument(
        "--peering",
        default=os.environ.get("HOMEOSTAT_PEERING"),
        help="kopf peering name for HA; without it the operator runs standalone",
    )
    run.add_argument(
        "--shard-selector",
        default=os.environ.get("HOMEOSTAT_SHARD_SELECTOR"),
        help="act only on ReplicatedServices matching this label selector, e.g. homeostat.dev/shard=a "
        "(for running several operator deployments side by side)",
    )
    run.add_argument(
        "--peering-lifetime",
        type=float,
        default=float(os.environ.get("HOMEOSTAT_PEERING_LIFETIME") or 60),
        help="seconds a replica's keep-alive counts; a killed active replica is replaced after at most this",
    )
    run.add_argument(
        "--priority",
        type=int,
        default=_env_int("HOMEOSTAT_PRIORITY"),
        help="peering priority (distinct per replica)",
    )
    run.add_argument(
        "--liveness",
        default=os.environ.get("HOMEOSTAT_LIVENESS"),
        help="serve a liveness probe, e.g. http://0.0.0.0:8081/healthz",
    )
    run.add_argument(
        "--log-format", choices=["plain", "json"], default=os.environ.get("HOMEOSTAT_LOG_FORMAT", "plain")
    )
    run.add_argument(
        "--resync-interval",
        type=float,
        default=60.0,
        help="seconds between full reconciles of every service (a safety net behind watch events)",
    )
    run.add_argument("--log-level", choices=["debug", "info", "warning"], default="info")
    run.add_argument(
        "--prometheus-url",
        default=os.environ.get("HOMEOSTAT_PROMETHEUS_URL"),
        help="Prometheus base URL for rollout analysis and autoscaling, e.g. http://prometheus:9090 "
        "(default: $HOMEOSTAT_PROMETHEUS_URL; unset turns metric-driven features off)",
    )
    run.add_argument(
        "--http-port",
        type=int,
        default=_env_int("HOMEOSTAT_HTTP_PORT") if os.environ.get("HOMEOSTAT_HTTP_PORT") else 8080,
        help="port for Slack interactivity (POST /slack/interactions) and /healthz; 0 turns it off "
        "(default: $HOMEOSTAT_HTTP_PORT, else 8080)",
    )
    run.add_argument(
        "--http-bind",
        default=os.environ.get("HOMEOSTAT_HTTP_BIND", "0.0.0.0"),
        help="address the HTTP port binds to (default: $HOMEOSTAT_HTTP_BIND, else 0.0.0.0)",
    )
    run.add_argument(
        "--slack-api-url",
        default=os.environ.get("HOMEOSTAT_SLACK_API_URL"),
        help="Slack Web API base URL (default: $HOMEOSTAT_SLACK_API_URL, else https://slack.com/api/)",
    )
    run.add_argument(
        "--slack-channel",
        default=os.environ.get("HOMEOSTAT_SLACK_CHANNEL"),
        help="default Slack channel for approval requests and notifications ($HOMEOSTAT_SLACK_CHANNEL)",
    )
    run.add_argument(
        "--secrets-dir",
        default=os.environ.get("HOMEOSTAT_SECRETS_DIR"),
        help="directory holding the Slack `bot-token` and `signing-secret` files "
        "($HOMEOSTAT_SECRETS_DIR; without a bot-token Slack is off)",
    )
    run.add_argument(
        "--drain-scope",
        choices=["all", "watched"],
        default=os.environ.get("HOMEOSTAT_DRAIN_SCOPE", "all"),
        help="pods a node drain evicts: all (every namespace; needs cluster-wide pod list and "
        "eviction rights) or watched (only the --namespace ones; others stay on the cordoned node) "
        "($HOMEOSTAT_DRAIN_SCOPE, default all)",
    )
    run.add_argument(
        "--forecast-workers",
        type=_positive_int,
        default=_env_int("HOMEOSTAT_FORECAST_WORKERS"),
        help="worker processes for forecast fits and trend checks "
        "($HOMEOSTAT_FORECAST_WORKERS; default: min(2, CPU count))",
    )
    # Listed for --help only: main() hands `simulate` over before parsing, so the operator
    # never imports numpy and statsmodels it does not use yet.
    sub.add_parser(
        "simulate",
        help="replay a demand trace (CSV) through the scaling policies; see `homeostat simulate -h`",
        add_help=False,
    )
    return parser


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _priority(args: argparse.Namespace) -> int:
    """An explicit priority, else a random one when peering: replicas of one Deployment
    cannot be told apart by flags, and kopf pauses every peer that ties for the top."""
    if args.priority is not None:
        return int(args.priority)
    return secrets.randbelow(2**31 - 1) + 1 if args.peering else 0


def _drop_handler_success(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Handler '") and message.endswith("' succeeded."))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        from homeostat import simulate

        return simulate.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return 2  # pragma: no cover — argparse enforces a command


def _run(args: argparse.Namespace) -> int:
    # Imported here so `homeostat --help` stays fast and works without cluster libraries loaded.
    import kopf

    from homeostat import ports
    from homeostat.adapters import kube, kube_healing, kube_scale, metrics
    from homeostat.adapters import telemetry as prometheus_telemetry
    from homeostat.handlers import runtime as handler_runtime

    try:
        metrics_provider = metrics.from_url(args.prometheus_url)
    except ValueError as exc:
        print(f"homeostat: error: --prometheus-url: {exc}", file=sys.stderr)
        return 2
    try:
        api = kube.load_client(args.kubeconfig, for_kopf=True)
        version = kube.preflight(api)
    except kube.KubeConfigError as exc:
        print(f"homeostat: error: {exc}", file=sys.stderr)
        return 1
    kopf.configure(
        verbose=args.log_level == "debug",
        quiet=args.log_level == "warning",
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object",
    )
    # kopf reports every successful handler run at INFO; with level-based reconciles that is a
    # line per watch event and drowns what the operator actually did.
    logging.getLogger("kopf.objects").addFilter(_drop_handler_success)
    logging.getLogger("homeostat").info("connected to Kubernetes %s at %s", version, api.host)
    logging.getLogger("homeostat").info("metrics backend: %s", metrics_provider or "none configured")
    from homeostat.adapters import approvals as approval_store
    from homeostat.adapters import notifiers, slack

    try:
        chat = notifiers.from_config(
            notifiers.SlackConfig(
                args.slack_api_url or slack.DEFAULT_API_URL, args.slack_channel or "", args.secrets_dir
            )
        )
    except slack.SlackConfigError as exc:
        print(f"homeostat: error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("homeostat").info("approvals and notifications: %s", chat.description)
    approvals_api = approval_store.KubeApprovals(api)
    runtime = handler_runtime.Runtime(
        workloads=kube.KubernetesWorkloads(api),
        credentials=api.connection,
        metrics=metrics_provider or ports.NoMetrics(),
        notifier=chat.notifier,
        # Served on the HTTP port at /metrics; the chart's ServiceMonitor scrapes it.
        telemetry=prometheus_telemetry.PrometheusTelemetry(),
        events=approvals_api,
        scaler=kube_scale.KubernetesScaler(api),
        healing_actions=kube_healing.KubernetesHealing(
            api, drain_namespaces=args.namespace if args.drain_scope == "watched" else ()
        ),
        gate=approvals_api,
        store=approvals_api,
        messenger=chat.messenger,
        settings=handler_runtime.RuntimeSettings(
            resync_seconds=args.resync_interval, http_bind=args.http_bind, http_port=args.http_port or None
        ),
        pool=handler_runtime.ProcessPool(args.forecast_workers),
    )
    memo = kopf.Memo({handler_runtime.MEMO_KEY: runtime})
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = int(args.peering_lifetime)
    if args.shard_selector:
        # Server-side: the API server sends this operator only its shard's services, so every
        # index, loop and child lookup is the shard's alone.
        settings.watching.label_selectors["homeostat.dev", "v1alpha1", "replicatedservices"] = (
            args.shard_selector
        )
    operator = kopf.operator(
        settings=settings,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=_priority(args),
        liveness_endpoint=args.liveness,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        memo=memo,
    )
    # The API server stores JSON up to 10000 levels deep, and kopf decodes, copies and diffs
    # every object it watches by recursion: with Python's default limit (1000) one object
    # nested 600 levels deep made it fail on that object forever (issue 14.11). This limit
    # covers all the API server can hold; the spec parser then refuses the object by name.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 30_000))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_with_housekeeping(operator))
    return 0


async def _with_housekeeping(operator: Coroutine[Any, Any, None]) -> None:
    """The operator, with free heap pages handed back to the OS now and then (adapters.memory)."""
    from homeostat.adapters import memory

    trimming = asyncio.create_task(memory.release_periodically())
    try:
        await operator
    finally:
        trimming.cancel()
