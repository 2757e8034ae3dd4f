"""Production operation on one or more machines: a PostgreSQL-backed Prefect server, process
workers, the zombie-run automation and Dask scale-out (see docs/PRODUCTION.md).

    scripts/prod start|status|stop|deploy
"""
