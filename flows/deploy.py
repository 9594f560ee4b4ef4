"""Scheduled runs of the ``mass_catalog`` flow: ``python -m flows.deploy --config FILE [mode]``.

Modes:

``--serve`` (the default)
    ``flow.serve(...)``: registers the deployment with the Prefect API and stays in the foreground, running each
    scheduled (or manually triggered) run in a subprocess. The served flow carries the task runner of the
    configuration's ``[runner]`` section (threads, dask or SLURM; see :mod:`flows.runners`).
``--work-pool NAME``
    Registers the deployment with a persistent Prefect server for a work pool: the code is this project
    directory (``flow.from_source``) and ``prefect worker start --pool NAME`` runs it. A worker imports the
    entrypoint afresh (options given in Python do not travel), so the entrypoint is
    ``flows/mass_catalog.py:scheduled_mass_catalog``, which applies ``[runner]`` itself and runs ``mass_catalog``
    as a subflow. ``prefect deploy`` with ``prefect.yaml`` at the repository root does the same.
``--print``
    Prints the deployment (name, entrypoint, parameters, schedule, where tasks run and, for SLURM, the job script)
    without contacting a Prefect server, a dask scheduler or SLURM.

The configuration is validated before anything else; a bad one is reported as one ``error: ...`` line on stderr
with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.config import RunConfig, load_config
from flows.runners import describe, slurm_job_script, task_runner
from pipeline.errors import ClusterMassError, ConfigError

if TYPE_CHECKING:
    from uuid import UUID

    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = "flows/mass_catalog.py:scheduled_mass_catalog"  # relative to PROJECT_ROOT
DEFAULT_NAME = "mass-catalog-nightly"
DEFAULT_CRON = "0 3 * * *"  # every day at 03:00 in DEFAULT_TIMEZONE
DEFAULT_TIMEZONE = "UTC"


def deployment_parameters(config_path: str | Path, out: str | Path | None = None) -> dict[str, str]:
    """The flow parameters of every scheduled run: absolute paths, so runs do not depend on their working dir."""
    params = {"config": str(Path(config_path).expanduser().resolve())}
    if out is not None:
        params["out"] = str(Path(out).expanduser().resolve())
    return params


def check_schedule(cron: str, timezone: str) -> None:
    """Raise :class:`ConfigError` (one line) unless ``cron`` is a valid cron string and ``timezone`` an IANA zone."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        msg = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"schedule {cron!r} ({timezone}): {msg}") from None


def deployment_options(
    config_path: str | Path,
    *,
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    out: str | Path | None = None,
    cfg: RunConfig | None = None,
) -> dict[str, Any]:
    """Keyword arguments shared by ``flow.to_deployment``, ``flow.serve`` and ``flow.deploy``.

    ``name``, ``schedule`` (a cron schedule in ``timezone``), ``parameters`` (:func:`deployment_parameters`),
    ``description`` and ``tags``. Validates the configuration (unless ``cfg`` is given) and the schedule.
    """
    from prefect.schedules import Cron

    cfg = cfg if cfg is not None else load_config(config_path)
    check_schedule(cron, timezone)
    return {
        "name": name,
        "schedule": Cron(cron, timezone=timezone),
        "parameters": deployment_parameters(config_path, out),
        "description": f"Mass catalog of {Path(config_path).name} ([runner] kind = {cfg.runner.kind!r}), "
                       f"cron '{cron}' ({timezone})",
        "tags": ["clustermass", f"runner:{cfg.runner.kind}"],
    }


def configured_flow(cfg: RunConfig, flow: Flow[..., Any] | None = None) -> Flow[..., Any]:
    """``flow`` (default: :func:`flows.mass_catalog.mass_catalog`) with the task runner of ``cfg.runner``."""
    if flow is None:
        from flows.mass_catalog import mass_catalog as flow
    return flow.with_options(task_runner=task_runner(cfg.runner))


def build_deployment(
    config_path: str | Path,
    *,
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    out: str | Path | None = None,
    flow: Flow[..., Any] | None = None,
) -> RunnerDeployment:
    """The deployment of ``flow`` (default: ``mass_catalog``) for ``config_path``; needs no Prefect server.

    ``flow.with_options(task_runner=task_runner(cfg.runner)).to_deployment(...)`` with the options of
    :func:`deployment_options`. Raises :class:`ConfigError` for a bad configuration or schedule.
    """
    cfg = load_config(config_path)
    options = deployment_options(config_path, name=name, cron=cron, timezone=timezone, out=out, cfg=cfg)
    return configured_flow(cfg, flow).to_deployment(**options)


