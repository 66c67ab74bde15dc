"""The installed stack is the real one: TorchRec + FBGEMM (CPU ops registered), FAISS, Lightning, Polars."""

from __future__ import annotations

import subprocess
import sys


def test_real_stack_imports():
    # a fresh interpreter, as a user would: import order and op registration as in the check
    code = ("import torchrec, fbgemm_gpu, faiss, lightning, polars, torch; "
            "assert torch.__version__.startswith('2.13.0'), torch.__version__; "
            "assert hasattr(torch.ops.fbgemm, 'asynchronous_complete_cumsum'); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_fbgemm_cpu_op_computes():
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
    import torch

    lengths = torch.tensor([2, 0, 3], dtype=torch.int64)
    offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
    assert offsets.tolist() == [0, 2, 2, 5]
