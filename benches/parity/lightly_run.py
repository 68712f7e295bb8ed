"""One tiny-preset training run in a lightly + torchvision pipeline, as sslab runs it.

Usage: lightly_run.py CONFIG.toml DATA_DIR OUT.json [--knn-every N]

CONFIG.toml is an sslab run config (`sslab train --out D` writes D/config.toml); its method,
heads, temperatures, λ, optimizer, schedule, batch, steps and seed are used here. DATA_DIR holds
`train/<class>/*.png` and `test/<class>/*.png` (`sslab data export`). Writes OUT.json with the
kNN curve `[[step, top1], ...]` (weighted kNN as sslab's: k and t of the config, L2-normalised
backbone features, eval-mode BatchNorm) and the wall time.

What comes from lightly: the ResNet-18 (CIFAR stem, SplitBatchNorm for MoCo's ShuffleBN), the
two-view transforms, the projection heads, the Barlow Twins loss, the MoCo memory bank (through
NTXentLoss) and the momentum update. What does not, and why, is in docs/parity.md.
"""

import copy
import json
import math
import os
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from lightly.loss import BarlowTwinsLoss, NTXentLoss
from lightly.models import ResNetGenerator
from lightly.models.modules.heads import BarlowTwinsProjectionHead, MoCoProjectionHead, ProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, MoCoV2Transform

# solo-learn's clipped LARS, which the tiny presets use (lightly's LARS has no clipping); the
# twin of sslab's optimizer kept with the benchmark workloads.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch"))
from workloads import Lars  # noqa: E402

CIFAR = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}


