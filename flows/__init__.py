"""The workloads. Importing any of them names the project's limits declaration to headroom,
so a script or a worker that starts outside the checkout finds deployments/limits.toml."""

from pathlib import Path

from headroom.limits import use_declaration

use_declaration(Path(__file__).resolve().parent.parent / "deployments" / "limits.toml")
