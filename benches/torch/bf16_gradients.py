"""How far PyTorch's bf16 autocast moves a MoCo v3 ViT-tiny gradient from its f32 gradient.

The twin of `a_moco_v3_vit_step_in_bf16_deviates_from_f32_as_pytorch_autocast_does` in
kernel-lib/tests/precision.rs: the same architecture (benches/torch/workloads.py's ViT-tiny,
3 blocks, patch 4, 32 px; 1024-wide projector and predictor ending in non-affine BN), the same
two views of 32 fixed pseudo-random images (splitmix64, as the test's `common::splitmix`), keys
from an identical momentum encoder, and MoCo v3's loss at tau 0.2. It prints the cosine and the
relative norm of the difference between the two gradients, all trainable tensors as one vector.

`--model barlow-twins`: the same for a Barlow Twins step of the `barlow-twins/tiny` shape
(ResNet-18 of width 16, CIFAR stem, 512-512-512 projector, lambda 0.0051, 16 images), the
twin of the Barlow Twins line of `every_method_steps_with_bf16_activations` in
kernel-lib/tests/bf16_activations.rs. PyTorch's CPU autocast keeps a ResNet's activations in
bf16 between ops (convolution outputs, BatchNorm, ReLU, the residual add), as sslab does on CUDA.

    benches/.venv/bin/python benches/torch/bf16_gradients.py [--seeds N] [--model M]

Not run by the tests or CI (PyTorch is a benchmark-only dependency).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import workloads as W  # noqa: E402

MASK = (1 << 64) - 1


def splitmix(n, seed):
    """`common::splitmix`: a fixed sequence in [-1, 1)."""
    out = []
    for i in range(n):
        z = ((i + seed * 1_000_003) * 0x9E3779B97F4A7C15) & MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append((z >> 40) / float(1 << 24) * 2.0 - 1.0)
    return torch.tensor(out, dtype=torch.float32)


def sincos(grid, dim):
    """MoCo v3's fixed 2-D sin-cos position embedding, with a zero row for [CLS]."""
    h = torch.arange(grid, dtype=torch.float32)
    gw, gh = torch.meshgrid(h, h, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    ow, oh = torch.einsum("m,d->md", gw.flatten(), omega), torch.einsum("m,d->md", gh.flatten(), omega)
    pe = torch.cat([ow.sin(), ow.cos(), oh.sin(), oh.cos()], 1)
    return torch.cat([torch.zeros(1, dim), pe])[None]


def moco_v3_init(net):
    """The official `vits.py` initialisation, as sslab's `models::vit`: sin-cos positions,
    Q/K/V as three D×D Xavier maps, the other linears Xavier, the patch projection uniform
    over its fan-in, [CLS] N(0, 1e-6)."""
    net.pos.copy_(sincos(int((net.pos.shape[1] - 1) ** 0.5), net.dim))
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Linear):
            fan_out = m.weight.shape[0] // 3 if name.endswith("qkv") else m.weight.shape[0]
            bound = (6.0 / (fan_out + m.weight.shape[1])) ** 0.5
            torch.nn.init.uniform_(m.weight, -bound, bound)
            torch.nn.init.zeros_(m.bias)
    fan_in = net.patch.weight[0].numel()
    bound = (6.0 / (fan_in + net.dim)) ** 0.5
    torch.nn.init.uniform_(net.patch.weight, -bound, bound)
    torch.nn.init.zeros_(net.patch.bias)
    torch.nn.init.normal_(net.cls, std=1e-6)


def compare(params, loss_of):
    """Cosine and relative difference between the gradients of `loss_of(amp)` without and with
    bf16 autocast, all of `params` as one vector."""

    def grads(amp):
        for p in params:
            p.grad = None
        loss_of(amp).backward()
        return torch.cat([p.grad.flatten().double() for p in params])

    g32, g16 = grads(False), grads(True)
    cos = torch.nn.functional.cosine_similarity(g16, g32, 0).item()
    return cos, ((g16 - g32).norm() / g32.norm()).item()


def views(n, seeds):
    return [splitmix(n * 3 * 32 * 32, s).reshape(n, 3, 32, 32) for s in seeds]


def deviation(seed, init):
    torch.manual_seed(seed)
    net = W.Vit()
    if init == "moco-v3":
        with torch.no_grad():
            moco_v3_init(net)
    enc = torch.nn.Sequential(net, W.mlp([net.dim, 1024, 1024, 256], bias=False, last_bn="nonaffine"))
    pred = W.mlp([256, 1024, 256], bias=False, last_bn="nonaffine")
    x1, x2 = views(32, (1, 2))

    def loss_of(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            q1, q2 = pred(enc(x1)), pred(enc(x2))
            with torch.no_grad():
                k1, k2 = enc(x1), enc(x2)
        return W.ctr(q1.float(), k2.float(), 0.2) + W.ctr(q2.float(), k1.float(), 0.2)

    return compare(list(enc.parameters()) + list(pred.parameters()), loss_of)


def barlow_twins_deviation(seed):
    torch.manual_seed(seed)
    net = W.ResNet18(16, zero_init=False)
    model = torch.nn.Sequential(net, W.mlp([net.dim, 512, 512, 512], bias=False))
    x1, x2 = views(16, (31, 32))

    def loss_of(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            z1, z2 = model(x1), model(x2)
            if amp:
                with torch.no_grad():
                    h = net.blocks[0](net.stem(x1))
                assert h.dtype == torch.bfloat16, "autocast keeps a ResNet's activations in bf16"
        return W.barlow_twins_loss(z1.float(), z2.float(), 0.0051, 1.0)

    return compare(list(model.parameters()), loss_of)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3, help="weight initialisations to try")
    ap.add_argument("--model", choices=["moco-v3-vit", "barlow-twins"], default="moco-v3-vit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.model == "barlow-twins":
        for seed in range(args.seeds):
            cos, rel = barlow_twins_deviation(seed)
            print(f"RESULT bf16_gradients model=barlow-twins seed={seed} cosine={cos:.4f} relative={rel:.3f}")
        return
    # `pytorch`: the twin's default init (random positions x 0.02); `moco-v3`: sslab's.
    for init in ("pytorch", "moco-v3"):
        for seed in range(args.seeds):
            cos, rel = deviation(seed, init)
            print(f"RESULT bf16_gradients init={init} seed={seed} cosine={cos:.4f} relative={rel:.3f}")


if __name__ == "__main__":
    main()
