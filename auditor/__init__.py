"""auditor: audit Bandwidth Voice API calls in bulk into a typed Parquet dataset.

Library use (Airflow, Dagster, a notebook)::

    import asyncio
    from auditor import AuditConfig, OAuth2Credentials, Secret, run_audit

    config = AuditConfig(
        inputs=["calls.csv"], output="audit/", account_id="9900000",
        credentials=OAuth2Credentials("my-client-id", Secret("my-client-secret")),
        rate=50, progress=False,
    )
    summary = asyncio.run(run_audit(config))
    print(summary.status_counts, summary.exit_code)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "SCHEMA",
    "Audit",
    "AuditConfig",
    "BasicCredentials",
    "ConfigError",
    "OAuth2Credentials",
    "Progress",
    "RunSummary",
    "Secret",
    "credentials_from_env",
    "run_audit",
]

if TYPE_CHECKING:
    from auditor.config import (
        AuditConfig,
        BasicCredentials,
        ConfigError,
        OAuth2Credentials,
        Secret,
        credentials_from_env,
    )
    from auditor.pipeline import Audit, Progress, RunSummary
    from auditor.records import SCHEMA

# Imported on first use: ``import auditor.retry`` (or the simulator) should not pay for
# loading aiohttp and pyarrow through the whole pipeline.
_LAZY = {
    "AuditConfig": "auditor.config",
    "BasicCredentials": "auditor.config",
    "ConfigError": "auditor.config",
    "OAuth2Credentials": "auditor.config",
    "Secret": "auditor.config",
    "credentials_from_env": "auditor.config",
    "Audit": "auditor.pipeline",
    "Progress": "auditor.pipeline",
    "RunSummary": "auditor.pipeline",
    "SCHEMA": "auditor.records",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'auditor' has no attribute {name!r}")


async def run_audit(config: AuditConfig) -> RunSummary:
    """Run one audit and return its summary.

    Raises :class:`ConfigError`, ``auditor.sources.InputError`` or ``auditor.sink.OutputError``
    before any request when the configuration, inputs or output directory are unusable.
    Refused credentials do not raise: the summary has ``exit_code == 3`` and ``error`` set,
    and everything fetched before is in the dataset.  For live counters, create an
    :class:`Audit` yourself and read ``audit.progress`` while ``audit.run()`` is running.
    """
    from auditor.pipeline import Audit

    return await Audit(config).run()
