"""What every workload's flow module does the same way: publish an artifact, and run as
``python -m flows.<workload>.flow``.

Flow-side (imports prefect when called): body modules never import it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

USAGE = """usage: python -m {module} [NAME=VALUE ...]   run the flow once; other parameters default
       python -m {module} --demo [WORKDIR]     run the workload's demo on generated data

VALUE is JSON where it parses (3, 0.5, true, null, ["a","b"]), else a string (2024-01-31,
200MB); Prefect validates each against the flow's parameter schema."""


def publish_artifact(
    kind: Literal["table", "markdown"], data: Any, *, key: str, description: str
) -> bool:
    """Publish a table (a list of rows) or a markdown artifact of the current run; False (and a
    warning in the run's log) when it could not be published: a report never changes the
    run's outcome."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    try:
        if kind == "table":
            create_table_artifact(data, key=key, description=description)
        else:
            create_markdown_artifact(data, key=key, description=description)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the work stands
        get_run_logger().warning("could not publish the %s artifact %r: %s", kind, key, exc)
        return False
    return True


def parse_arguments(argv: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` words as the flow's keyword arguments (VALUE as JSON where it parses)."""
    arguments: dict[str, Any] = {}
    for word in argv:
        name, equals, text = word.partition("=")
        if not equals or not name.isidentifier():
            raise ValueError(f"expected NAME=VALUE, got {word!r}")
        try:
            arguments[name] = json.loads(text)
        except ValueError:
            arguments[name] = text
    return arguments


def run_if_main(module: str, flow: Callable[..., Any], demo: Callable[[Path], str]) -> None:
    """The last line of every workload's flow module, ``run_if_main(__name__, flow, demo)``:
    nothing on import; run as ``python -m flows.<workload>.flow``, :func:`main` and exit."""
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        sys.exit(main(flow, demo, prog=spec.name if spec else module))


def main(
    flow: Callable[..., Any],
    demo: Callable[[Path], str],
    argv: Sequence[str] | None = None,
    prog: str = "flows.<workload>.flow",
) -> int:
    """Run the flow with ``NAME=VALUE`` arguments and print its summary as JSON, or
    ``--demo [WORKDIR]`` and print the demo's line; the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] in (["-h"], ["--help"]):
        print(USAGE.format(module=prog))
        return 0
    if words[:1] == ["--demo"]:
        workdir = Path(words[1]) if len(words) > 1 else Path(tempfile.mkdtemp(prefix="headroom-"))
        print(demo(workdir))
        return 0
    try:
        arguments = parse_arguments(words)
    except ValueError as exc:
        print(f"{exc}\n{USAGE.format(module=prog)}", file=sys.stderr)
        return 2
    print(json.dumps(flow(**arguments), indent=2, default=str))
    return 0
