"""One of several processes that fit the same DualDA into one cache directory (test_trust.py).

Usage: ``python cache_worker.py CACHE_DIR OUT_FILE START_FILE``. Builds the same model and data in
every process, waits until START_FILE exists (so that all processes fit at once), fits out of core
(``memory_budget=0``: the features go to a memory-mapped scratch file in CACHE_DIR), and saves
``from_cache`` and the score matrix of a few test inputs to OUT_FILE.
"""

import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_dualxda import DualDA


def main() -> None:
    cache_dir, out, start = sys.argv[1:4]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)).eval()
    x = torch.randn(3000, 20)
    y = torch.randint(0, 5, (3000,))
    deadline = time.time() + 120
    while not os.path.exists(start) and time.time() < deadline:
        time.sleep(0.01)
    dualda = DualDA(model, "2", TensorDataset(x, y), C=0.01, cache_dir=cache_dir, memory_budget=0, batch_size=256)
    scores = dualda.influence((x[:7], y[:7]))
    torch.save({"from_cache": dualda.fit_stats["from_cache"], "scores": scores}, out)


if __name__ == "__main__":
    main()
