"""PyTorch twins of `sslab bench` workloads: same models, shapes and hyper-parameters.

Run by `benches/compare.sh`, never by the tests or CI. Each workload prints one line
`RESULT <workload> key=value ...` in the same format as `sslab bench --machine`, so the
script can put both side by side. Inputs are random tensors: the step timed is forward,
backward and the optimizer update, as in sslab (whose step also augments the batch).
"""

import argparse
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# --- ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), as sslab's `Stem::Cifar` ---
class BasicBlock(nn.Module):
    def __init__(self, inp, out, stride, zero_init):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        if zero_init:
            nn.init.zeros_(self.bn2.weight)
        self.down = None
        if stride != 1 or inp != out:
            self.down = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, width=64, zero_init=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, inp = [], width
        for i, stride in enumerate([1, 2, 2, 2]):
            out = width * 2**i
            blocks += [BasicBlock(inp, out, stride, zero_init), BasicBlock(out, out, 1, zero_init)]
            inp = out
        self.blocks = nn.Sequential(*blocks)
        self.dim = inp

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)


def mlp(dims, bias, last_bn=None):
    """Linear-BN-ReLU hidden layers; last BN None, 'affine' or 'nonaffine'."""
    layers = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
        if not last:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU()]
        elif last_bn is not None:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=last_bn == "affine"))
    return nn.Sequential(*layers)


# --- Optimisers as sslab's `optim` module ---
class Lars(torch.optim.Optimizer):
    """SGD + momentum 0.9 with the LARS trust ratio on >= 2-D tensors (biases and BN excluded
    from both weight decay and adaptation), solo-learn's clipped variant."""

    def __init__(self, params, lr, weight_decay, eta, momentum=0.9):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, eta=eta, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    pn, gn = torch.norm(p), torch.norm(d)
                    ratio = g["eta"] * pn / (gn + g["weight_decay"] * pn + 1e-8)
                    ratio = torch.where((pn > 0) & (gn > 0), torch.clamp(ratio / g["lr"], max=1.0), torch.ones_like(pn))
                    d = (d + g["weight_decay"] * p) * ratio
                st = self.state[p]
                buf = st.get("m")
                if buf is None:
                    buf = st["m"] = torch.zeros_like(p)
                buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


# --- Objectives ---
def bn_standardise(z, eps=1e-5):
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1, z2, lam, scale):
    n = z1.shape[0]
    c = bn_standardise(z1).T @ bn_standardise(z2) / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return scale * (on + lam * off)


def ctr(q, k, tau):
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = q @ k.T / tau
    return 2 * tau * F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


# --- Workloads ---
# Set by main(): where the twins run, and whether they use bf16 autocast / channels-last, as a
# PyTorch user on a GPU would.
DEV = torch.device("cpu")
AMP = False
CHANNELS_LAST = False


def inputs(batch, size=32):
    x1, x2 = torch.randn(batch, 3, size, size, device=DEV), torch.randn(batch, 3, size, size, device=DEV)
    if CHANNELS_LAST:
        x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
    return x1, x2


def place(*modules):
    for m in modules:
        m.to(DEV)
        if CHANNELS_LAST:
            m.to(memory_format=torch.channels_last)


def autocast():
    return torch.autocast(device_type=DEV.type, dtype=torch.bfloat16, enabled=AMP)


class ResNet50(nn.Module):
    """torchvision's ResNet-50 (ImageNet stem, stride on the 3x3 conv) without its classifier,
    as sslab's `arch = resnet50`, `stem = imagenet`."""

    def __init__(self, zero_init=True):
        super().__init__()
        import torchvision  # only the GPU-sized presets need it

        self.net = torchvision.models.resnet50(zero_init_residual=zero_init)
        self.net.fc = nn.Identity()
        self.dim = 2048

    def forward(self, x):
        return self.net(x)


# Set by main() from --preset: the GPU-sized settings of sslab's presets of the same name.
PRESET = None


