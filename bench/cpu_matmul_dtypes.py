"""Why the DiT families train slowly on some CPUs: a Linear layer's three matmuls in fp32 and bf16.

    .venv/bin/python bench/cpu_matmul_dtypes.py [--tokens 80] [--width 2304] [--threads 2]

A LoRA step through a frozen Linear runs its forward (x @ W^T), the input gradient (g @ W) and,
for trained weights only, the weight gradient (g^T @ x). On CPUs without AVX-512 BF16, torch's bf16
kernel for some of these layouts is far slower than fp32's; the DiT families' input gradients hit
it in every block. The defaults are Lumina's NextDiT width and a 64 px batch's tokens (16 image
+ 64 caption). Prints the machine and a markdown table (GFLOPS, and bf16's speed against fp32's).
"""

from __future__ import annotations

import argparse
import time

import torch
from machine_info import cpu_line


def gflops(a: torch.Tensor, b: torch.Tensor, repeats: int, min_seconds: float = 0.5) -> float:
    """At least ``repeats`` products and ``min_seconds`` of them (a fast kernel needs many to be timed)."""
    a @ b  # warm-up: kernel selection and first-touch allocation
    done, start = 0, time.perf_counter()
    while done < repeats or time.perf_counter() - start < min_seconds:
        a @ b
        done += 1
    seconds = (time.perf_counter() - start) / done
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / seconds / 1e9


def relative(fp32: float, bf16: float) -> str:
    """bf16's speed against fp32's, in words: '126x slower' or '1.9x faster'."""
    return f"{fp32 / bf16:.3g}x slower" if bf16 < fp32 else f"{bf16 / fp32:.2g}x faster"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=80)
    p.add_argument("--width", type=int, default=2304)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n, d = args.tokens, args.width
    print(f"machine: {cpu_line()}; {args.threads} threads; tokens {n}, width {d}")
    print("\n| matmul | shape | fp32 GFLOPS | bf16 GFLOPS | bf16 against fp32 |\n|---|---|---|---|---|")
    layouts = {  # the operands as autograd hands them to the matmul: W is (out, in), row-major
        "forward x @ W^T": lambda dt: (torch.randn(n, d, dtype=dt), torch.randn(d, d, dtype=dt).t()),
        "input grad g @ W": lambda dt: (torch.randn(n, d, dtype=dt), torch.randn(d, d, dtype=dt)),
        "weight grad g^T @ x": lambda dt: (torch.randn(n, d, dtype=dt).t(), torch.randn(n, d, dtype=dt)),
    }
    for name, operands in layouts.items():
        rates = [gflops(*operands(dtype), args.repeats) for dtype in (torch.float32, torch.bfloat16)]
        a, b = operands(torch.float32)
        shape = f"{a.shape[0]}x{a.shape[1]} @ {b.shape[0]}x{b.shape[1]}"
        print(f"| {name} | {shape} | {rates[0]:.1f} | {rates[1]:.2f} | {relative(*rates)} |")


if __name__ == "__main__":
    main()
