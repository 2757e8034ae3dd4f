"""The pictures of docs/ARCHITECTURE.md, drawn from the code (re-runnable).

    .venv/bin/python scripts/architecture.py [--out docs/img]

- ``architecture-packages.png``: every package of headroom/, flows/ and deployments/ (found
  in the tree) in its layer, and the imports between packages, read from the source's syntax
  tree: a package or an import added shows at the next run. An import from a lower layer to a
  higher one is drawn red, one between two workloads orange.
- ``architecture-task-path.png``: one attempt of a budgeted task, step by step, in the
  process that runs each step. Every function a step names is looked up in its module's
  syntax tree; a name that no longer exists stops the script.

Nothing here imports the project: the packages are read, not run.
"""

from __future__ import annotations

import argparse
import ast
import math
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOPS = ("headroom", "flows", "deployments")

# ---------------------------------------------------------------------------------------------
# The packages and their imports


@dataclass
class Package:
    """A box of the picture: a directory of modules (a workload with its subpackages)."""

    name: str
    modules: list[str]
    subpackages: Counter[str]
    third_party: set[str]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(path: Path) -> str:
    """The box a module file belongs to: its top directory's own modules form one box, each
    directory below it another, a workload's subpackages included in the workload's box. A
    top directory's ``__init__`` that imports from the rest (headroom's public API) is a box
    of its own when the directory has other modules."""
    folders = path.relative_to(ROOT).parent.parts
    if len(folders) == 1 and path.name == "__init__.py" and path.stat().st_size:
        if any(p.name != "__init__.py" for p in path.parent.glob("*.py")):
            return f"{folders[0]} (__init__)"
    return ".".join(folders[:2])


