"""Model size, analytic FLOPs and forward+backward(+AdamW) throughput of MixVLP.

    python benchmarks/model_bench.py                       # CPU: batch 2; CUDA: bf16 batch 64 and 128
    python benchmarks/model_bench.py --arch uwox --image ms_B8 --gpu-batches 64 128 --no-compile

Prints a table and writes benchmarks/results/model_bench.json. On CUDA each configuration runs
eager and torch.compile'd, under bf16 autocast with fused AdamW, on a synthetic batch of full
tuples (150-token reports, 15% words masked), the data already on the device.
Reference (one plain PyTorch implementation of this architecture, H200): 353 samples/s eager and
470 compiled at batch 64, ~797 GFLOP per sample.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mixvlp_ds.data.batch import model_inputs
from mixvlp_ds.model import MixVLP, ModelConfig, flops_per_sample, mask_tokens, mfu
from mixvlp_ds.patch_masking import draw_patch_masks

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def synthetic_batch(cfg: ModelConfig, b: int, device: torch.device, seed: int = 0) -> dict:
    """Full tuples: 150-token reports masked by the data pipeline's rule, patch masks as it draws them."""
    g = torch.Generator().manual_seed(seed)
    s, length = cfg.image_size, cfg.max_text_len
    ids = torch.randint(5, cfg.vocab_size, (b, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    att = torch.ones(b, length, dtype=torch.long)
    ids, labels = mask_tokens(ids, att, mask_token_id=4, vocab_size=cfg.vocab_size,
                              special_token_ids=[0, 1, 2, 3, 4], prob=cfg.text_mask_ratio, generator=g)
    has_image = torch.ones(b, dtype=torch.bool)
    patch_mask, patch_source = draw_patch_masks(has_image, cfg.patches_per_level(), cfg.image_mask_ratio, g)
    batch = {
        "pyramid": [torch.randint(0, 256, (b, n, n), dtype=torch.uint8, generator=g)
                    for n in (s, s // 2, s // 4)],
        "patch_mask": patch_mask, "patch_source": patch_source,
        "has_image": has_image, "has_text": torch.ones(b, dtype=torch.bool),
        "input_ids": ids, "attention_mask": att, "mlm_labels": labels,
        "pair": (torch.rand(b, generator=g) < 0.5).float(),
    }
    return model_inputs(batch, device)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def measure(cfg: ModelConfig, device: torch.device, batch_size: int, steps: int, warmup: int,
            bf16: bool, compile_model: bool) -> dict:
    torch.manual_seed(0)
    model = MixVLP(cfg).to(device).train()
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    step_model = torch.compile(model) if compile_model else model
    batch = synthetic_batch(cfg, batch_size, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> torch.Tensor:
        with autocast:
            out = step_model(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out["loss"]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - t0
    row = {"batch": batch_size, "bf16": bf16, "compile": compile_model, "steps": steps,
           "samples_per_s": steps * batch_size / elapsed, "step_s": elapsed / steps,
           "loss": float(loss.detach())}
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        pf = peak_flops(device)
        if pf:
            row["mfu"] = mfu(row["samples_per_s"], cfg, pf)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="bert-base")
    p.add_argument("--arch", default="uwox")
    p.add_argument("--image", default="ms_B8")
    p.add_argument("--cpu-batch", type=int, default=2)
    p.add_argument("--cpu-steps", type=int, default=2)
    p.add_argument("--gpu-batches", type=int, nargs="+", default=[64, 128])
    p.add_argument("--gpu-steps", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "model_bench.json"))
    args = p.parse_args(argv)

    cfg = ModelConfig.preset(args.size, arch=args.arch, image=args.image,
                             activation_checkpointing=args.activation_checkpointing)
    with torch.device("meta"):
        n_params = sum(x.numel() for x in MixVLP(cfg).parameters())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"model": f"{args.size}/{args.arch}/{args.image}", "params_m": n_params / 1e6,
              "gflop_per_sample": flops_per_sample(cfg) / 1e9, "patches": cfg.num_patches,
              "device": (torch.cuda.get_device_name() if device.type == "cuda"
                         else platform.processor() or "cpu"),
              "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "runs": []}
    if device.type == "cpu":
        result["runs"].append(measure(cfg, device, args.cpu_batch, args.cpu_steps, 1, False, False))
    else:
        for b in args.gpu_batches:
            for comp in ([False] if args.no_compile else [False, True]):
                try:
                    row = measure(cfg, device, b, args.gpu_steps, 3, True, comp)
                except torch.OutOfMemoryError:
                    row = {"batch": b, "compile": comp, "error": "out of memory"}
                torch.cuda.empty_cache()
                result["runs"].append(row)
                print(json.dumps(row), flush=True)

    print(f"{result['model']}: {result['params_m']:.1f}M params, "
          f"{result['gflop_per_sample']:.1f} GFLOP/sample "
          f"(fwd+bwd), {result['patches']} patches, on {result['device']} (torch {result['torch']})")
    print(f"{'batch':>6} {'bf16':>5} {'compile':>8} {'samples/s':>10} {'step s':>8} "
          f"{'peak GiB':>9} {'MFU':>6}")
    for r in result["runs"]:
        if "error" in r:
            print(f"{r['batch']:>6} {'':>5} {str(r['compile']):>8} {r['error']}")
            continue
        print(f"{r['batch']:>6} {str(r['bf16']):>5} {str(r['compile']):>8} {r['samples_per_s']:>10.2f} "
              f"{r['step_s']:>8.3f} {r.get('peak_mem_gib', float('nan')):>9.1f} "
              f"{r.get('mfu', float('nan')):>6.1%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
