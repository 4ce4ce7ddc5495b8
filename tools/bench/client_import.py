"""Import time of ``fusion.client`` against aiohttp + msgspec alone, in fresh processes.

Each sample is a new interpreter that times its own imports (interpreter
start-up excluded). Samples of the two kinds alternate so that machine noise
hits both alike; the figure is the ratio of the medians. Target: the client
adds at most 25% (ratio <= 1.25). Also checks that no server-side or heavy
module is loaded by ``import fusion.client``.

    python tools/bench/client_import.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

BASELINE = "import aiohttp, msgspec"
CLIENT = "import fusion.client"
FORBIDDEN = ("fusion.server", "redis", "ldap3", "jwt", "argon2", "aiohttp.web", "yaml")

_PROBE = """
import json, sys, time
start = time.perf_counter()
{statement}
elapsed = time.perf_counter() - start
forbidden = {forbidden!r}
loaded = sorted(name for name in sys.modules if name.split(".")[0] in forbidden
                or any(name == f or name.startswith(f + ".") for f in forbidden))
print(json.dumps({{"seconds": elapsed, "loaded": loaded}}))
"""


def sample(statement: str) -> tuple[float, list[str]]:
    code = _PROBE.format(statement=statement, forbidden=FORBIDDEN)
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out)
    return float(result["seconds"]), list(result["loaded"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--max-ratio", type=float, default=1.25)
    args = parser.parse_args()
    # One warm-up of each so the first sample does not pay for cold .pyc files.
    sample(BASELINE)
    sample(CLIENT)
    baseline: list[float] = []
    client: list[float] = []
    loaded: list[str] = []
    for _ in range(args.runs):
        baseline.append(sample(BASELINE)[0])
        seconds, loaded = sample(CLIENT)
        client.append(seconds)
    base_median = statistics.median(baseline)
    client_median = statistics.median(client)
    ratio = client_median / base_median
    print(f"runs: {args.runs} fresh processes each, medians")
    print(f"  {BASELINE:<24} {base_median * 1000:7.1f} ms")
    print(f"  {CLIENT:<24} {client_median * 1000:7.1f} ms")
    print(f"  ratio                    {ratio:7.3f}  (target <= {args.max_ratio})")
    print(f"  heavy modules loaded     {', '.join(loaded) or 'none'}")
    ok = ratio <= args.max_ratio and not loaded
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