def _imported_names(tree: ast.Module, name: str, is_package: bool) -> Iterator[str]:
    """Every name ``tree`` imports (relative ones made absolute), outside ``if TYPE_CHECKING``
    blocks, which are read by type checkers only."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            stem = node.module or ""
            if node.level:
                stem = ".".join([*here[: len(here) - node.level + 1], *filter(None, [stem])])
            # ``from package import name``: the submodule when there is one (the caller walks
            # up to the longest module that exists).
            yield from (f"{stem}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))


def read_packages() -> tuple[dict[str, Package], Counter[tuple[str, str]]]:
    """The packages, and how many (module, imported module) pairs join each two of them."""
    files = {module_name(p): p for top in TOPS for p in sorted((ROOT / top).rglob("*.py"))}
    packages: dict[str, Package] = {}
    for path in files.values():
        box = packages.setdefault(package_of(path), Package(package_of(path), [], Counter(), set()))
        inner = path.relative_to(ROOT.joinpath(*path.relative_to(ROOT).parts[:2])).parts
        if len(path.relative_to(ROOT).parts) <= 2:
            inner = (path.name,)
        if len(inner) > 1:
            box.subpackages[inner[0]] += path.name != "__init__.py"
        elif path.name != "__init__.py" or path.stat().st_size:
            box.modules.append(path.stem)
    edges: Counter[tuple[str, str]] = Counter()
    for name, path in files.items():
        source = package_of(path)
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            top = imported.split(".")[0]
            if top not in TOPS:
                packages[source].third_party.add(top)
                continue
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        for target in targets:
            if package_of(files[target]) != source:
                edges[source, package_of(files[target])] += 1
    return packages, edges


LAYERS = (
    "deployments: set-up, serve, demo, production",
    "workloads: one package each",
    "what workloads share",
    "headroom's public API, and headroom on Prefect",
    "headroom's mechanisms (no prefect)",
    "headroom core",
)


def layer_of(package: Package) -> int:
    """Its row, from where it lives; a headroom subpackage sits on the Prefect row when it
    imports prefect, below it when not."""
    parts = package.name.split(".")
    if parts[0] == "deployments":
        return 0
    if parts[0] == "flows":
        return 1 if len(parts) > 1 and parts[1] != "common" else 2
    if package.name.endswith("(__init__)"):
        return 3
    if len(parts) == 1:
        return 5
    return 3 if "prefect" in package.third_party else 4


# ---------------------------------------------------------------------------------------------
# Picture 1: the packages


def _contents(package: Package) -> str:
    names = sorted(package.modules, key=lambda m: (m != "__init__", m))
    names += [f"{sub}/ ({count})" for sub, count in sorted(package.subpackages.items())]
    return "\n".join(textwrap.wrap(" · ".join(names), 30))


def _order_rows(packages: dict[str, Package], edges: Counter) -> list[list[str]]:
    """Boxes per row, each row ordered under the boxes that import it (one barycentre pass)."""
    rows: list[list[str]] = [[] for _ in LAYERS]
    for name in sorted(packages):
        rows[layer_of(packages[name])].append(name)
    for upper, row in zip(rows, rows[1:], strict=False):
        place = {name: i / max(1, len(upper) - 1) for i, name in enumerate(upper)}

        def centre(name: str, place: dict[str, float] = place) -> float:
            weights = [(place[s], n) for (s, t), n in edges.items() if t == name and s in place]
            total = sum(n for _, n in weights)
            return sum(x * n for x, n in weights) / total if total else 0.5

        row.sort(key=centre)
    return rows


# Colours of imports by the package imported; red and orange are kept for the two warnings.
EDGE_COLOURS = (
    "#3b6ea5",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#17becf",
    "#bcbd22",
    "#e377c2",
    "#7f7f7f",
    "#1f3f5f",
)
LAYER_COLOURS = ("#d9e7f5", "#e3f1dd", "#eef6e8", "#fbe7cf", "#fdf1dc", "#f1e6f7")


BOX_W, BOX_H, ROW_H, WIDTH = 3.3, 1.75, 2.6, 24.0


def _positions(rows: list[list[str]]) -> dict[str, tuple[float, float]]:
    """The centre of each box: rows top to bottom, boxes spread evenly along each."""
    where = {}
    for level, row in enumerate(rows):
        y = ROW_H * (len(rows) - level) - 1.2
        step = (WIDTH - 0.5) / max(1, len(row))
        where.update({name: (0.25 + step * (i + 0.5), y) for i, name in enumerate(row)})
    return where


def _colours(edges: Counter, where: dict[str, tuple[float, float]]) -> dict[str, str]:
    """A colour per package imported from a layer above (its arrows and its border), the most
    imported first."""
    down: Counter[str] = Counter()
    for (source, target), count in edges.items():
        if where[target][1] < where[source][1]:
            down[target] += count
    targets = [name for name, _ in down.most_common()]
    return {name: EDGE_COLOURS[i % len(EDGE_COLOURS)] for i, name in enumerate(targets)}


def draw_packages(packages: dict[str, Package], edges: Counter, out: Path) -> None:
    rows = _order_rows(packages, edges)
    where = _positions(rows)
    colour_of = _colours(edges, where)
    fig, ax = plt.subplots(figsize=(WIDTH, ROW_H * len(rows) + 1.2))
    ax.set_xlim(-2.8, WIDTH)
    ax.set_ylim(-0.3, ROW_H * len(rows) + 0.6)
    ax.axis("off")
    for level in range(len(rows)):
        y = ROW_H * (len(rows) - level) - 1.2
        ax.text(-2.7, y, textwrap.fill(LAYERS[level], 16), va="center", fontsize=10, style="italic")
    for name, (x, y) in where.items():
        package = packages[name]
        ax.add_patch(
            FancyBboxPatch(
                (x - BOX_W / 2, y - BOX_H / 2),
                BOX_W,
                BOX_H,
                boxstyle="round,pad=0.04",
                facecolor=LAYER_COLOURS[layer_of(package)],
                edgecolor=colour_of.get(name, "#555"),
                linewidth=2.0 if name in colour_of else 1.0,
                zorder=3,
            )
        )
        title = name + ("  [prefect]" if "prefect" in package.third_party else "")
        ax.text(
            x,
            y + BOX_H / 2 - 0.2,
            title,
            ha="center",
            va="top",
            fontsize=10.5,
            weight="bold",
            zorder=4,
        )
        ax.text(
            x,
            y + BOX_H / 2 - 0.55,
            _contents(package),
            ha="center",
            va="top",
            fontsize=7.8,
            family="monospace",
            zorder=4,
        )
    for (source, target), count in sorted(edges.items()):
        ax.add_patch(_import_arrow(packages, edges, where, colour_of, source, target, count))
    ax.set_title(
        "Packages and the imports between them, read from the source. An arrow has the colour "
        "of the imported package's border; its width grows with the modules importing. Red: an "
        "import up a layer; orange: one workload importing another. [prefect]: a module of it "
        "imports prefect.",
        fontsize=11,
        wrap=True,
    )
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _import_arrow(
    packages: dict[str, Package],
    edges: Counter,
    where: dict[str, tuple[float, float]],
    colour_of: dict[str, str],
    source: str,
    target: str,
    count: int,
) -> FancyArrowPatch:
    """From the bottom of the importing box to the top of the imported one, the ends spread
    along the boxes' edges in the order of the other ends; an arc over the row between boxes of
    one row, a red arc for an import up a layer."""
    (sx, sy), (tx, ty) = where[source], where[target]
    below, above = layer_of(packages[target]), layer_of(packages[source])
    if below == above:  # never higher than the gap above the row
        start, end = (sx, sy + BOX_H / 2), (tx, ty + BOX_H / 2)
        rad = min(0.3, 1.2 / abs(tx - sx)) * (-1 if tx > sx else 1)
        style, colour = f"arc3,rad={rad}", "#e07b00" if source.startswith("flows.") else "#777"
    elif below < above:
        start, end = (sx, sy + BOX_H / 2), (tx, ty - BOX_H / 2)
        style, colour = "arc3,rad=0.2", "#d62728"
    else:
        outgoing = sorted((t for s, t in edges if s == source), key=lambda n: where[n][0])
        incoming = sorted((s for s, t in edges if t == target), key=lambda n: where[n][0])
        start = (_spread(sx, outgoing.index(target), len(outgoing)), sy - BOX_H / 2)
        end = (_spread(tx, incoming.index(source), len(incoming)), ty + BOX_H / 2)
        style, colour = "arc3,rad=0.0", colour_of[target]
    return FancyArrowPatch(
        start,
        end,
        connectionstyle=style,
        arrowstyle="-|>",
        mutation_scale=11,
        linewidth=0.6 + 0.9 * math.log2(count),
        color=colour,
        alpha=0.75,
        zorder=2,
    )


def _spread(centre: float, i: int, n: int) -> float:
    return centre + (i - (n - 1) / 2) * min(0.3, BOX_W * 0.9 / max(1, n))


# ---------------------------------------------------------------------------------------------
# Picture 2: one budgeted task's path

LANES = (
    "Prefect server",
    "flow-run process (the task's thread)",
    "fork server / spare",
    "guarded child (body module)",
)


@dataclass(frozen=True)
class Step:
    lane: int
    title: str
    functions: tuple[str, ...]
    server_note: str | None = None


# The numbered list "One budgeted task's path" of docs/ARCHITECTURE.md names the same
# functions (tests/test_architecture_doc.py checks both against the code).
# fmt: off
PATH = (
    Step(1, "the flow calls the task (map_bounded submits one per item)",
         ("headroom.prefect.mapping.map_bounded", "headroom.prefect.task.budgeted_task")),
    Step(0, "Prefect's task engine takes a slot of tag:<tag>, held across the run's retries",
         ("headroom.prefect.waiting.watch_tag_waits",)),
    Step(1, "one attempt: the task run's attempt log",
         ("headroom.prefect.task.execute", "headroom.prefect.attempts.OpenLogs.open")),
    Step(1, "the cap: the tag's cap under the budget, within the host's limit",
         ("headroom.prefect.task.attempt_cap", "headroom.prefect.admission.current_limits",
          "headroom.prefect.admission.current_budget", "headroom.limits.Limits.cap_mb",
          "headroom.prefect.admission.server_host_limit"),
         server_note="the size of memory-mb:<host> (read, cached)"),
    Step(1, "the chunk: shrunk from the run's last OOM, else first size from history",
         ("headroom.prefect.task._choose_chunk", "headroom.prefect.attempts.AttemptLog.last_oom",
          "headroom.sizing.history.History.profile", "headroom.sizing.chunks.first_size",
          "headroom.sizing.chunks.shrink")),
    Step(1, "admission: CPU slots, then ceil(cap) slots of memory-mb:<host> on a lease",
         ("headroom.prefect.admission.admitted", "headroom.prefect.admission.cpu_slots",
          "headroom.prefect.leases.held", "headroom.prefect.leases.acquire"),
         server_note="ceil(cap) slots of memory-mb:<host>, on a lease renewed by one thread"),
    Step(1, "the guard: the call pickled, a memory cgroup where allowed, a child taken",
         ("headroom.prefect.task._run_body", "headroom.isolation.guard.guarded_call",
          "headroom.isolation.cgroup.for_call", "headroom.isolation.guard._start_call",
          "headroom.isolation.spare.take_child")),
    Step(2, "a child forked by the module's fork server, else a waiting spare, else a new one",
         ("headroom.isolation.forkserver.child_for", "headroom.isolation.child.serve_forks",
          "headroom.isolation.child.wait_for_call", "headroom.isolation.spare.start_child",
          "headroom.isolation.spare.hand_call")),
    Step(3, "the child imports flows.<w>.<module>, runs the body, writes the result;"
            " an error's OOM kind",
         ("headroom.isolation.child.main", "headroom.errors.classify_oom")),
    Step(1, "meanwhile the guard samples the child tree's memory, kills it past the cap,"
            " and ends every process of the call",
         ("headroom.isolation.guard._Watch.until_exit",
          "headroom.isolation.proctree.tree_memory_kb", "headroom.isolation.guard._end_call")),
    Step(1, "the outcome: value and peak (learned), or OutOfMemory(kind) or the body's error",
         ("headroom.sizing.history.History.record", "headroom.isolation.guard._failure",
          "headroom.isolation.guard._rebuild")),
    Step(1, "the record: memory-mb slots given back, the attempt logged and published",
         ("headroom.prefect.leases.let_go", "headroom.prefect.attempts.failed_outcome",
          "headroom.prefect.hooks.tag_flow_run", "headroom.prefect.task._bookkeep",
          "headroom.prefect.attempts.AttemptLog.record", "headroom.prefect.report.record_attempt",
          "headroom.prefect.artifacts.publish_attempts",
          "headroom.prefect.attempts.OpenLogs.settle"),
         server_note="the slots released; the attempts table an artifact"),
    Step(1, "retry? the engine asks the predicate; if due, back to 3 with a smaller chunk",
         ("headroom.prefect.task.retry_oom_or_transient",
          "headroom.prefect.attempts.OpenLogs.is_open")),
)
# fmt: on
RETRY_FROM, RETRY_TO = 13, 3


def defined(dotted: str) -> bool:
    """Whether ``dotted`` (module path, then qualified name) is defined in the module's source:
    a top-level function or class, or a method of such a class."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                scope: list[ast.stmt] = ast.parse(path.read_text()).body
                for name in parts[cut:]:
                    found = [
                        node
                        for node in scope
                        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                        and node.name == name
                    ]
                    if not found:
                        return False
                    scope = found[0].body
                return True
    return False


