"""The package's layering, read from the source: every import points down (or within a package), never up, and no
import cycle exists. Registries are derived from the class hierarchy, not kept by hand."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "lit_unlearn"
#: lower numbers are lower layers; a module may import its own layer's packages and any lower one
LAYERS = {"core": 0, "models": 1, "adapters": 1, "influence": 2, "eval": 2, "data": 3, "methods": 4, "pipelines": 5, "sweep": 5}
TOP = 5  # cli, callbacks, the pipeline layer and its declarations (tofu, ...), testing and the package root


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    group = parts[1] if len(parts) > 1 else ""
    return LAYERS.get(group, TOP), group


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """``(imported lit_unlearn module, at module level?)`` for every import in the file, functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [(n, id(node) in top) for n in names if n == "lit_unlearn" or n.startswith("lit_unlearn.")]
    return found


def graph() -> dict[str, list[tuple[str, bool]]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_points_down_or_sideways():
    upward = []
    for module, imported in graph().items():
        level, _ = layer_of(module)
        for target, _ in imported:
            if layer_of(target)[0] > level:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_core_imports_only_core():
    for module, imported in graph().items():
        if layer_of(module)[1] == "core":
            assert all(t.startswith("lit_unlearn.core") for t, _ in imported), (module, imported)


def test_packages_of_one_layer_do_not_import_each_other_in_a_cycle():
    edges: dict[str, set[str]] = {}
    for module, imported in graph().items():
        src = layer_of(module)[1]
        for target, _ in imported:
            dst = layer_of(target)[1]
            if src and dst and src != dst:
                edges.setdefault(src, set()).add(dst)
    for a, targets in edges.items():
        for b in targets:
            assert a not in edges.get(b, set()), f"packages {a} and {b} import each other"


def test_module_level_imports_have_no_cycle():
    g = {m: {t for t, top in imported if top} for m, imported in graph().items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g.get(m, ())):
            if t not in g:
                continue
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])


def test_the_layer_map_covers_every_subpackage():
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert subpackages == set(LAYERS), "a new subpackage needs its place in LAYERS"


def test_registries_are_derived_from_the_classes():
    import lit_unlearn.adapters as adapters
    import lit_unlearn.eval as evaluation
    import lit_unlearn.methods as methods
    from lit_unlearn.core.registry import subclasses_in

    assert set(methods.METHODS) == {"Finetune", "GradAscent", "GradDiff", "GradAscentKL", "RandomLabel", "NPO",
                                    "SimNPO", "IDK", "GA1", "GA2", "GA3", "IDK1", "IDK2", "IDK3", "RMU", "RIA",
                                    "FixedWrongFact", "NegationLoRA", "SPUL", "PIPrefix", "TNPO", "GRUN", "RapidUn",
                                    "DPO", "UNDIAL", "SatImp", "WGA", "CEU", "PDU"}
    assert methods.ALL_METHODS == tuple(methods.METHODS.values())
    assert all(getattr(methods, name) is cls for name, cls in methods.METHODS.items())  # importable by name
    assert set(adapters.ADAPTERS) == {"LoRA", "Prefix", "SoftPrompt", "LoReFT"}
    assert set(evaluation.EVALUATORS) == {"answer", "label", "tofu", "mia", "mcq", "gate", "backdoor", "perplexity",
                                        "memorization", "rouge"}

    class LocalMethod(methods.GradAscent):  # defined outside the package: not a registered method
        pass

    assert "LocalMethod" not in subclasses_in(methods.UnlearningMethod, "lit_unlearn.methods")
