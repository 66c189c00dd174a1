"""The shipped configs, found as package data and by name.

The YAML files live in the repository's ``configs/``; the package reaches them as ``lit_unlearn/configs`` (in a
checkout a link to ``configs/``, in an installed wheel a copy of it, declared as package data in
``pyproject.toml``), through :mod:`importlib.resources`, so every pipeline finds them wherever the package is
installed and from any working directory.

``--config`` takes a path to a YAML file, or the name of a shipped config: its path under ``configs/`` without
``.yaml`` (``tofu/npo``, ``deeb_roger/base``); :func:`expand_config_args` rewrites the names to paths before the
CLI reads them.

A method's class and defaults live in one file, ``configs/methods/<method>.yaml``; a benchmark's folder keeps a
file of that name only for values specific to the benchmark (a corpus, a batch size, an alias such as
``deeb_roger/gd`` for GradDiff on the year tokens). :func:`method_configs` composes them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from lit_unlearn.core.errors import ConfigError


def config_root() -> Path:
    """The folder of the shipped configs (``configs/`` of the repository, as the package's data)."""
    return Path(str(files("lit_unlearn") / "configs"))


def config_dir(benchmark: str) -> Path:
    """The shipped configs of one benchmark, e.g. ``config_dir("tofu")``."""
    return config_root() / benchmark


def shipped_configs() -> list[str]:
    """The names of every shipped config (``tofu/npo_gd``, ...), sorted."""
    root = config_root()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def resolve_config(name: str) -> Path | str:
    """A YAML path for ``--config name``: an existing file as it is, else the shipped config of that name."""
    path = Path(name).expanduser()
    if path.is_file() or name.lstrip().startswith(("{", "[")) or "\n" in name:  # a file, or inline YAML
        return path if path.is_file() else name
    stem = name[:-5] if name.endswith(".yaml") else name
    shipped = config_root() / f"{stem}.yaml"
    if shipped.is_file():
        return shipped
    near = [n for n in shipped_configs() if n.split("/")[0] == stem.split("/")[0]] or shipped_configs()[:8]
    raise ConfigError(f"--config {name}: no such file, and no shipped config of that name (shipped: "
                      f"{', '.join(near)}; all: python -m lit_unlearn list)")


def expand_config_args(args: list[str]) -> list[str]:
    """``args`` with every ``--config NAME`` / ``--config=NAME`` of a shipped config name turned into its path."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            out += [arg, str(resolve_config(args[i + 1]))]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + str(resolve_config(arg.split("=", 1)[1]))
        out.append(arg)
        i += 1
    return out


def method_class(docs: list[dict]) -> str | None:
    """The method class the parsed configs ``docs`` compose to: the ``model.class_path`` of the last one that sets
    it (its last dotted part), or None."""
    for doc in reversed(docs):
        model = doc.get("model") if isinstance(doc, dict) else None
        if isinstance(model, dict) and "class_path" in model:
            return str(model["class_path"]).rsplit(".", 1)[-1] if model["class_path"] else None
    return None


def method_class_of(path: Path) -> str | None:
    """The ``model.class_path`` a config file sets (its last dotted part), or None."""
    import yaml

    return method_class([yaml.safe_load(Path(path).read_text()) or {}])


def method_configs(benchmark: str, method: str) -> tuple[str, ...]:
    """The configs of ``method`` on ``benchmark``, in the order they compose: the class's own file of
    ``configs/methods/`` (the shortest-named one of that class: ``npo`` for NPO), the variant's overlay there
    (``methods/npo_kl``), then the benchmark's file of that name if it has one (its specific values)."""
    names = set(shipped_configs())
    own, local = f"methods/{method}", f"{benchmark}/{method}"
    found = [n for n in (own, local) if n in names]
    if not found:
        listed = sorted({n.split("/")[1] for n in names if n.startswith(("methods/", f"{benchmark}/"))})
        raise ConfigError(f"--methods {method}: no configs/methods/{method}.yaml or configs/{benchmark}/{method}.yaml "
                          f"(configs: {', '.join(listed)})")
    cls = method_class_of(config_root() / f"{found[0]}.yaml")
    family = sorted((n for n in names if n.startswith("methods/")
                     and method_class_of(config_root() / f"{n}.yaml") == cls), key=lambda n: (len(n), n))
    return tuple(dict.fromkeys([*family[:1], *found]))
