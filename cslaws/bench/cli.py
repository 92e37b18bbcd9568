"""The `bench` command: `fit / validate / test` through LightningCLI, the law tools and sweeps by name.

`--config formats/int4.yaml` takes a path that exists as is; otherwise it is looked up among the configs
shipped with the package (the repository's `configs/`), so it works from any directory.
"""

from __future__ import annotations

import importlib
import sys
from importlib import resources
from pathlib import Path

ROUTES = {
    "law": "cslaws.laws.cli",
    "capacity": "cslaws.laws.cli",
    "leaderboard": "cslaws.laws.cli",
    "plot": "cslaws.laws.cli",
    "plan": "cslaws.laws.cli",
    "sweep": "cslaws.bench.sweep",
}


def shipped_configs() -> Path:
    return Path(str(resources.files("cslaws.configs")))


def resolve_config(value: str) -> str:
    """A config path as given when it exists, else the shipped config of that name."""
    if Path(value).exists():
        return value
    shipped = shipped_configs() / value
    if shipped.is_file():
        return str(shipped)
    known = sorted(str(p.relative_to(shipped_configs())) for p in shipped_configs().rglob("*.yaml"))
    raise SystemExit(f"bench: config {value!r} is neither a file nor a shipped config; shipped configs: {', '.join(known)}")


def resolve_config_args(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out += [arg, resolve_config(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve_config(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ROUTES:
        return importlib.import_module(ROUTES[argv[0]]).main(argv)
    from cslaws.bench.lightning_cli import run_lightning_cli

    run_lightning_cli(resolve_config_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
