"""The architecture's import contracts, checked on every ``make lint`` (docs/architecture.md).

    python scripts/check_imports.py [ROOT]      # exit 1 with one line per broken contract

Every ``import`` in ``dcsp_dist/`` and ``data_tools/`` is read from the source (``ast``),
at module level and inside functions alike, and these contracts are checked:

1. layers: a module imports only modules of its own layer or of lower ones (``LAYERS``);
2. only ``dcsp_dist.distributed`` imports Horovod;
3. light modules (all of ``core``, the CRF and its workers, the settings and the
   command-line front ends) pull no TensorFlow, Keras or Horovod into a process by
   importing them: their module-level imports, followed transitively, never reach one (the
   front ends import the heavy layers inside the functions that run a job);
4. the CRF, its workers and the settings never import TensorFlow at all, at any level;
5. ``data_tools`` never imports the training or inference layers.

Why a script and not import-linter: import-linter's layer contracts would fit this tree of
packages, but it sees every import alike, while contract 3 is about what importing a module
loads (module-level imports only, followed transitively). One reader of ``ast`` checks all
five contracts in about 150 lines of the standard library.
"""
from __future__ import annotations

import ast
import os
import sys

# Lowest first, one package (or top-level module) each. A module may import its own layer and those
# before it; the tree is these layers (docs/architecture.md).
LAYERS = [
    ("core", ["dcsp_dist.core"]),
    ("settings", ["dcsp_dist.config", "dcsp_dist.configs"]),
    ("run directory and models", ["dcsp_dist.rundir", "dcsp_dist.models"]),
    ("data", ["dcsp_dist.data"]),
    ("the Horovod boundary", ["dcsp_dist.distributed"]),
    ("inference", ["dcsp_dist.inference"]),
    ("training", ["dcsp_dist.training"]),
    ("entry points", ["dcsp_dist.train", "dcsp_dist.evaluate", "dcsp_dist.predict", "dcsp_dist.export", "dcsp_dist"]),
]
HOROVOD_OWNER = "dcsp_dist.distributed"
HEAVY = ("tensorflow", "keras", "horovod")
# Light: importing them loads no TensorFlow. All of core, and these:
LIGHT_TOO = ["dcsp_dist.inference.crf", "dcsp_dist.inference.crf_pool", "dcsp_dist.config", "dcsp_dist.train",
             "dcsp_dist.evaluate", "dcsp_dist.predict", "dcsp_dist.export", "data_tools.saliency",
             "data_tools.saliency.maps", "data_tools.saliency.fetch", "data_tools.verify"]
NEVER_TF = ["dcsp_dist.inference.crf", "dcsp_dist.inference.crf_pool", "dcsp_dist.config"]
TRAINING_AND_INFERENCE = [name for layer, names in LAYERS if layer in ("inference", "training", "entry points")
                          for name in names if name != "dcsp_dist"]


def modules(root: str) -> dict[str, str]:
    """{module name: file} for every module of dcsp_dist and data_tools under ``root``."""
    found = {}
    for package in ("dcsp_dist", "data_tools"):
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), root)[:-3].replace(os.sep, ".")
                    found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    return found


def imports(path: str, name: str, known: dict) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file."""
    tree = ast.parse(open(path).read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    out.append((full if full in known else base, child.lineno, top))
            visit(child, inner)
    visit(tree, True)
    return out


def owner(module: str, names: list[str]) -> str | None:
    """The listed name ``module`` falls under (itself or a package above it)."""
    best = None
    for n in names:
        if (module == n or module.startswith(n + ".")) and (best is None or len(n) > len(best)):
            best = n
    return best


def check(root: str) -> list[str]:
    known = modules(root)
    graph = {m: imports(path, m, known) for m, path in known.items()}
    rank = {n: i for i, (_, names) in enumerate(LAYERS) for n in names}
    layer_names = [n for _, names in LAYERS for n in names]
    problems = []
    for module, found in graph.items():
        here = owner(module, layer_names)
        for target, line, _ in found:
            there = owner(target, layer_names)
            where = f"{known[module]}:{line}"
            if module.startswith("dcsp_dist") and here and there and rank[there] > rank[here]:
                problems.append(f"{where}: layers: {module} ({LAYERS[rank[here]][0]}) imports {target} "
                                f"({LAYERS[rank[there]][0]}), a higher layer")
            if target.split(".")[0] == "horovod" and owner(module, [HOROVOD_OWNER]) is None:
                problems.append(f"{where}: {module} imports {target}: only {HOROVOD_OWNER} speaks to Horovod")
            if module.startswith("data_tools") and owner(target, TRAINING_AND_INFERENCE):
                problems.append(f"{where}: data_tools imports {target} (training/inference)")
            if owner(module, NEVER_TF) == module and target.split(".")[0] in HEAVY:
                problems.append(f"{where}: {module} imports {target}: the CRF, its workers and the settings "
                                f"never use TensorFlow")
    for light in [m for m in known if m.startswith("dcsp_dist.core")] + LIGHT_TOO:
        chain = _heavy_chain(light, graph, known)
        if chain:
            problems.append(f"{known[light]}: importing {light} loads {chain[-1]} (module-level imports: "
                            f"{' -> '.join(chain)}); import it inside the function that needs it")
    return problems


def _heavy_chain(start: str, graph: dict, known: dict) -> list[str] | None:
    """The module-level import path from ``start`` to a heavy package, or None."""
    seen, stack = {start}, [[start]]
    while stack:
        path = stack.pop()
        for target, _, top in graph.get(path[-1], []):
            if not top:
                continue
            if target.split(".")[0] in HEAVY:
                return path + [target]
            parents = [target] + [target.rsplit(".", i)[0] for i in range(1, target.count(".") + 1)]
            for mod in parents:           # importing a.b.c runs a/__init__ and a/b/__init__ too
                if mod in known and mod not in seen:
                    seen.add(mod)
                    stack.append(path + [mod])
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = argv[0] if argv else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problems = check(root)
    for line in problems:
        print(line)
    if problems:
        print(f"check_imports: {len(problems)} broken import contract(s) (docs/architecture.md)", file=sys.stderr)
        return 1
    print(f"check_imports: {len(modules(root))} modules keep the import contracts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