class Backbone(nn.Module):
    """lightly's CIFAR ResNet-18 without its classifier: pooled features."""

    def __init__(self, width, splits, zero_init):
        super().__init__()
        self.net = ResNetGenerator("resnet-18", width=width / 64, num_splits=splits)
        # torchvision's ResNet initialisation (what the official code trains from, and sslab's):
        # lightly's CIFAR ResNet keeps PyTorch's default, a third of the weights' spread.
        for mod in self.net.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        if zero_init:
            for m in self.net.modules():
                if hasattr(m, "bn2"):
                    nn.init.zeros_(m.bn2.weight)
        self.dim = width * 8

    def forward(self, x):
        n = self.net
        x = F.relu(n.bn1(n.conv1(x)))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def lr_factor(cfg, step, train_len):
    """sslab's schedule (`train/schedule.rs`): linear warmup from 0, half cosine to the end."""
    o, b = cfg["optim"], cfg["train"]["batch_size"]
    per_epoch = max(train_len // b, 1)
    total = cfg["train"]["steps"]
    warmup = min(round(o["warmup_epochs"] * per_epoch), total)
    if step < warmup:
        f = step / warmup
    else:
        t = min((step - warmup) / max(total - warmup, 1), 1.0)
        q = 0.5 * (1 + math.cos(math.pi * t))
        f = q + o["final_lr_frac"] * (1 - q)
    return f * (b / 256 if o["scale_lr_with_batch"] else 1.0)


def optimizer(cfg, params):
    o = cfg["optim"]
    multi = [p for p in params if p.ndim > 1]
    one = [p for p in params if p.ndim <= 1]
    one_wd = 0.0 if o["exclude_1d"] else o["weight_decay"]
    groups = [dict(params=multi, weight_decay=o["weight_decay"], base=o["lr"]),
              dict(params=one, weight_decay=one_wd, base=o.get("lr_1d", o["lr"]))]
    if o["kind"] == "sgd":
        return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"])
    if o["kind"] == "lars" and o["lars_clip_lr"] and o["exclude_1d"]:
        # Adapts and decays ≥2-D tensors only, as exclude_1d asks.
        return Lars(groups, lr=o["lr"], weight_decay=o["weight_decay"], eta=o["eta"], momentum=o["momentum"])
    raise SystemExit(f"optimizer {o['kind']} (clip {o['lars_clip_lr']}, exclude_1d {o['exclude_1d']}) not covered here")


def transforms(cfg):
    a = cfg["augment"]
    size, smin = a["size"], a["scale_min"]
    if a["recipe"] == "byol-cifar":
        # sslab's byol-cifar: BYOL's views without blur, saturation 0.2, solarize 0.2 on view 2.
        v1 = BYOLView1Transform(input_size=size, min_scale=smin, cj_sat=0.2, gaussian_blur=0.0,
                                solarization_prob=0.0, normalize=CIFAR)
        v2 = BYOLView2Transform(input_size=size, min_scale=smin, cj_sat=0.2, gaussian_blur=0.0,
                                solarization_prob=0.2, normalize=CIFAR)
        return BYOLTransform(view_1_transform=v1, view_2_transform=v2)
    if a["recipe"] == "moco-v2-cifar":
        return MoCoV2Transform(input_size=size, min_scale=smin, gaussian_blur=0.0, normalize=CIFAR)
    raise SystemExit(f"augment.recipe {a['recipe']} not covered here")


@torch.no_grad()
def knn(backbone, train, test, k, t, classes):
    backbone.eval()

    def feats(ds):
        out, labels = [], []
        for x, y in torch.utils.data.DataLoader(ds, batch_size=256):
            out.append(F.normalize(backbone(x), dim=1))
            labels.append(y)
        return torch.cat(out), torch.cat(labels)

    bank, bank_y = feats(train)
    q, q_y = feats(test)
    sim = q @ bank.T
    w, idx = sim.topk(k, dim=1)
    w = (w / t).exp()
    scores = torch.zeros(q.shape[0], classes).scatter_add_(1, bank_y[idx], w)
    backbone.train()
    return float((scores.argmax(1) == q_y).float().mean() * 100)


def main(config_path, data_dir, out_path, knn_every=0):
    cfg = tomllib.loads(open(config_path).read())
    # lightly's transforms draw from torch's and NumPy's generators (solarization, blur).
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    method, m = cfg["method"], cfg["model"]
    plain = torchvision.transforms.Compose([torchvision.transforms.ToTensor(),
                                            torchvision.transforms.Normalize(**CIFAR)])
    train_eval = torchvision.datasets.ImageFolder(f"{data_dir}/train", transform=plain)
    test_eval = torchvision.datasets.ImageFolder(f"{data_dir}/test", transform=plain)
    train_views = torchvision.datasets.ImageFolder(f"{data_dir}/train", transform=transforms(cfg))
    classes = len(train_eval.classes)
    batch, steps = cfg["train"]["batch_size"], cfg["train"]["steps"]
    loader = torch.utils.data.DataLoader(train_views, batch_size=batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(cfg["seed"]))

    if method == "barlow-twins":
        c = cfg["barlow_twins"]
        backbone = Backbone(m["width"], 0, m["zero_init_residual"])
        h, o = c["projector"][0], c["projector"][-1]
        if len(c["projector"]) != 3 or c["projector"][1] != h:
            raise SystemExit("lightly's BarlowTwinsProjectionHead has three layers [h, h, o]")
        head = BarlowTwinsProjectionHead(backbone.dim, h, o)
        crit = BarlowTwinsLoss(lambda_param=c["lambda"])
        params = list(backbone.parameters()) + list(head.parameters())

        def loss_fn(x0, x1, step):
            return crit(head(backbone(x0)), head(backbone(x1))) * c["scale_loss"]

    elif method == "moco-v2":
        c = cfg["moco"]
        splits = c["bn_splits"] if c["bn_splits"] > 1 else 0
        backbone = Backbone(m["width"], splits, m["zero_init_residual"])
        head = MoCoProjectionHead(backbone.dim, c["hidden"] or backbone.dim, c["dim"])
        key_bb, key_head = copy.deepcopy(backbone), copy.deepcopy(head)
        for p in list(key_bb.parameters()) + list(key_head.parameters()):
            p.requires_grad_(False)
        crit = NTXentLoss(temperature=c["tau"], memory_bank_size=(c["queue_size"], c["dim"]))
        params = list(backbone.parameters()) + list(head.parameters())

        def loss_fn(x0, x1, step):
            q = head(backbone(x0))
            with torch.no_grad():
                update_momentum(backbone, key_bb, c["momentum"])
                update_momentum(head, key_head, c["momentum"])
                if c["shuffle_bn"]:
                    x1, order = batch_shuffle(x1)
                k = key_head(key_bb(x1))
                if c["shuffle_bn"]:
                    k = batch_unshuffle(k, order)
            return crit(q, k)

    elif method == "moco-v3":
        c = cfg["moco_v3"]
        if m["backbone"] != "resnet":
            raise SystemExit("the lightly pipeline covers MoCo v3 on the ResNet")
        backbone = Backbone(m["width"], 0, m["zero_init_residual"])
        proj = ProjectionHead([(backbone.dim, c["hidden"], nn.BatchNorm1d(c["hidden"]), nn.ReLU()),
                               (c["hidden"], c["dim"], nn.BatchNorm1d(c["dim"], affine=False), None)])
        pred = ProjectionHead([(c["dim"], c["hidden"], nn.BatchNorm1d(c["hidden"]), nn.ReLU()),
                               (c["hidden"], c["dim"], None, None, False)])
        key_bb, key_proj = copy.deepcopy(backbone), copy.deepcopy(proj)
        for p in list(key_bb.parameters()) + list(key_proj.parameters()):
            p.requires_grad_(False)
        params = list(backbone.parameters()) + list(proj.parameters()) + list(pred.parameters())
        tau = c["tau"]

        def ctr(q, k):
            q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
            logits = q @ k.T / tau
            return F.cross_entropy(logits, torch.arange(q.shape[0])) * (2 * tau)

        def loss_fn(x0, x1, step):
            # sslab's cosine momentum after `step` steps (the EMA at the start of this forward).
            mom = 1 - 0.5 * (1 + math.cos(math.pi * step / steps)) * (1 - c["momentum"])
            q0, q1 = pred(proj(backbone(x0))), pred(proj(backbone(x1)))
            with torch.no_grad():
                update_momentum(backbone, key_bb, mom)
                update_momentum(proj, key_proj, mom)
                k0, k1 = key_proj(key_bb(x0)), key_proj(key_bb(x1))
            return ctr(q0, k1) + ctr(q1, k0)

    else:
        raise SystemExit(f"method {method} not covered here")

    opt = optimizer(cfg, params)
    k, t = cfg["eval"]["knn_k"], cfg["eval"]["knn_t"]
    curve = [[0, knn(backbone, train_eval, test_eval, k, t, classes)]]
    print(f"{method} seed {cfg['seed']}: kNN at init {curve[0][1]:.2f}", flush=True)
    t0, step = time.time(), 0
    while step < steps:
        for (x0, x1), _ in loader:
            f = lr_factor(cfg, step, len(train_views))
            for g in opt.param_groups:
                g["lr"] = g["base"] * f
            loss = loss_fn(x0, x1, step)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 20 == 0:
                print(f"step {step} loss {loss.item():.4f}", flush=True)
            if (knn_every and step % knn_every == 0) or step == steps:
                curve.append([step, knn(backbone, train_eval, test_eval, k, t, classes)])
                print(f"step {step}: kNN {curve[-1][1]:.2f}", flush=True)
            if step == steps:
                break
    out = dict(method=method, seed=cfg["seed"], steps=steps, batch=batch, knn_curve=curve,
               seconds=time.time() - t0, torch=torch.__version__,
               lightly=__import__("lightly").__version__)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    args = sys.argv[1:]
    every = 0
    if "--knn-every" in args:
        i = args.index("--knn-every")
        every = int(args[i + 1])
        del args[i : i + 2]
    main(*args, knn_every=every)
