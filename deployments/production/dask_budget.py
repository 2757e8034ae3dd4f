"""Scale-out on Dask: budgeted tasks on an existing cluster, each task's cap taken from the
memory limit of the Dask worker that runs it.

    dask worker tls://scheduler:8786 --nworkers 2 --memory-limit 8GiB \\
        --preload deployments.production.dask_budget   # + the TLS flags of docs/PRODUCTION.md

    from deployments.production.dask_budget import on_dask
    on_dask(generate_fraud_dataset, "tls://scheduler:8786")(size="2GB")

The preload (``dask_setup``) runs once in each worker process and sets HEADROOM_MEMORY_LIMIT
to that worker's own memory limit, so headroom's budget there (and with it every tag cap and
chunk size) is the worker's share, not the whole host. The per-host limit
``memory-mb:<hostname>`` still bounds the caps of everything running on that host; create it
by running ``python -m deployments.setup`` on each host. No prefect import at module level:
worker start-up stays fast.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

PRELOAD = "deployments.production.dask_budget"


def worker_budget_mib(worker: Any) -> int | None:
    """The Dask worker's memory limit in MiB, or None when it has none."""
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    return int(limit) >> 20 if limit else None


def dask_setup(worker: Any) -> None:
    """Dask preload hook: this worker's memory limit becomes headroom's budget here."""
    mib = worker_budget_mib(worker)
    if mib is None:
        log.warning("Dask worker %s has no memory limit: headroom detects the host's", worker)
        return
    os.environ["HEADROOM_MEMORY_LIMIT"] = f"{mib}MiB"
    log.info("headroom budget of Dask worker %s: %d MiB (its memory limit)", worker.name, mib)


def task_runner(address: str | None = None, **cluster_kwargs: Any) -> Any:
    """A DaskTaskRunner on the cluster at ``address``, else on a new LocalCluster whose
    workers carry the budget preload (``cluster_kwargs`` go to LocalCluster)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    kwargs = {"processes": True, **cluster_kwargs}
    kwargs["preload"] = [*kwargs.get("preload", []), PRELOAD]
    return DaskTaskRunner(cluster_kwargs=kwargs)


def on_dask(flow: Any, address: str | None = None, **cluster_kwargs: Any) -> Any:
    """The same flow, its tasks run on Dask (``flow.with_options(task_runner=...)``)."""
    return flow.with_options(task_runner=task_runner(address, **cluster_kwargs))
