"""QAT under DistributedDataParallel: two CPU processes (gloo), each training on its own batches;
both ranks export byte-identical ONNX (ranges reduced across ranks, BatchNorm running statistics
averaged, gradients averaged by DDP)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

if not torch.distributed.is_available():  # pragma: no cover - CPU wheels have gloo
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORLD_SIZE = 2


def _rank(rank: int, folder: str, port: int) -> None:
    import os

    import edgeopt
    import edgeopt.torch as et
    from test_torch_qat import _small_net

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        calibration = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(3))  # same on both
        qat = et.prepare_qat(_small_net(), calibration[:4], edgeopt.QATConfig(calibration_method="minmax"),
                             calibration=[(calibration,)])
        model = torch.nn.parallel.DistributedDataParallel(qat)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        model.train()
        for _ in range(4):
            x = torch.randn(8, 1, 28, 28, generator=generator) * (1 + rank)
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        et.export(model, os.path.join(folder, f"rank{rank}.onnx"))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_both_ranks_export_byte_identical_models(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_rank, args=(str(tmp_path), _free_port()), nprocs=WORLD_SIZE, join=True,
                       start_method="spawn")
    first, second = (tmp_path / "rank0.onnx").read_bytes(), (tmp_path / "rank1.onnx").read_bytes()
    assert len(first) > 10_000 and first == second