LANE_WIDTHS = (3.0, 6.8, 3.5, 3.5)  # inches; the flow-run lane keeps 1.1 at its right for retry
TITLE_PT, NAMES_PT = 8.6, 7.6
LINE_IN = 1.25 / 72  # a line's height per point of font size


def _step_text(step: Step, width: float) -> tuple[str, str, float]:
    """(title, names, height in inches) of a step's box ``width`` inches wide."""
    title = textwrap.fill(step.title, int(width * 72 / (TITLE_PT * 0.67)))
    names = ", ".join(f.removeprefix("headroom.") for f in step.functions)
    names = textwrap.fill(names, int(width * 72 / (NAMES_PT * 0.68)), break_on_hyphens=False)
    lines = (title.count("\n") + 1) * TITLE_PT + (names.count("\n") + 1) * NAMES_PT
    return title, names, lines * LINE_IN + 0.22


def draw_path(out: Path) -> None:
    missing = [f for step in PATH for f in step.functions if not defined(f)]
    if missing:
        raise SystemExit(f"the task path names functions the code no longer has: {missing}")
    gap, top = 0.15, 0.55
    lefts = [sum(LANE_WIDTHS[:i]) + gap * i for i in range(len(LANE_WIDTHS))]
    box_w = [w - 0.2 for w in LANE_WIDTHS]
    box_w[1] -= 1.1
    texts = [_step_text(step, box_w[step.lane] - 0.15) for step in PATH]
    height = top + sum(h + 0.22 for *_, h in texts) + 0.2
    width = lefts[-1] + LANE_WIDTHS[-1]
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    for left, w, title in zip(lefts, LANE_WIDTHS, LANES, strict=True):
        ax.add_patch(
            plt.Rectangle(
                (left, 0), w, height - 0.05, facecolor="#f4f4f4", edgecolor="#ccc", zorder=0
            )
        )
        ax.text(
            left + w / 2, height - 0.15, title, ha="center", va="top", fontsize=11, weight="bold"
        )
    boxes = []  # (left, top, right, bottom) of each step's box
    y = height - top
    for number, (step, (title, names, h)) in enumerate(zip(PATH, texts, strict=True), start=1):
        x0 = lefts[step.lane] + 0.1
        x1 = x0 + box_w[step.lane]
        boxes.append((x0, y, x1, y - h))
        ax.add_patch(
            FancyBboxPatch(
                (x0, y - h),
                x1 - x0,
                h,
                boxstyle="round,pad=0.02",
                facecolor="white",
                edgecolor="#3b6ea5",
                zorder=2,
            )
        )
        ax.text(
            x0 + 0.08,
            y - 0.1,
            f"{number}. {title}",
            va="top",
            fontsize=TITLE_PT,
            weight="bold",
            zorder=3,
        )
        ax.text(
            x0 + 0.08,
            y - 0.1 - (title.count("\n") + 1) * TITLE_PT * LINE_IN,
            names,
            va="top",
            fontsize=NAMES_PT,
            family="monospace",
            zorder=3,
        )
        if step.server_note:
            _server_note(ax, step.server_note, lefts[0], LANE_WIDTHS[0], x0, y - h / 2)
        y -= h + 0.22
    _sequence_arrows(ax, boxes)
    _retry_arrow(ax, boxes, lefts[1] + LANE_WIDTHS[1] - 0.55)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _server_note(ax, note: str, left: float, lane_w: float, to_x: float, y: float) -> None:
    """A request to the server: what it does there, and a dashed arrow to the step."""
    frame = {"facecolor": "#fffbe6", "edgecolor": "#bbb", "boxstyle": "round,pad=0.25"}
    text = textwrap.fill(note, int(lane_w * 72 / (NAMES_PT * 0.55)) - 4)
    ax.text(
        left + 0.12,
        y,
        text,
        va="center",
        fontsize=NAMES_PT,
        style="italic",
        color="#444",
        bbox=frame,
    )
    ax.add_patch(
        FancyArrowPatch(
            (left + lane_w - 0.1, y),
            (to_x, y),
            arrowstyle="<|-|>",
            mutation_scale=9,
            linestyle="--",
            color="#777",
            zorder=1,
        )
    )


