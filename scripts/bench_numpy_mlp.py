"""Training throughput of the NumPy MLP against the same network in PyTorch, on the CPU.

    python scripts/bench_numpy_mlp.py [--hidden-size 2048 1024 --batch-size 64 ...]

Both run one epoch over the same generated Fashion-MNIST-shaped data (uint8 images, 784
inputs, 10 classes) with the same input pipeline (a permutation per epoch, a gathered
uint8 batch normalised to float32), layers, activation, loss, optimizer and batch size,
side by side in one process; the table shows the median samples/s of several epochs.
PyTorch gets as many threads as NumPy's BLAS has (both default to all cores).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_info

from trainables import numpy_mlp as nm
from trainables.numpy_optimizers import OPTIMIZERS


def fake_data(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return {"name": "random", "x_train": x, "y_train": y, "x_val": x[:0], "y_val": y[:0], "mean": (0.5,),
            "std": (0.25,), "num_classes": 10, "input_shape": (1, 28, 28)}


def numpy_epoch(cfg: dict, data: dict) -> float:
    """Samples/s of one epoch of the trainable's own training loop."""
    rng = np.random.default_rng(0)
    sizes = nm.layer_sizes(784, cfg["num_layers"], cfg["hidden_size"], 10)
    params = nm.init_params(sizes, cfg["weight_init"], rng)
    opt = OPTIMIZERS.get(cfg["optimizer"])([p.shape for p in params], cfg)
    x = data["x_train"].reshape(len(data["x_train"]), -1)
    t0 = time.perf_counter()
    _, _, seen = nm.train_epoch(params, opt, nm.Inputs(data), x, data["y_train"], cfg, rng)
    return seen / (time.perf_counter() - t0)


TORCH_ACTIVATIONS = {"identity": torch.nn.Identity, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh,
                     "relu": torch.nn.ReLU}


def torch_optimizer(cfg: dict, params):
    name, lr, wd = cfg["optimizer"], cfg["lr"], cfg["weight_decay"]
    if name in ("sgd", "momentum", "nag"):
        return torch.optim.SGD(params, lr=lr, momentum=0.0 if name == "sgd" else cfg["momentum"],
                               nesterov=name == "nag", weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=cfg["beta"], eps=cfg["epsilon"], weight_decay=wd)
    cls = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam}[name]
    return cls(params, lr=lr, betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["epsilon"], weight_decay=wd)


def torch_epoch(cfg: dict, data: dict) -> float:
    """Samples/s of one epoch of the same network, loss and optimizer in PyTorch."""
    torch.manual_seed(0)
    sizes = nm.layer_sizes(784, cfg["num_layers"], cfg["hidden_size"], 10)
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), TORCH_ACTIVATIONS[cfg["activation"]]()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch_optimizer(cfg, model.parameters())
    x_all = torch.from_numpy(data["x_train"].reshape(len(data["x_train"]), -1))
    y_all = torch.from_numpy(data["y_train"])
    inputs = nm.Inputs(data)
    scale, shift = torch.from_numpy(inputs.scale), torch.from_numpy(inputs.shift)
    t0 = time.perf_counter()
    perm = torch.randperm(len(y_all))
    for start in range(0, len(y_all), cfg["batch_size"]):
        idx = perm[start:start + cfg["batch_size"]]
        x, y = x_all[idx] * scale - shift, y_all[idx]
        logits = model(x)
        if cfg["loss"] == "cross_entropy":
            loss = F.cross_entropy(logits, y)
        else:
            loss = (F.softmax(logits, 1) - F.one_hot(y, 10)).square().sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(y_all) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden-size", type=int, nargs="+", default=[2048, 1024],
                   help="units per hidden layer (default: study 3's best, 2048 then 1024)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--activation", default="tanh", choices=sorted(TORCH_ACTIVATIONS))
    p.add_argument("--optimizer", default="nadam", choices=OPTIMIZERS.names())
    p.add_argument("--loss", default="cross_entropy", choices=nm.LOSSES.names())
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    size = args.hidden_size[0] if len(args.hidden_size) == 1 else args.hidden_size
    cfg = nm.resolve(nm.PARAMS, {"num_layers": len(args.hidden_size), "hidden_size": size,
                                 "batch_size": args.batch_size, "activation": args.activation,
                                 "optimizer": args.optimizer, "loss": args.loss})
    blas_threads = max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")
    torch.set_num_threads(blas_threads)
    data = fake_data(args.samples)
    numpy_epoch(cfg, data), torch_epoch(cfg, data)  # warm-up: allocator, thread pools, BLAS kernels
    runs: dict[str, list[float]] = {"numpy": [], "torch": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        runs["numpy"].append(numpy_epoch(cfg, data))
        runs["torch"].append(torch_epoch(cfg, data))
    median = {k: statistics.median(v) for k, v in runs.items()}

    print(f"{nm.run_name(cfg)}: {args.samples} samples, float32, {blas_threads} threads each "
          f"(numpy {np.__version__}, torch {torch.__version__}), median of {args.repeats} epochs")
    print(f"{'implementation':<16}{'samples/s':>12}{'numpy/torch':>14}")
    for name in ("numpy", "torch"):
        print(f"{name:<16}{median[name]:>12,.0f}{median[name] / median['torch']:>14.2f}")


if __name__ == "__main__":
    main()
