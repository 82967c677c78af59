"""``kubectl homeostat``: decide approvals and steer rollouts from a terminal.

Installed as the ``kubectl-homeostat`` console script, which kubectl finds on PATH as a plugin.
A decision is a vote written to the Approval's status subresource: Kubernetes RBAC on
``approvals/status`` (patch) decides who may vote at all, and the operator checks the voter,
as the API server authenticated them (a SelfSubjectReview), against the request's approvers,
the requester rule, quorum and expiry, exactly as for a Slack click. The plugin then waits for
the operator's answer and prints it.

Rollout commands (pause, resume, promote, abort) write the service's
``homeostat.dev/rollout-command`` annotation as ``<command>/<id>``: RBAC on patching
ReplicatedServices decides who may, the operator applies each id once, and the plugin waits for
the Event that says whether it was applied or why not.

Each subcommand is one ``add_*`` function that registers its parser and one ``cmd_*`` function
that runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from homeostat import ports
from homeostat.adapters import approvals, kube
from homeostat.core import approval as appr
from homeostat.core import children as kids
from homeostat.core import delivery as dl
from homeostat.core import fields

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3


class PluginError(Exception):
    """A one-line error for the user; exit status 1."""


@dataclasses.dataclass
class PluginContext:
    """What every subcommand needs: the API, the namespace in scope, and where to print."""

    approvals: Any  # adapters.approvals.KubeApprovals (sync methods)
    namespace: str
    workloads: Any = None  # adapters.kube.KubernetesWorkloads (sync methods)
    out: Any = sys.stdout
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


# --- approvals ---------------------------------------------------------------------------------


def add_approvals(sub: Any) -> None:
    cmd = sub.add_parser("approvals", help="list approval requests", parents=[common()])
    scope = cmd.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="list in every namespace")
    cmd.set_defaults(run=cmd_approvals)


def cmd_approvals(args: argparse.Namespace, ctx: PluginContext) -> int:
    items = ctx.approvals.list_sync(None if args.all_namespaces else ctx.namespace)
    rows = [_row(item, ctx.clock(), args.all_namespaces) for item in items]
    header = ["NAME", "PHASE", "ACTION", "TARGET", "SERVICE", "RISK", "APPROVALS", "EXPIRES", "REASON"]
    if args.all_namespaces:
        header.insert(0, "NAMESPACE")
    if not rows:
        where = "any namespace" if args.all_namespaces else f"namespace {ctx.namespace}"
        print(f"No approval requests in {where}.", file=ctx.out)
        return EXIT_OK
    _table([header, *sorted(rows)], ctx.out)
    return EXIT_OK


def _row(item: Mapping[str, Any], now: float, with_namespace: bool) -> list[str]:
    meta, spec = item["metadata"], item.get("spec") or {}
    state = appr.State.from_storage(item.get("status"))
    approvals = sum(1 for d in state.decisions if d.verdict is appr.Vote.APPROVE)
    try:
        request = appr.parse_request(spec)
        required, expires = str(request.required), _relative(request.expires_at - now)
        state = appr.expire(request, state, now)
        target = str(request.target)
    except ValueError:
        required, expires, target = "?", "?", "?"
    row = [
        meta["name"],
        state.phase.value,
        str(spec.get("action", "")),
        target,
        str(spec.get("service", "")),
        str(spec.get("risk", "")),
        f"{approvals}/{required}",
        expires if state.phase is appr.ApprovalPhase.PENDING else "-",
        state.reason[:60],
    ]
    return [meta["namespace"], *row] if with_namespace else row


def _relative(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    if seconds < 120:
        return f"in {seconds:.0f}s"
    if seconds < 7200:
        return f"in {seconds / 60:.0f}m"
    return f"in {seconds / 3600:.0f}h"


def _table(rows: Sequence[Sequence[str]], out: Any) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def add_decisions(sub: Any) -> None:
    for verb, verdict in (("approve", appr.Vote.APPROVE), ("deny", appr.Vote.DENY)):
        cmd = sub.add_parser(
            verb,
            help=f"{verb} an approval request (as yourself, checked by the operator)",
            parents=[common()],
        )
        cmd.add_argument("name", help="the Approval's name (see `kubectl homeostat approvals`)")
        cmd.add_argument(
            "--timeout",
            type=float,
            default=30.0,
            help="seconds to wait for the operator's answer (default 30)",
        )
        cmd.set_defaults(run=cmd_decide, verdict=verdict)


def cmd_decide(args: argparse.Namespace, ctx: PluginContext) -> int:
    verdict: appr.Vote = args.verdict
    user, groups = ctx.approvals.whoami()
    if not user:
        raise PluginError("the API server did not tell who you are (SelfSubjectReview returned no user)")
    vote_id = uuid.uuid4().hex[:16]
    vote = {
        "id": vote_id,
        "user": user,
        "groups": list(groups),
        "verdict": verdict.value,
        "at": fields.rfc3339(ctx.clock()),
    }
    _submit(ctx, args.name, vote)
    print(
        f"{verdict.value} submitted for {ctx.namespace}/{args.name} as {user}; waiting for the operator…",
        file=ctx.out,
    )
    deadline = ctx.clock() + args.timeout
    while True:
        answer = _answer(ctx, args.name, vote_id)
        if answer is not None:
            code, text = answer
            print(text, file=ctx.out)
            return code
        if ctx.clock() >= deadline:
            print(
                f"no answer from the operator within {args.timeout:.0f}s; the vote stays queued "
                f"in {args.name}'s status and is judged when the operator runs",
                file=ctx.out,
            )
            return EXIT_NO_ANSWER
        ctx.sleep(0.5)


def _submit(ctx: PluginContext, name: str, vote: Mapping[str, Any]) -> None:
    for _ in range(8):
        body = ctx.approvals.get_sync(ctx.namespace, name)
        if body is None:
            raise PluginError(f"no approval {name!r} in namespace {ctx.namespace}")
        status = body.get("status") or {}
        phase = status.get("phase") or appr.ApprovalPhase.PENDING.value
        if phase != appr.ApprovalPhase.PENDING.value:
            raise PluginError(f"{name} is already {phase.lower()}: {status.get('reason', '')}")
        votes = [*(status.get("votes") or ()), dict(vote)]
        try:
            ctx.approvals.patch_status_sync(
                ctx.namespace, name, {"votes": votes}, body["metadata"]["resourceVersion"]
            )
            return
        except ports.Conflict:
            continue
        except ports.Rejected as exc:
            if str(exc).startswith("403"):
                raise PluginError(
                    f"you may not decide approvals in namespace {ctx.namespace}: RBAC forbids patching "
                    "approvals/status"
                ) from None
            raise PluginError(str(exc)) from None
    raise PluginError(f"{name} kept changing; try again")


def _answer(ctx: PluginContext, name: str, vote_id: str) -> tuple[int, str] | None:
    body = ctx.approvals.get_sync(ctx.namespace, name)
    if body is None:
        raise PluginError(f"approval {name!r} was deleted")
    status = body.get("status") or {}
    for decision in status.get("decisions") or ():
        if decision.get("vote") == vote_id:
            return (
                EXIT_OK,
                f"accepted: {name} is {status.get('phase', 'Pending')} ({status.get('reason', '')})",
            )
    for rejection in status.get("rejections") or ():
        if rejection.get("vote") == vote_id:
            return EXIT_REFUSED, f"refused ({rejection.get('reason')}): {rejection.get('message')}"
    return None


# --- rollouts ----------------------------------------------------------------------------------

_ROLLOUT_COMMANDS = {
    "pause": ("pause", "hold the rollout where it is"),
    "resume": ("resume", "continue a paused rollout"),
    "promote": ("promote-step", "move a canary to its next step (--full: promote to stable now)"),
    "abort": ("abort", "roll back to the stable revision"),
}


def add_rollouts(sub: Any) -> None:
    for verb, (_, text) in _ROLLOUT_COMMANDS.items():
        cmd = sub.add_parser(verb, help=text, parents=[common()])
        cmd.add_argument("name", help="the ReplicatedService")
        if verb == "promote":
            cmd.add_argument("--full", action="store_true", help="skip the remaining steps and promote")
        cmd.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the operator")
        cmd.set_defaults(run=cmd_rollout, verb=verb)
    status = sub.add_parser("status", help="show a service's rollout", parents=[common()])
    status.add_argument("name", help="the ReplicatedService")
    status.set_defaults(run=cmd_status)


def _service_ref(ctx: PluginContext, name: str) -> kids.ChildRef:
    return kids.ChildRef(kids.API_VERSION, kids.KIND, ctx.namespace, name)


def cmd_rollout(args: argparse.Namespace, ctx: PluginContext) -> int:
    kind = "promote-full" if getattr(args, "full", False) else _ROLLOUT_COMMANDS[args.verb][0]
    ref = _service_ref(ctx, args.name)
    if ctx.workloads.read_sync(ref) is None:
        raise PluginError(f"no ReplicatedService {args.name!r} in namespace {ctx.namespace}")
    command_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(ctx.clock()))}-{uuid.uuid4().hex[:6]}"
    try:
        ctx.workloads.merge_patch_sync(
            ref, {"metadata": {"annotations": {dl.ANNOTATION_COMMAND: f"{kind}/{command_id}"}}}
        )
    except ports.Rejected as exc:
        raise PluginError(str(exc)) from None
    except ports.Unavailable as exc:
        if str(exc).startswith("403"):
            raise PluginError(
                f"you may not steer rollouts in namespace {ctx.namespace}: RBAC forbids patching "
                "replicatedservices"
            ) from None
        raise
    print(
        f"{kind} ({command_id}) sent to {ctx.namespace}/{args.name}; waiting for the operator…", file=ctx.out
    )
    deadline = ctx.clock() + args.timeout
    while ctx.clock() < deadline:
        for event in ctx.workloads.events_sync(ref):
            message = str(event.get("message") or "")
            if f"({command_id})" in message:
                print(f"{event.get('reason')}: {message}", file=ctx.out)
                return EXIT_OK if event.get("reason") in ("CommandApplied", "RolledBack") else EXIT_REFUSED
        ctx.sleep(0.5)
    print(
        f"no answer from the operator within {args.timeout:.0f}s; the command stays on the service",
        file=ctx.out,
    )
    return EXIT_NO_ANSWER


def cmd_status(args: argparse.Namespace, ctx: PluginContext) -> int:
    body = ctx.workloads.read_sync(_service_ref(ctx, args.name))
    if body is None:
        raise PluginError(f"no ReplicatedService {args.name!r} in namespace {ctx.namespace}")
    status = body.get("status") or {}
    rollout = status.get("rollout") or {}
    analysis = rollout.get("analysis") or {}
    failure = rollout.get("failure") or {}
    strategy = ((body.get("spec") or {}).get("rollout") or {}).get("strategy", "RollingUpdate")
    rows = [
        ("Service", f"{ctx.namespace}/{args.name}"),
        ("Strategy", strategy),
        ("Phase", str(status.get("phase", "-"))),
        ("Rollout", str(rollout.get("phase", "-"))),
        ("Paused", str(rollout.get("pauseReason") or "-")),
        ("Revision", str(rollout.get("revision") or status.get("currentRevision") or "-")),
        ("Stable", str(status.get("stableRevision") or "-")),
        ("Step", str(rollout.get("step", 0) + 1) if rollout else "-"),
        (
            "Weight",
            f"{rollout.get('achievedWeight', 0)}% (asked {rollout.get('weight', 0)}%)" if rollout else "-",
        ),
        (
            "Analysis",
            f"{analysis.get('runs', 0)} runs, {analysis.get('failures', 0)} failed, "
            f"{analysis.get('inconclusives', 0)} inconclusive, last {analysis.get('lastVerdict') or '-'}",
        ),
        ("Failure", str(failure.get("message") or "-")),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}", file=ctx.out)
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------------

SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (add_approvals, add_decisions, add_rollouts)


def common(default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """Options every subcommand accepts, before or after its name (as kubectl does)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--kubeconfig", default=default, help="kubeconfig path (default: $KUBECONFIG, then ~/.kube/config)"
    )
    options.add_argument(
        "-n", "--namespace", default=default, help="namespace (default: the current context's)"
    )
    return options


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="kubectl homeostat",
        description="Decide Homeostat approval requests and steer rollouts from the command line.",
        parents=[common(None)],
    )
    sub = main_parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        api = kube.load_client(args.kubeconfig)
    except kube.KubeConfigError as exc:
        sys.stderr.write(f"kubectl homeostat: error: {exc}\n")
        return EXIT_REFUSED
    ctx = PluginContext(
        approvals.KubeApprovals(api),
        args.namespace or api.namespace,
        workloads=kube.KubernetesWorkloads(api),
    )
    try:
        return int(args.run(args, ctx))
    except PluginError as exc:
        sys.stderr.write(f"kubectl homeostat: error: {exc}\n")
        return EXIT_REFUSED
    except (ports.Unavailable, ports.Rejected, LookupError) as exc:
        sys.stderr.write(f"kubectl homeostat: error: {exc}\n")
        return EXIT_REFUSED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
