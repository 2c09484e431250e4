"""The entry point of the `normkit` console command, outside the normkit package on purpose.

`import normkit` imports Keras and its backend (seconds, and TensorFlow's start-up log lines): it has to, because
that import registers the layers' serialized names (`normkit>...`, `Addons>...`) that loading a saved model
relies on. `normkit --help` and `normkit --version` need none of it, and `normkit ... --backend jax` must choose
the backend before Keras is imported. So the command puts the normkit package into `sys.modules` without running
its `__init__`, which lets `normkit.cli` (argparse and the standard library only) parse the command line;
`normkit.cli.main` runs the package's `__init__` (`finish_importing_normkit`) once a command needs the layers.
"""

from __future__ import annotations

import importlib.util
import sys


def main() -> int:
    if "normkit" not in sys.modules:
        spec = importlib.util.find_spec("normkit")
        if spec is None or spec.loader is None:
            print("normkit: error: the normkit package is not installed", file=sys.stderr)
            return 1
        package = importlib.util.module_from_spec(spec)  # the package's __init__ has not run yet
        package.__dict__["_init_deferred"] = True
        sys.modules["normkit"] = package
    from normkit.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
