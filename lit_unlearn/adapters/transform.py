"""PI-Prefix's transformation of a saved prefix, from the command line (no model needed):

    python -m lit_unlearn.adapters.transform pinv checkpoints/sst2/pi_prefix/adapter_trained OUT

writes K <- pinv(K)^T, V <- pinv(V)^T per layer to the new directory OUT with ``"transform": ["pinv"]`` in its
``adapter_config.json``; a prefix that records the transformation already is refused (never inverted twice).
A PIPrefix run applies the transformation itself at the end of training; this is for a prefix trained elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from lit_unlearn.adapters.virtual import CONFIG, WEIGHTS, PrefixParams, pinv_transform, read_config
from lit_unlearn.core.errors import AdapterError


def transform_saved(source: str | Path, target: str | Path) -> None:
    """Write the PI-Prefix transformation of the prefix saved in ``source`` to ``target`` (no model needed);
    refuses a prefix whose ``adapter_config.json`` records that it was transformed already."""
    from safetensors.torch import load_file, save_file

    source, target = Path(source), Path(target)
    config = read_config(source)
    if config.get("adapter_type") != "Prefix":
        raise AdapterError(f"{source} holds a {config.get('adapter_type', 'PEFT')} adapter, not a Prefix")
    if target.exists() and any(target.iterdir()):
        raise AdapterError(f"{target} exists and is not empty; give a new directory")
    tensors = load_file(str(source / WEIGHTS))
    layers, length, width = tensors["keys"].shape
    provider = PrefixParams(layers, length, 1, width)
    provider.load_state_dict(tensors)
    provider.transform = list(config.get("transform", []))
    pinv_transform(provider, str(source))
    target.mkdir(parents=True, exist_ok=True)
    save_file({n: t.contiguous() for n, t in provider.state_dict().items()}, str(target / WEIGHTS))
    (target / CONFIG).write_text(json.dumps({**config, "transform": provider.transform}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="PI-Prefix: write the pseudo-inverse transformation of a saved "
                                     "prefix (python -m lit_unlearn.adapters.transform pinv IN OUT)")
    parser.add_argument("command", choices=["pinv"])
    parser.add_argument("source", help="a saved Prefix (adapter/ or adapter_trained/ of a run)")
    parser.add_argument("target", help="a new directory for the transformed prefix")
    args = parser.parse_args(argv)
    try:
        transform_saved(args.source, args.target)
    except AdapterError as err:
        print(f"lit_unlearn: {err}", file=sys.stderr)
        return 2
    print(f"[lit_unlearn] transformed prefix: {args.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