def serve(config_path: str | Path, *, flow: Flow[..., Any] | None = None, **schedule: Any) -> None:
    """Serve the configured flow on its schedule until interrupted (needs the Prefect API; blocks).

    ``schedule``: ``name``, ``cron``, ``timezone``, ``out`` as for :func:`deployment_options`.
    """
    cfg = load_config(config_path)
    options = deployment_options(config_path, cfg=cfg, **schedule)
    configured_flow(cfg, flow).serve(**options)


def deploy_to_work_pool(
    config_path: str | Path,
    *,
    work_pool: str,
    source: str | Path = PROJECT_ROOT,
    entrypoint: str = ENTRYPOINT,
    **schedule: Any,
) -> UUID:
    """Register the deployment with a persistent Prefect server for the work pool ``work_pool``; its id.

    The code is ``source`` (default: this project directory, which the pool's workers must be able to read) at
    ``entrypoint``. ``schedule``: ``name``, ``cron``, ``timezone``, ``out`` as for :func:`deployment_options`.
    Raises :class:`ConfigError` when the work pool does not exist.

    Registered with ``RunnerDeployment.apply`` rather than ``flow.deploy``: the latter also lists the pool's
    online workers, a request a Prefect 3.8.8 server running on fastapi 0.154 rejects (422: ``limit`` null).
    """
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            raise ConfigError(f"work pool {work_pool!r} does not exist on {client.api_url}; create it with "
                              f"`prefect work-pool create {work_pool} --type process`") from None
    deployment = build_deployment(config_path, flow=Flow.from_source(str(source), entrypoint), **schedule)
    return deployment.apply(work_pool_name=work_pool)


def describe_deployment(deployment: RunnerDeployment, cfg: RunConfig) -> str:
    """What ``--print`` shows: the deployment's name, entrypoint, parameters, schedules and task runner."""
    lines = [
        f"deployment:  {deployment.flow_name}/{deployment.name}",
        f"entrypoint:  {deployment.entrypoint}",
        f"parameters:  {json.dumps(deployment.parameters)}",
    ]
    for item in deployment.schedules or []:
        sched = item.schedule
        lines.append(f"schedule:    cron '{sched.cron}' ({sched.timezone}){'' if item.active else ' (inactive)'}")
    lines.append(f"tasks:       {describe(cfg.runner)}")
    if cfg.runner.kind == "slurm":
        lines += ["SLURM job script of each dask worker job:", slurm_job_script(cfg.runner).rstrip()]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.deploy",
        description="Run the mass_catalog flow on a schedule: serve it from this process (default), deploy it to "
                    "a work pool of a persistent Prefect server, or print the deployment.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="TOML configuration of every run")
    p.add_argument("--out", metavar="DIR", help="run directory (default: the configuration's [output] dir)")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"deployment name (default: {DEFAULT_NAME})")
    p.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default: '{DEFAULT_CRON}', nightly)")
    p.add_argument("--timezone", default=DEFAULT_TIMEZONE, help="IANA timezone of the schedule (default: UTC)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--serve", action="store_true", help="serve the flow from this process (default)")
    mode.add_argument("--work-pool", metavar="NAME", help="deploy to this work pool of a persistent Prefect server")
    mode.add_argument("--print", action="store_true", dest="print_only",
                      help="print the deployment without contacting a server")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    schedule = {"name": args.name, "cron": args.cron, "timezone": args.timezone, "out": args.out}
    try:
        cfg = load_config(args.config)  # before importing Prefect: a bad configuration fails fast
        if args.print_only:
            deployment = build_deployment(args.config, **schedule)
            print(describe_deployment(deployment, cfg))
            return 0
        deployment_options(args.config, cfg=cfg, **schedule)  # the schedule too, before contacting a server
        task_runner(cfg.runner)  # and the runner's packages
    except ClusterMassError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.work_pool:
            deployment_id = deploy_to_work_pool(args.config, work_pool=args.work_pool, **schedule)
            print(f"deployment {args.name} ({deployment_id}) on work pool {args.work_pool!r}; runs start with "
                  f"`prefect worker start --pool {args.work_pool}`")
        else:
            serve(args.config, **schedule)
    except (ClusterMassError, ValueError) as exc:  # e.g. a work pool that does not exist
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
