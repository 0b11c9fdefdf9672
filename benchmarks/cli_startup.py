"""How fast the command line starts: `relearn --help`, `relearn adapters list` and `relearn eval` on 8 maps, each as a
ratio to `python -c "import numpy, PIL"` timed in the same run (the commands interleaved, so a busy machine slows
them alike).

    .venv/bin/python benchmarks/cli_startup.py --data ../shared/data/SOD --out benchmarks/results/cli_startup.json
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reporting import write_report

from relearn_core import __version__


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a dataset with gt/ and maps/DSS/ (SOD)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--machine", default="2-core CPU, no GPU")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    relearn = str(Path(sys.executable).with_name("relearn"))
    with tempfile.TemporaryDirectory() as work:
        pred, gt = Path(work) / "pred", Path(work) / "gt"
        pred.mkdir()
        gt.mkdir()
        for mask in sorted((args.data / "gt").glob("*.png"))[:8]:
            shutil.copy(mask, gt)
            shutil.copy(args.data / "maps" / "DSS" / mask.name, pred)
        commands = {
            "python -c 'import numpy, PIL'": [sys.executable, "-c", "import numpy, PIL"],
            "relearn --help": [relearn, "--help"],
            "relearn adapters list": [relearn, "adapters", "list"],
            "relearn eval (8 maps)": [relearn, "eval", "--pred", str(pred), "--gt", str(gt), "--quiet"],
        }
        for command in commands.values():  # warm the file cache and numba's on-disk cache
            timed(command)
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                seconds[name].append(timed(command))
    reference = statistics.median(seconds["python -c 'import numpy, PIL'"])
    result = {
        "relearn_version": __version__,
        "machine": args.machine,
        "python": platform.python_version(),
        "repeats": args.repeats,
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "ratio_to_numpy_pil": {name: statistics.median(values) / reference for name, values in seconds.items()},
        "target": "relearn adapters list <= 3x python -c 'import numpy, PIL'",
    }
    lines = [
        f"# CLI start-up (relearn {__version__}, {args.machine}, median of {args.repeats} interleaved runs)",
        "",
        "| command | seconds | ratio to `import numpy, PIL` |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{name}` | {result['median_seconds'][name]:.3f} | {result['ratio_to_numpy_pil'][name]:.2f} |"
        for name in commands
    ]
    write_report(args.out, result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
