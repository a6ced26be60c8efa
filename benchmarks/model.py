"""Network speed: forward+backward slices per second, domain-specific BN against plain BN.

    python benchmarks/model.py                  # demo and paper configurations on the CPU
    python benchmarks/model.py --quick          # fewer iterations, smaller paper batch
    python benchmarks/model.py --device cuda    # on a GPU (paper batch from configs/paper.yaml)

Configurations: 'demo' reads configs/demo.yaml (model, patch size, batch size; else ResNet-18
width 0.25 at 128x128, batch 12); 'paper' reads configs/paper.yaml's model (else ResNet-34
width 1.0) at 256x256. Three networks with three heads run the same mixed batches (three
domains, shuffled): plain BatchNorm (the baseline), domain-specific BN, and domain-specific BN
fed single-domain batches. Steps alternate between the networks so that load on the machine
affects all alike; the table reports medians and ratios to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from jointseg.config import ModelConfig, shipped_config_text
from jointseg.models import JointSegNet, build_model
from jointseg.utils.atomic import atomic_write_json

HEADS = [4, 5, 3]  # ankle, knee, shoulder: background + bones


def read_setup(name: str, device: str, quick: bool) -> tuple[ModelConfig, int, int]:
    """(model config, input size, batch size) of a configuration, from the shipped config."""
    data = yaml.safe_load(shipped_config_text(name))
    if name == "demo":
        fallback = {"encoder": "resnet18", "width": 0.25}
        size, batch = 128, 12
    else:
        fallback = {"encoder": "resnet34", "width": 1.0}
        size, batch = 256, 32 if device != "cpu" else 4
        if quick and device == "cpu":
            batch = 3
    model = {**fallback, **data.get("model", {}), "encoder_weights": "none"}
    if name == "demo" or device != "cpu":
        batch = int(data.get("training", {}).get("batch_size", batch))
    if name == "demo":
        size = int(data.get("preprocessing", {}).get("patch_size", [size])[0])
    return ModelConfig.model_validate(model), size, batch


def make_batches(count: int, batch: int, size: int, device: str, seed: int = 0):
    """Mixed batches (three domains, as balanced as the batch size allows, shuffled)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        domains = torch.arange(batch) % len(HEADS)
        domains = domains[torch.randperm(batch, generator=generator)]
        x = torch.randn(batch, 1, size, size, generator=generator)
        batches.append((x.to(device), domains.to(device)))
    return batches


def train_step(net: JointSegNet, x: torch.Tensor, domains: torch.Tensor, amp: bool) -> None:
    net.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = net(x, domains, return_embeddings=True)
        loss = sum(v.float().square().mean() for v in out.logits.values())
        loss = loss + 1e-3 * sum(e.float().sum() for e in out.embeddings.values())
    loss.backward()


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(name: str, args: argparse.Namespace) -> list[dict]:
    cfg, size, batch = read_setup(name, args.device, args.quick)
    iterations = args.iterations or (
        (6 if name == "demo" else 2) if args.quick else (20 if name == "demo" else 5)
    )
    if args.device != "cpu":
        iterations *= 5
    torch.manual_seed(0)
    nets = {
        "plain BN": build_model(cfg, HEADS, False, pretrained=False),
        "domain BN": build_model(cfg, HEADS, True, pretrained=False),
        "domain BN, one domain": build_model(cfg, HEADS, True, pretrained=False),
    }
    for net in nets.values():
        net.to(args.device).train()
    batches = make_batches(iterations + args.warmup, batch, size, args.device)
    times: dict[str, list[float]] = {key: [] for key in nets}
    for index, (x, domains) in enumerate(batches):
        for key, net in nets.items():
            ids = torch.zeros_like(domains) if key.endswith("one domain") else domains
            seconds = timed(lambda n=net, x=x, d=ids: train_step(n, x, d, args.amp), args.device)
            if index >= args.warmup:
                times[key].append(seconds)
    base = statistics.median(times["plain BN"])
    label = f"{cfg.encoder} w{cfg.width:g} {size}x{size} b{batch}"
    rows = []
    for key, values in times.items():
        median = statistics.median(values)
        rows.append(
            {
                "config": name,
                "setup": label,
                "network": key,
                "iterations": len(values),
                "seconds_per_step": median,
                "slices_per_second": batch / median,
                "speed_vs_plain": base / median,
            }
        )
    return rows


def print_table(rows: list[dict], device: str) -> None:
    print(
        f"\nforward+backward, device {device}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    header = f"{'config':7} {'setup':28} {'network':22} {'iters':>5} {'s/step':>8} "
    header += f"{'slices/s':>9} {'vs plain':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['config']:7} {r['setup']:28} {r['network']:22} {r['iterations']:5d} "
            f"{r['seconds_per_step']:8.3f} {r['slices_per_second']:9.1f} "
            f"{r['speed_vs_plain']:9.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--configs", nargs="+", default=["demo", "paper"], choices=["demo", "paper"]
    )
    parser.add_argument("--iterations", type=int, default=0, help="timed steps (default: auto)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    rows = [row for name in args.configs for row in bench(name, args)]
    print_table(rows, args.device)
    if args.json:
        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
