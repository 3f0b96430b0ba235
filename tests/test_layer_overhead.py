"""The layer benchmark runs end to end and its naive baseline computes the same thing as the layer."""

import torch

from benchmarks import layer_overhead
from partialconv import PartialConv2d


def test_naive_baseline_matches_layer():
    torch.manual_seed(0)
    layer = PartialConv2d(4, 4, 3, padding=1, multi_channel=True)
    x = torch.randn(2, 4, 9, 9)
    mask = (torch.rand(2, 4, 9, 9) > 0.3).float()
    mask[:, :, 2:6, 2:6] = 0
    torch.testing.assert_close(layer_overhead.naive_masked_conv(layer, x, mask), layer(x, mask), rtol=1e-4, atol=1e-5)


def test_benchmark_prints_a_table(capsys):
    assert layer_overhead.main(["--reps", "1", "--warmup", "0", "--batch", "2", "--shapes", "8x10"]) == 0
    out = capsys.readouterr().out
    assert "| 8ch@10 |" in out and "naive ones-kernel mask" in out