def barlow_twins(batch, width):
    if PRESET == "barlow-twins/imagenet":  # the paper's: ResNet-50, 8192-8192-8192, 224 px
        net, widths, size, lr, wd, eta = ResNet50(), [8192] * 3, 224, 0.2, 1.5e-6, 0.001
    else:  # solo-learn's CIFAR recipe
        net, widths, size, lr, wd, eta = ResNet18(width), [2048] * 3, 32, 0.3, 1e-4, 0.02
    proj = mlp([net.dim] + widths, bias=False)
    model = nn.Sequential(net, proj)
    place(model)
    opt = Lars(model.parameters(), lr=lr * batch / 256, weight_decay=wd, eta=eta)
    x1, x2 = inputs(batch, size)

    def step():
        with autocast():
            z1, z2 = model(x1), model(x2)
        loss = barlow_twins_loss(z1.float(), z2.float(), 0.005, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def moco_v2(batch, width, queue=4096, tau=0.1, m=0.99):
    def encoder():
        net = ResNet18(width, zero_init=False)
        return nn.Sequential(net, mlp([net.dim, net.dim, 128], bias=True))

    q_enc, k_enc = encoder(), encoder()
    k_enc.load_state_dict(q_enc.state_dict())
    place(q_enc, k_enc)
    for p in k_enc.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(q_enc.parameters(), lr=0.06 * batch / 256, momentum=0.9, weight_decay=5e-4)
    queue_t = F.normalize(torch.randn(128, queue, device=DEV), dim=0)
    ptr = [0]
    x1, x2 = inputs(batch)

    def step():
        with autocast():
            q = F.normalize(q_enc(x1).float(), dim=1)
        with torch.no_grad():
            for pq, pk in zip(q_enc.parameters(), k_enc.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)
            perm = torch.randperm(batch, device=DEV)  # ShuffleBN on one device: permute, encode, un-permute
            with autocast():
                k = F.normalize(k_enc(x2[perm]).float(), dim=1)[torch.argsort(perm)]
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue_t], 1) / tau
        loss = F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=DEV))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            queue_t[:, ptr[0] : ptr[0] + batch] = k.T
            ptr[0] = (ptr[0] + batch) % queue
        return loss.item()

    return step


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.n1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.n2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(self.n1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, -1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class Vit(nn.Module):
    """ViT as sslab's: conv patch embedding, [CLS], fixed position embedding, pre-norm blocks."""

    def __init__(self, dim=192, depth=3, heads=3, patch=4, size=32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dim = dim

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.norm(self.blocks(x))[:, 0]


def moco_v3_vit(batch, width, tau=0.2, m=0.9, hidden=1024):
    vit, size = dict(), 32
    if PRESET == "moco-v3/vit-small":  # ViT-S/16 at 224 px, 4096-wide heads, m 0.99
        vit, size, m, hidden = dict(dim=384, depth=12, heads=12, patch=16, size=224), 224, 0.99, 4096

    def encoder():
        net = Vit(**vit)
        return nn.Sequential(net, mlp([net.dim, hidden, hidden, 256], bias=False, last_bn="nonaffine"))

    online, momentum = encoder(), encoder()
    momentum.load_state_dict(online.state_dict())
    for p in momentum.parameters():
        p.requires_grad_(False)
    pred = mlp([256, hidden, 256], bias=False, last_bn="nonaffine")
    place(online, momentum, pred)
    params = list(online.parameters()) + list(pred.parameters())
    opt = torch.optim.AdamW(params, lr=(2e-3 if size == 32 else 1.5e-4) * batch / 256, weight_decay=0.1)
    x1, x2 = inputs(batch, size)

    def step():
        with autocast():
            q1, q2 = pred(online(x1)), pred(online(x2))
        with torch.no_grad():
            for po, pm in zip(online.parameters(), momentum.parameters()):
                pm.mul_(m).add_(po.detach(), alpha=1 - m)
            with autocast():
                k1, k2 = momentum(x1), momentum(x2)
        loss = ctr(q1.float(), k2.float(), tau) + ctr(q2.float(), k1.float(), tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


# The conv shapes of a CIFAR ResNet-18 at width 64: (in, out, kernel, stride, input size, count).
CONV_SHAPES = [
    (3, 64, 3, 1, 32, 1),
    (64, 64, 3, 1, 32, 4),
    (64, 128, 3, 2, 32, 1),
    (128, 128, 3, 1, 16, 3),
    (64, 128, 1, 2, 32, 1),
    (128, 256, 3, 2, 16, 1),
    (256, 256, 3, 1, 8, 3),
    (128, 256, 1, 2, 16, 1),
    (256, 512, 3, 2, 8, 1),
    (512, 512, 3, 1, 4, 3),
    (256, 512, 1, 2, 8, 1),
]


# torchvision's ResNet-50 at 224 px (as sslab's RESNET50_IMAGENET_CONVS): the 7x7 stem, the
# stride on each stage's first 3x3 conv, the 1x1 downsamples.
RESNET50_SHAPES = [
    (3, 64, 7, 2, 224, 1),
    (64, 64, 1, 1, 56, 1),
    (256, 64, 1, 1, 56, 2),
    (64, 64, 3, 1, 56, 3),
    (64, 256, 1, 1, 56, 4),
    (256, 128, 1, 1, 56, 1),
    (128, 128, 3, 2, 56, 1),
    (256, 512, 1, 2, 56, 1),
    (512, 128, 1, 1, 28, 3),
    (128, 128, 3, 1, 28, 3),
    (128, 512, 1, 1, 28, 4),
    (512, 256, 1, 1, 28, 1),
    (256, 256, 3, 2, 28, 1),
    (512, 1024, 1, 2, 28, 1),
    (1024, 256, 1, 1, 14, 5),
    (256, 256, 3, 1, 14, 5),
    (256, 1024, 1, 1, 14, 6),
    (1024, 512, 1, 1, 14, 1),
    (512, 512, 3, 2, 14, 1),
    (1024, 2048, 1, 2, 14, 1),
    (2048, 512, 1, 1, 7, 2),
    (512, 512, 3, 1, 7, 2),
    (512, 2048, 1, 1, 7, 3),
]


def conv(batch, reps, net="resnet18", only=""):
    # GPU: TFLOP/s, CPU: GFLOP/s (as `sslab bench conv`).
    unit, scale, digits = ("tflops", 1e-12, 2) if DEV.type == "cuda" else ("gflops", 1e-9, 1)
    shapes = {"resnet18": CONV_SHAPES, "resnet50": RESNET50_SHAPES}[net]
    for c, o, k, s, h, count in shapes:
        if only not in f"{c}x{o}k{k}s{s}@{h}":
            continue
        pad = k // 2
        x = torch.randn(batch, c, h, h, device=DEV)
        w = torch.randn(o, c, k, k, device=DEV) * 0.1
        if AMP:
            # What autocast hands the convolution (bf16 operands): the layer tables of
            # `compare.sh --precision bf16 conv` then time PyTorch's bf16 kernels, not its f32 ones.
            x, w = x.bfloat16(), w.bfloat16()
        y = F.conv2d(x, w, None, s, pad)
        dy = torch.randn_like(y)
        macs = batch * o * y.shape[2] * y.shape[3] * c * k * k
        bwd = torch.ops.aten.convolution_backward

        def fwd():
            F.conv2d(x, w, None, s, pad)

        def dx():
            bwd(dy, x, w, None, [s, s], [pad, pad], [1, 1], False, [0, 0], 1, [True, False, False])

        def dw():
            bwd(dy, x, w, None, [s, s], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, False])

        out = []
        for name, f in (("fwd", fwd), ("dx", dx), ("dw", dw)):
            f()
            t = median_time(f, reps)
            out.append(f"{name}_{unit}={2 * macs / t * scale:.{digits}f}")
        print(f"RESULT conv shape={c}x{o}k{k}s{s}@{h} count={count} " + " ".join(out), flush=True)


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def median_time(f, reps):
    ts = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        f()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=["barlow-twins", "moco-v2", "moco-v3-vit", "conv"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (GPU users' default)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--net", choices=["resnet18", "resnet50"], default="resnet18", help="conv: the network's shapes")
    ap.add_argument("--shape", default="", help="conv: only shapes whose name contains this")
    ap.add_argument("--no-tf32", action="store_true", help="strict fp32 convolutions (sslab: --set cuda.tf32=false)")
    ap.add_argument("--preset", choices=["barlow-twins/imagenet", "moco-v3/vit-small"], help="GPU-sized setting, as sslab bench --preset")
    a = ap.parse_args()
    global DEV, AMP, CHANNELS_LAST, PRESET
    DEV, AMP, CHANNELS_LAST, PRESET = torch.device(a.device), a.amp, a.channels_last, a.preset
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    # As GPU users run it (the official Barlow Twins and solo-learn turn it on): cuDNN's
    # algorithm search, which sslab's CUDA convolutions do too. TF32 convolutions are
    # PyTorch's default.
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = not a.no_tf32
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    if a.workload == "conv":
        conv(a.batch, max(a.steps, 3), a.net, a.shape)
        return
    step = {"barlow-twins": barlow_twins, "moco-v2": moco_v2, "moco-v3-vit": moco_v3_vit}[a.workload](a.batch, a.width)
    step()  # warm-up
    times = []
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()  # .item() waits for the device
        times.append(time.perf_counter() - t0)
        if not math.isfinite(loss):
            sys.exit(f"non-finite loss {loss}")
    med = statistics.median(times)
    if DEV.type == "cuda":
        mem = f"peak_gpu_gb={torch.cuda.max_memory_allocated() / 1e9:.2f}"
    else:
        mem = f"peak_rss_gb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9:.2f}"
    print(f"RESULT {a.workload} step_s={med:.3f} images_per_s={2 * a.batch / med:.1f} {mem}", flush=True)


if __name__ == "__main__":
    main()
