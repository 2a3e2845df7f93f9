"""Run one benchmark task in this (fresh) process and print its result as JSON on the last line.

    python benches/worker.py <task> '<json parameters>'

The result gets `peak_rss_mb` (getrusage: the whole process, imports and weights included, as a user's
machine sees it) and `threads`. `run.py` starts one worker per measured method, so no peak is shared.
"""

from __future__ import annotations

import json
import sys
import warnings

MARKER = "BENCH_RESULT "


def main() -> None:
    task, params = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    warnings.filterwarnings("ignore")
    import tasks
    import torch
    from common import peak_rss_mb

    torch.set_num_threads(int(params.pop("threads", torch.get_num_threads())))
    result = tasks.TASKS[task](**params)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["threads"] = torch.get_num_threads()
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
