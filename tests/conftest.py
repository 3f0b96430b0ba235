import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONHASHSEED", "0")
# Two cores on CI: keep intra-op threads from oversubscribing when tests spawn processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))