def _sequence_arrows(ax, boxes) -> None:
    """Each step to the next: down within a lane, across from side to side between lanes."""
    for (l0, _, r0, b0), (l1, t1, r1, _) in zip(boxes, boxes[1:], strict=False):
        if abs(l0 - l1) < 0.01:
            start, end = ((l0 + r0) / 2, b0), ((l1 + r1) / 2, t1)
        elif l1 > l0:
            start, end = (r0, b0 + 0.15), (l1, t1 - 0.15)
        else:
            start, end = (l0, b0 + 0.15), (r1, t1 - 0.15)
        ax.add_patch(
            FancyArrowPatch(
                start, end, arrowstyle="-|>", mutation_scale=11, color="#3b6ea5", zorder=1
            )
        )


def _retry_arrow(ax, boxes, x: float) -> None:
    """From the retry step back up to the attempt's first step, along the lane's margin."""
    (_, top_from, right_from, bottom_from) = boxes[RETRY_FROM - 1]
    (_, top_to, right_to, bottom_to) = boxes[RETRY_TO - 1]
    y_from, y_to = (top_from + bottom_from) / 2, (top_to + bottom_to) / 2
    ax.plot([right_from, x, x], [y_from, y_from, y_to], color="#d62728", linewidth=1.6)
    ax.add_patch(
        FancyArrowPatch(
            (x, y_to),
            (right_to, y_to),
            arrowstyle="-|>",
            mutation_scale=13,
            color="#d62728",
            linewidth=1.6,
        )
    )
    ax.text(
        x,
        (y_from + y_to) / 2,
        "retry:\nOOM or\ndeclared\ntransient",
        color="#d62728",
        fontsize=8.5,
        ha="center",
        va="center",
        rotation=0,
        zorder=4,
        bbox={"facecolor": "#f4f4f4", "edgecolor": "none"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    packages, edges = read_packages()
    draw_packages(packages, edges, out / "architecture-packages.png")
    draw_path(out / "architecture-task-path.png")
    print(f"wrote {out / 'architecture-packages.png'} and {out / 'architecture-task-path.png'}")


if __name__ == "__main__":
    main()
