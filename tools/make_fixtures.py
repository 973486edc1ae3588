#!/usr/bin/env python3
"""Writes the stdlib conformance fixtures (tests/fixtures/*.json) from the reference implementations.

Requires: torch, torchvision, libauc, pytorch-metric-learning, diffsort (all from PyPI; see
tools/requirements-fixtures.txt; the test suite does not need Python), and git for the papers' own code
(checked out at the commits ../shared/LOSSES.md names into $LOSSC_ORIGINALS, default
~/.cache/lossc/originals). Run from the repository root:  python3 tools/make_fixtures.py [FAMILY ...]

Each fixture file holds cases; a case names the lx loss (a stdlib path or inline source), its
hyperparameters, and one or more calls (several for stateful losses: the state carries over) with inputs,
the expected loss (float64), the expected gradients and the expected outputs (state written back).
The reference of each case is named in its "reference" field: a library call, or "re-implementation of
<repo file>" where no package ships the paper's code.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


def enc(t):
    a = t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
    if a.dtype.kind in "iu":
        return {"shape": list(a.shape), "dtype": "i64", "data": [int(v) for v in a.reshape(-1)]}
    return {"shape": list(a.shape), "dtype": "f64", "data": [float(v) for v in a.reshape(-1)]}


def call(inputs, fn, outputs=None):
    """Runs `fn(**inputs)` (float inputs that require grad get gradients) and records the result."""
    leaves = {}
    for k, v in inputs.items():
        if torch.is_tensor(v) and v.dtype.is_floating_point and v.requires_grad:
            leaves[k] = v
    res = fn(**inputs)
    loss, outs = (res if isinstance(res, tuple) else (res, {}))
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True) if leaves else []
    rec = {
        "inputs": {k: enc(v) for k, v in inputs.items()},
        "loss": float(loss),
        "grads": {k: enc(g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(leaves, grads)},
        "outputs": {k: enc(v) for k, v in outs.items()},
    }
    return rec


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed, scale=1.0, grad=True):
    t = torch.randn(*shape, generator=gen(seed)) * scale
    return t.requires_grad_(grad)


def labels(n, c, seed):
    return torch.randint(0, c, (n,), generator=gen(seed))


def write(family, cases):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{family}.json"), "w") as f:
        json.dump({"family": family, "cases": cases}, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"{family}: {len(cases)} cases")


def case(name, loss, reference, calls, hypers=None, source=None):
    c = {"name": name, "loss": loss, "reference": reference, "hypers": hypers or {}, "calls": calls}
    if source is not None:
        c["source"] = source
    return c


def clone(repo):
    """The checkout of GitHub `repo` in $LOSSC_ORIGINALS/<owner>+<name> (default ~/.cache/lossc/originals),
    cloned there when missing."""
    root = os.environ.get("LOSSC_ORIGINALS", os.path.expanduser("~/.cache/lossc/originals"))
    checkout = os.path.join(root, repo.replace("/", "+"))
    if not os.path.isdir(checkout):
        subprocess.run(["git", "clone", "--quiet", f"https://github.com/{repo}", checkout], check=True)
    return checkout


def original(repo, commit, path):
    """The file `path` of GitHub `repo` at `commit`, imported as a module: the paper's own code, run as it is
    (a checkout in $LOSSC_ORIGINALS/<owner>+<name>, cloned there when missing). A repository whose history
    was rewritten after the commit has no checkout of it: then the file is read from
    $LOSSC_ORIGINALS/<owner>+<name>@<commit>/<path>, a copy of it at that commit (GitHub still serves it:
    https://raw.githubusercontent.com/<owner>/<name>/<commit>/<path>)."""
    root = os.environ.get("LOSSC_ORIGINALS", os.path.expanduser("~/.cache/lossc/originals"))
    copy = os.path.join(root, repo.replace("/", "+") + "@" + commit)
    if os.path.exists(os.path.join(copy, path)):
        checkout = copy
    else:
        checkout = clone(repo)
        subprocess.run(["git", "-C", checkout, "checkout", "--quiet", commit], check=True)
    if checkout not in sys.path:
        sys.path.insert(0, checkout)  # the file's own imports of its repository (`import util.globals`)
    spec = importlib.util.spec_from_file_location(path.replace("/", "_").removesuffix(".py"), os.path.join(checkout, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def original_defs(repo, commit, path, names, namespace):
    """The top-level functions and classes `names` of the file `path` (as `original`), defined in `namespace`
    and returned in order: for a file whose module-level imports cannot run here (relative imports of its
    package, APIs removed from numpy); the definitions themselves run as written."""
    import ast
    text = subprocess.run(["git", "-C", clone(repo), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    tree = ast.parse(text)
    defs = [d for d in tree.body if isinstance(d, (ast.FunctionDef, ast.ClassDef)) and d.name in names]
    exec(compile(ast.Module(body=defs, type_ignores=[]), f"{repo}/{path}", "exec"), namespace)
    return [namespace[n] for n in names]


# ---- classification ----------------------------------------------------------------------------------


def classification():
    cases = []
    for scale, tag in [(1.0, ""), (80.0, "_pm80")]:
        s = (torch.rand(6, 5, generator=gen(1)) * 2 - 1) * scale
        s.requires_grad_(True)
        y = labels(6, 5, 2)
        cases.append(case(f"cross_entropy{tag}", "std::classification::cross_entropy", "torch F.cross_entropy",
                          [call({"s": s, "y": y}, lambda s, y: F.cross_entropy(s, y))]))
        cases.append(case(f"cross_entropy_smooth{tag}", "std::classification::cross_entropy_smooth",
                          "torch F.cross_entropy(label_smoothing=0.1)",
                          [call({"s": s, "y": y}, lambda s, y: F.cross_entropy(s, y, label_smoothing=0.1))]))
    s = randn(6, 5, seed=21, scale=2.0)
    y = labels(6, 5, 22)
    p_y = lambda s, y: torch.softmax(s, 1).gather(1, y[:, None])[:, 0]

    def comp_sum(s, y, tau=0.5):
        # the comp-sum family (Mao, Mohri, Zhong, ICML 2023; no official code): ((1 + u)^(1 - tau) - 1)/(1 - tau)
        return (((1 / p_y(s, y)) ** (1 - tau) - 1) / (1 - tau)).mean()

    def gce(s, y, q=0.7):
        # Active-Passive-Losses loss.py GeneralizedCrossEntropy: clamp p to [1e-7, 1]
        return ((1 - torch.clamp(p_y(s, y), min=1e-7, max=1.0) ** q) / q).mean()

    def mae(s, y):
        # Active-Passive-Losses loss.py MeanAbsoluteError(scale=1)
        return (1.0 - (F.one_hot(y, 5) * torch.softmax(s, 1)).sum(1)).mean()

    def z_loss(s, y):
        # factored_output_layer timing_example.py cost 'z', plain: sum of softplus((mu - x_y)/(sigma + eps))
        mu = s.mean(1)
        sigma = torch.sqrt((s * s).mean(1) - mu * mu)
        return F.softplus((mu - s.gather(1, y[:, None])[:, 0]) / (sigma + 1e-12)).sum()

    s80 = ((torch.rand(6, 5, generator=gen(23)) * 2 - 1) * 80).requires_grad_(True)
    for lx, fn, ref in [("comp_sum", comp_sum, "comp-sum formula, tau = 0.5 (no official code)"),
                        ("gce", gce, "re-implementation of Active-Passive-Losses GeneralizedCrossEntropy(q=0.7)"),
                        ("mae", mae, "re-implementation of Active-Passive-Losses MeanAbsoluteError(scale=1)"),
                        ("z_loss", z_loss, "re-implementation of factored_output_layer cost 'z' (plain)")]:
        cases.append(case(lx, f"std::classification::{lx}", ref, [call({"s": s, "y": y}, fn)]))
        cases.append(case(f"{lx}_pm80", f"std::classification::{lx}", ref, [call({"s": s80, "y": y}, fn)]))

    s = randn(6, 5, seed=25, scale=4.0)
    y = labels(6, 5, 26)
    v = torch.randn(6, generator=gen(27))

    def per_sample(s, y, cotangent):
        value = F.cross_entropy(s, y, reduction="none")
        return (value * cotangent).sum(), {"value": value}

    cases.append(case("cross_entropy_per_sample_vjp", "std::classification::cross_entropy_per_sample",
                      "torch F.cross_entropy(reduction='none'), VJP with a cotangent",
                      [call({"s": s, "y": y, "cotangent": v}, per_sample)]))
    write("classification", cases)


# ---- robust (LDR-KL, ALDR-KL) ------------------------------------------------------------------------


def ldr_kl_ref(s, y, c=2.0, lam=1.0):
    # re-implementation of Optimization-AI/ICML2023_LDR loss.py LDRLoss_V1
    C = s.shape[1]
    g = F.softplus(s)
    g = g / g.mean(dim=1, keepdim=True)
    d = c * (1 - F.one_hot(y, C)) + g - g.gather(1, y[:, None])
    m = d.max(dim=1, keepdim=True)[0].detach()
    return (lam * torch.log(torch.exp((d - m) / lam).mean(dim=1)) + m[:, 0]).mean()


class ALDR:
    # re-implementation of Optimization-AI/ICML2023_LDR loss.py ALDRLoss_V1 (LOSSES.md §4)
    def __init__(self, n, c=1.0, lam_ref=1.0, alpha=1.0, softplus=False):
        self.lam = torch.ones(n) * lam_ref
        self.c, self.lam_ref, self.alpha, self.softplus = c, lam_ref, alpha, softplus

    def __call__(self, s, y, ids):
        C = s.shape[1]
        g = F.softplus(s) if self.softplus else s
        g = g / (g.abs().sum(dim=1, keepdim=True) / C)
        q = torch.softmax(g.detach() / self.lam[ids][:, None], dim=1) + 1e-5
        q = q / q.sum(dim=1, keepdim=True)
        kl = (q * torch.log(C * q)).sum(dim=1)
        logC = math.log(C)
        lam = (self.lam_ref - self.lam_ref * kl / (self.alpha * logC)).detach()
        self.lam[ids] = lam
        extra = -0.5 * self.alpha * logC / self.lam_ref * (lam - self.lam_ref) ** 2
        d = self.c * (1 - F.one_hot(y, C)) + g - g.gather(1, y[:, None])
        l = lam * torch.log(torch.exp(d / lam[:, None]).mean(dim=1)) + extra
        return l.mean(), {"lam_new": lam}


def robust():
    cases = []
    for scale, tag in [(1.0, ""), (80.0, "_pm80")]:
        s = randn(6, 5, seed=3, scale=scale)
        y = labels(6, 5, 4)
        cases.append(case(f"ldr_kl{tag}", "std::robust::ldr_kl", "re-implementation of ICML2023_LDR loss.py LDRLoss_V1",
                          [call({"s": s, "y": y}, lambda s, y: ldr_kl_ref(s, y))]))
    s = randn(6, 5, seed=5, scale=2.0)
    y = labels(6, 5, 6)

    def ldr_paper(s, y, c=1.0, lam=1.0):
        C = s.shape[1]
        d = c * (1 - F.one_hot(y, C)) + s - s.gather(1, y[:, None])
        return (lam * (torch.logsumexp(d / lam, 1) - math.log(C))).mean()

    cases.append(case("ldr_kl_paper", "std::robust::ldr_kl_paper", "LDR-KL paper form (Zhu, Ying, Yang, ICML 2023)",
                      [call({"s": s, "y": y}, ldr_paper)]))
    ref = ALDR(10, c=0.1, lam_ref=10.0, alpha=2.0, softplus=True)
    calls = []
    for k, ids in enumerate([[0, 3, 5, 7], [3, 1, 7, 9]]):
        s = randn(4, 6, seed=10 + k, scale=2.0)
        y = labels(4, 6, 20 + k)
        calls.append(call({"s": s, "y": y, "ids": torch.tensor(ids)}, ref))
    cases.append(case("aldr_kl_two_calls", "std::robust::aldr_kl", "re-implementation of ICML2023_LDR loss.py ALDRLoss_V1",
                      calls, hypers={"c": 0.1, "lambda_ref": 10.0, "alpha": 2.0, "use_softplus": 1.0}))
    write("robust", cases)


# ---- focal, hinge, distill ---------------------------------------------------------------------------


def focal_hinge_distill():
    from libauc.losses import FocalLoss

    cases = []
    for scale, tag in [(1.0, ""), (80.0, "_pm80")]:
        x = randn(8, seed=5, scale=scale)
        y = labels(8, 2, 6)
        fl = FocalLoss(alpha=0.25, gamma=2.0, device="cpu")
        cases.append(case(f"focal_libauc_as_coded{tag}", "std::focal::focal_libauc_as_coded",
                          "libauc.losses.FocalLoss(0.25, 2)",
                          [call({"x": x, "y": y}, lambda x, y: fl(x[:, None], y[:, None].double()))]))

        def per_sample(x, y):
            # libauc FocalLoss with alpha_t kept per sample (its [N] x [N, 1] broadcast removed)
            bce = F.binary_cross_entropy_with_logits(x, y.double(), reduction="none")
            at = torch.tensor([0.25, 0.75]).gather(0, y)
            return (at * (1 - torch.exp(-bce)) ** 2 * bce).mean()

        cases.append(case(f"focal_libauc{tag}", "std::focal::focal_libauc",
                          "re-implementation of libauc FocalLoss per sample", [call({"x": x, "y": y}, per_sample)]))
        xb = randn(8, seed=15, scale=scale)
        yb = labels(8, 2, 16).double()
        from torchvision.ops import sigmoid_focal_loss

        cases.append(case(f"focal_binary{tag}", "std::focal::focal_binary",
                          "torchvision.ops.sigmoid_focal_loss(alpha=0.25, gamma=2, reduction='mean')",
                          [call({"x": xb, "y": yb}, lambda x, y: sigmoid_focal_loss(x, y, reduction="mean"))]))
        s = randn(6, 5, seed=7, scale=scale)
        yy = labels(6, 5, 8)
        cases.append(case(f"weston_watkins{tag}", "std::hinge::weston_watkins", "torch F.multi_margin_loss(p=1, margin=1)",
                          [call({"s": s, "y": yy}, lambda s, y: F.multi_margin_loss(s, y))]))
    s = randn(6, 5, seed=31, scale=2.0)
    y = labels(6, 5, 32)

    def focal_mc(s, y, detach):
        # clcarwin/focal_loss_pytorch as in Active-Passive-Losses loss.py FocalLoss(gamma=2): pt detached there
        logpt = F.log_softmax(s, 1).gather(1, y[:, None])[:, 0]
        pt = logpt.exp().detach() if detach else logpt.exp()
        return (-(1 - pt) ** 2 * logpt).mean()

    cases.append(case("focal_multiclass", "std::focal::focal_multiclass", "multi-class focal, differentiated through p_t",
                      [call({"s": s, "y": y}, lambda s, y: focal_mc(s, y, False))]))
    cases.append(case("focal_multiclass_detached", "std::focal::focal_multiclass_detached",
                      "re-implementation of Active-Passive-Losses FocalLoss (detached p_t)",
                      [call({"s": s, "y": y}, lambda s, y: focal_mc(s, y, True))]))

    def crammer_singer(s, y, c=1.0):
        # re-implementation of ICML2023_LDR loss.py CSLoss(threshold=1.0)
        d = c * (1 - F.one_hot(y, s.shape[1])) + s - s.gather(1, y[:, None])
        return F.relu(d).max(1)[0].mean()

    s = randn(6, 5, seed=33, scale=0.5)
    cases.append(case("crammer_singer", "std::hinge::crammer_singer", "re-implementation of ICML2023_LDR CSLoss",
                      [call({"s": s, "y": y}, crammer_singer)]))
    from libauc.losses.surrogate import hinge_loss

    sb = randn(8, seed=34)
    yb = torch.tensor([1.0, -1, 1, 1, -1, -1, 1, -1])
    cases.append(case("binary_hinge", "std::hinge::binary_hinge", "libauc.losses.surrogate.hinge_loss(1, y * s), mean",
                      [call({"s": sb, "y": yb}, lambda s, y: hinge_loss(1.0, y * s).mean())]))
    s = randn(6, 5, seed=9, scale=3.0)
    t = randn(6, 5, seed=10, scale=3.0, grad=False)
    kd = lambda s, t: F.kl_div(F.log_softmax(s / 4.0, 1), F.softmax(t / 4.0, 1), reduction="batchmean") * 16.0
    cases.append(case("distill", "std::distill::distill", "torch KL(softmax(t/T) || softmax(s/T)) * T^2, batchmean",
                      [call({"s": s, "t": t}, kd)]))
    write("focal_hinge_distill", cases)


# ---- ranking -----------------------------------------------------------------------------------------


def ranking():
    from libauc.losses import PairwiseAUCLoss

    cases = []
    s = randn(10, seed=11)
    y = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0, 1, 0])
    for surr, lx in [("logistic", "auc_logistic"), ("squared", "auc_squared"),
                     ("squared_hinge", "auc_squared_hinge"), ("hinge", "auc_hinge")]:
        hp = 1.0
        fn = PairwiseAUCLoss(surr_loss=surr, hparam=hp)
        cases.append(case(lx, f"std::ranking::{lx}", f"libauc.losses.PairwiseAUCLoss(surr_loss='{surr}')",
                          [call({"s": s, "y": y}, lambda s, y, fn=fn: fn(s, y))]))
    from libauc.losses import AUCMLoss

    for version in ["v1", "v2"]:
        def aucm(s, y, a, b, alpha, version=version):
            fn = AUCMLoss(margin=1.0, version=version, device="cpu")
            fn._parameters["a"], fn._parameters["b"], fn._parameters["alpha"] = a, b, alpha
            return fn(s, y)

        ab = {"a": torch.tensor([0.3]).requires_grad_(True), "b": torch.tensor([-0.2]).requires_grad_(True),
              "alpha": torch.tensor([0.7]).requires_grad_(True)}
        cases.append(case(f"aucm_{version}", f"std::ranking::aucm_{version}",
                          f"libauc.losses.AUCMLoss(margin=1, version='{version}') with a, b, alpha set",
                          [call({"s": s, "y": y, **ab}, aucm)]))
    write("ranking", cases)


# ---- metric learning ---------------------------------------------------------------------------------


def metric_learning():
    from pytorch_metric_learning import losses, miners

    cases = []
    a, p, n = randn(5, 4, seed=12), randn(5, 4, seed=13), randn(5, 4, seed=14)
    cases.append(case("triplet_margin", "std::metric_learning::triplet_margin", "torch nn.TripletMarginLoss(margin=1)",
                      [call({"a": a, "p": p, "n": n}, lambda a, p, n: torch.nn.TripletMarginLoss(margin=1.0)(a, p, n))]))
    x = randn(8, 4, seed=15)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    cases.append(case("triplet_all", "std::metric_learning::triplet_all",
                      "pytorch_metric_learning TripletMarginLoss(margin=0.05) (all triplets, AvgNonZero)",
                      [call({"x": x, "y": y}, lambda x, y: losses.TripletMarginLoss(margin=0.05)(x, y))]))

    def ms(x, y):
        miner = miners.MultiSimilarityMiner(epsilon=0.1)
        return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(x, y, miner(x, y))

    xs = randn(8, 4, seed=16)
    cases.append(case("multi_similarity", "std::metric_learning::multi_similarity",
                      "pytorch_metric_learning MultiSimilarityLoss(2, 50, 0.5) with MultiSimilarityMiner(0.1)",
                      [call({"x": xs, "y": y}, ms)]))
    def ms_paper(x, y, alpha=2.0, beta=40.0, thresh=0.5, margin=0.1):
        # re-implementation of MalongTech/research-ms-loss multi_similarity_loss.py on l2-normalised features
        feats = F.normalize(x, dim=1)
        sim = feats @ feats.T
        loss = []
        for i in range(len(x)):
            pos_ = sim[i][y == y[i]]
            pos_ = pos_[pos_ < 1 - 1e-5]
            neg_ = sim[i][y != y[i]]
            neg = neg_[neg_ + margin > torch.min(pos_)]
            pos = pos_[pos_ - margin < torch.max(neg_)]
            if len(neg) < 1 or len(pos) < 1:
                continue
            loss.append(1 / alpha * torch.log(1 + torch.exp(-alpha * (pos - thresh)).sum())
                        + 1 / beta * torch.log(1 + torch.exp(beta * (neg - thresh)).sum()))
        return sum(loss) / len(x)

    cases.append(case("multi_similarity_paper", "std::metric_learning::multi_similarity_paper",
                      "re-implementation of research-ms-loss MultiSimilarityLoss (2, 40, thresh 0.5, margin 0.1)",
                      [call({"x": xs, "y": y}, ms_paper)]))
    write("metric_learning", cases)


# ---- contrastive (NT-Xent, SogCLR, iSogCLR, GCL bimodal) ---------------------------------------------


def contrastive():
    from pytorch_metric_learning import losses
    from libauc.losses import GCLoss_v1, GCLoss_v2

    cases = []
    x = randn(8, 4, seed=17)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    cases.append(case("nt_xent_labels", "std::contrastive::nt_xent_labels", "pytorch_metric_learning NTXentLoss(0.07)",
                      [call({"x": x, "y": y}, lambda x, y: losses.NTXentLoss(temperature=0.07)(x, y))]))

    def simclr(a, b, tau=0.5):
        # re-implementation of learning_by_sorting losses/nt_xent.py NT_Xent(temperature=0.5)
        n = len(a)
        z = torch.cat((a, b), 0)
        sim = F.cosine_similarity(z[:, None], z[None], dim=2) / tau
        targets = torch.cat([torch.cat([torch.zeros(n, n), torch.eye(n)], 1),
                             torch.cat([torch.eye(n), torch.zeros(n, n)], 1)], 0)
        mask = torch.eye(2 * n, dtype=torch.bool)
        sim = sim[~mask].view(2 * n, -1)
        targets = targets[~mask].view(2 * n, -1).argmax(1)
        return F.cross_entropy(sim, targets, reduction="sum") / (2 * n)

    cases.append(case("nt_xent", "std::contrastive::nt_xent", "re-implementation of learning_by_sorting NT_Xent",
                      [call({"a": randn(6, 4, seed=18), "b": randn(6, 4, seed=19)}, simclr)]))

    def dexml(q, d, rel, tau=0.5):
        # re-implementation of DEXML losses.py decoupled-softmax without sampling: other positives removed
        s = F.normalize(q, dim=1) @ F.normalize(d, dim=1).T / tau
        pos = rel > 0
        total = 0
        for i in range(len(q)):
            others = torch.exp(s[i][~pos[i]]).sum()
            ps = s[i][pos[i]]
            total = total + (torch.log(torch.exp(ps) + others) - ps).mean()
        return total / len(q)

    rel = torch.tensor([[1.0, 0, 0, 2, 0], [0, 1, 0, 0, 0], [0, 0, 3, 1, 1], [1, 0, 0, 0, 1]])
    cases.append(case("decoupled_softmax", "std::contrastive::decoupled_softmax",
                      "re-implementation of DEXML decoupled softmax (no sampling)",
                      [call({"q": randn(4, 3, seed=20), "d": randn(5, 3, seed=21), "rel": rel}, dexml)],
                      hypers={"tau": 0.5}))

    def stateful(ref, names, make_inputs, fn):
        calls = []
        for k, ids in enumerate([[0, 2, 4, 5, 7], [2, 3, 5, 6, 9]]):
            inputs = make_inputs(k)
            inputs["ids"] = torch.tensor(ids)
            calls.append(call(inputs, fn))
        return calls

    B, D = 5, 4
    mk = lambda k: {"h1": randn(B, D, seed=30 + k), "h2": randn(B, D, seed=40 + k)}
    ref = GCLoss_v1(N=10, tau=0.1, gamma=0.9, device="cpu")

    def sog(h1, h2, ids):
        loss = ref(h1, h2, ids)
        return loss, {"u_new": ref.u[ids][:, 0].clone()}

    cases.append(case("sogclr_two_calls", "std::contrastive::sogclr", "libauc.losses.GCLoss_v1(N=10, tau=0.1, gamma=0.9)",
                      stateful(ref, None, mk, sog)))

    iref = GCLoss_v1(N=10, tau=0.1, gamma=0.9, device="cpu", enable_isogclr=True)

    def isog(h1, h2, ids):
        loss = iref(h1, h2, ids)
        return loss, {"u_new": iref.u[ids][:, 0].clone(), "t_new": iref.learnable_tau[ids][:, 0].clone(),
                      "gt_new": iref.grad_tau[ids][:, 0].clone()}

    cases.append(case("isogclr_two_calls", "std::contrastive::isogclr",
                      "libauc.losses.GCLoss_v1(N=10, tau=0.1, enable_isogclr=True)", stateful(iref, None, mk, isog)))

    bref = GCLoss_v2(N=10, tau=0.1, gamma=0.9)
    mkb = lambda k: {"img": randn(B, D, seed=50 + k, scale=0.5), "txt": randn(B, D, seed=60 + k, scale=0.5)}

    def bim(img, txt, ids):
        loss, _ = bref(img, txt, ids)
        return loss, {"u1_new": bref.u1[ids][:, 0].clone(), "u2_new": bref.u2[ids][:, 0].clone(),
                      "b1_new": bref.b1[ids][:, 0].clone(), "b2_new": bref.b2[ids][:, 0].clone()}

    cases.append(case("gcl_bimodal_two_calls", "std::contrastive::gcl_bimodal", "libauc.losses.GCLoss_v2(N=10, tau=0.1)",
                      stateful(bref, None, mkb, bim), hypers={"tau": 0.1}))
    iref2 = GCLoss_v2(N=10, tau=0.02, gamma=0.9, temperature_scheme="individual_learnable")

    def bim_iso(img, txt, ids):
        loss, _ = iref2(img, txt, ids)
        names = {"u1": "u1", "u2": "u2", "b1": "b1", "b2": "b2", "t": "learnable_tau_img",
                 "s": "learnable_tau_txt", "gt": "grad_tau_img", "gs": "grad_tau_txt"}
        return loss, {f"{k}_new": getattr(iref2, v)[ids][:, 0].clone() for k, v in names.items()}

    cases.append(case("gcl_bimodal_isogclr_two_calls", "std::contrastive::gcl_bimodal_isogclr",
                      "libauc.losses.GCLoss_v2(N=10, tau=0.02, temperature_scheme='individual_learnable')",
                      stateful(iref2, None, mkb, bim_iso), hypers={"tau": 0.02}))
    gref = GCLoss_v2(N=10, tau=0.05, gamma=0.9, temperature_scheme="global_learnable")

    def bim_tau(img, txt, ids, tau):
        gref.tau = tau[0]
        loss, _ = gref(img, txt, ids)
        return loss, {"u1_new": gref.u1[ids][:, 0].clone(), "u2_new": gref.u2[ids][:, 0].clone(),
                      "b1_new": gref.b1[ids][:, 0].clone(), "b2_new": gref.b2[ids][:, 0].clone()}

    def mk_tau(k):
        d = mkb(k)
        d["tau"] = torch.tensor([0.05 + 0.01 * k]).requires_grad_(True)
        return d

    cases.append(case("gcl_bimodal_learnable_tau_two_calls", "std::contrastive::gcl_bimodal_learnable_tau",
                      "libauc.losses.GCLoss_v2(N=10, temperature_scheme='global_learnable')",
                      stateful(gref, None, mk_tau, bim_tau)))
    write("contrastive", cases)


# ---- sorting networks, sorting supervision, GroCo -----------------------------------------------------


def sorting():
    import diffsort

    cases = []
    for n, network, relax, steep in [(5, "odd_even", "cauchy", 10.0), (6, "bitonic", "cauchy", 10.0),
                                     (5, "bitonic", "logistic", 3.0), (7, "odd_even", "logistic_phi", 5.0),
                                     (8, "bitonic", "reciprocal", 4.0)]:
        x = randn(3, n, seed=70 + n)
        w = randn(3, n, n, seed=80 + n, grad=False)
        sorter = diffsort.DiffSortNet(network, n, steepness=steep, distribution=relax, device="cpu")
        src = (f"loss net(x: f32[B, {n}], w: f32[B, {n}, {n}] nograd) -> (P: f32[B, {n}, {n}]) {{\n"
               f"    out P[r, i, j] = sortnet[k](x[r, k]; network = \"{network}\", relax = \"{relax}\", "
               f"steepness = {steep})[i, j]\n"
               f"    sum[r, i, j] P[r, i, j] * w[r, i, j]\n}}\n")

        def fn(x, w, sorter=sorter):
            _, P = sorter(x)
            return (P * w).sum(), {"P": P}

        cases.append(case(f"sortnet_{network}_{relax}_{n}", "net", f"diffsort.DiffSortNet('{network}', {n}, "
                          f"steepness={steep}, distribution='{relax}')", [call({"x": x, "w": w}, fn)], source=src))

    def sort_bce(network, n):
        sorter = diffsort.DiffSortNet(network, n, steepness=10.0, distribution="cauchy", device="cpu")

        def fn(x, t):
            _, P = sorter(x)
            gt = F.one_hot(torch.argsort(t, dim=-1), n).transpose(-2, -1).double()
            return torch.nn.BCELoss()(P, gt)

        return fn

    for lx, network, n in [("sort_bce", "odd_even", 5), ("sort_bce_bitonic", "bitonic", 6)]:
        x = randn(4, n, seed=90 + n)
        t = randn(4, n, seed=95 + n, grad=False)
        cases.append(case(lx, f"std::sorting::{lx}", f"diffsort.DiffSortNet('{network}', {n}) + torch BCELoss "
                          "(diffsort experiments/main.py)", [call({"x": x, "t": t}, sort_bce(network, n))]))

    def groco(z1, z2, k_neg=10, steepness=1.0):
        # re-implementation of ninatu/learning_by_sorting losses/groco.py (2 views, stop_grad) on diffsort
        sorter = diffsort.DiffSortNet("odd_even", k_neg + 1, steepness=steepness, art_lambda=0.25,
                                      distribution="cauchy", device="cpu")
        total = 0
        for a, b in [(z1, z2), (z2, z1)]:
            pos = F.cosine_similarity(a, b.detach(), dim=1)[:, None]
            an, nn_ = F.normalize(a, dim=1), F.normalize(a.detach(), dim=1)
            neg = (an @ nn_.T).masked_fill(torch.eye(len(a)) > 0, -float("inf"))
            neg = torch.flip(torch.topk(neg, k=k_neg, dim=1)[0], dims=[1])
            _, P = sorter(torch.cat((neg, pos), dim=1))
            pp = torch.clip(P[:, :, k_neg:].sum(2, keepdim=True), 0, 1)
            pn = torch.clip(P[:, :, :k_neg].sum(2, keepdim=True), 0, 1)
            tgt = torch.eye(k_neg + 1)[None].repeat(len(a), 1, 1)
            tp = torch.clip(tgt[:, :, k_neg:].sum(2, keepdim=True), 0, 1)
            tn = torch.clip(tgt[:, :, :k_neg].sum(2, keepdim=True), 0, 1)
            total = total + (torch.nn.BCELoss()(pp, tp) + torch.nn.BCELoss()(pn, tn)) / 2
        return total / 2

    z1, z2 = randn(12, 4, seed=101), randn(12, 4, seed=102)
    cases.append(case("groco", "std::sorting::groco", "re-implementation of learning_by_sorting losses/groco.py on diffsort",
                      [call({"z1": z1, "z2": z2}, groco)]))
    write("sorting", cases)


# ---- DRO, AnyLoss metrics, Cauchy-Schwarz divergence (formula re-implementations) --------------------


def dro_metrics_divergence():
    s = randn(8, 4, seed=110, scale=2.0)
    y = labels(8, 4, 111)

    def per_sample(s, y):
        return F.cross_entropy(s, y, reduction="none")

    def kl_dro(s, y, lam=1.0):
        l = per_sample(s, y)
        return lam * (torch.logsumexp(l / lam, 0) - math.log(len(l)))

    def done(s, y, r=1.0):
        # DONE instance weights (Sow et al., ICLR 2024): softmax(l / r), detached
        l = per_sample(s, y)
        return (torch.softmax(l / r, 0).detach() * l).sum()

    s80 = ((torch.rand(8, 4, generator=gen(115)) * 2 - 1) * 80).requires_grad_(True)
    write("dro", [case("kl_dro", "std::dro::kl_dro", "KL-DRO closed form over torch per-sample CE",
                       [call({"s": s, "y": y}, kl_dro)]),
                  case("kl_dro_pm80", "std::dro::kl_dro", "KL-DRO closed form over torch per-sample CE",
                       [call({"s": s80, "y": y}, kl_dro)]),
                  case("done_reweighted", "std::dro::done_reweighted", "DONE weights over torch per-sample CE",
                       [call({"s": s, "y": y}, done)])])

    p = (0.3 + 0.4 * torch.rand(12, generator=gen(112))).requires_grad_(True)
    yy = torch.tensor([1.0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0])

    def confusion(p, y, L=73.0):
        # AnyLoss (Han, Moniz, Chawla, KDD 2024; anyloss_extension notebook): the amplified soft confusion matrix
        a = 1 / (1 + torch.exp(-L * (p - 0.5)))
        tp = (y * a).sum()
        n, y1 = len(p), y.sum()
        return a, tp, a.sum() - tp, y1 - tp, n - y1 - a.sum() + tp, y1, n - y1

    def acc(p, y):
        a, tp, fp, fn, tn, y1, y0 = confusion(p, y)
        return 1 - (tp + tn) / len(p)

    def fbeta(p, y, s=1e-5):
        a, tp, fp, fn, tn, y1, y0 = confusion(p, y)
        return 1 - 2 * tp / (y1 + a.sum() + s)

    def gmean(p, y, s=1e-5):
        a, tp, fp, fn, tn, y1, y0 = confusion(p, y)
        return 1 - tp * tn / (y1 * y0 + s)

    def bal(p, y, s=1e-5):
        a, tp, fp, fn, tn, y1, y0 = confusion(p, y)
        return 1 - (y0 * tp + y1 * tn) / (2 * y1 * y0 + s)

    cases = [case(f"anyloss_{k}", f"std::metrics::anyloss_{k}", "re-implementation of the AnyLoss notebook formulas",
                  [call({"p": p, "y": yy}, fn)]) for k, fn in
             [("accuracy", acc), ("fbeta", fbeta), ("gmean", gmean), ("balanced_accuracy", bal)]]
    write("metrics", cases)

    def cs(x, z, sigma=1.0):
        k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * sigma ** 2)).mean()
        return torch.log(k(x, x)) + torch.log(k(z, z)) - 2 * torch.log(k(x, z))

    write("divergence", [case("cauchy_schwarz", "std::divergence::cauchy_schwarz",
                              "Cauchy-Schwarz divergence, Gaussian kernel V-statistics (Principe 2010)",
                              [call({"x": randn(6, 3, seed=113), "z": randn(5, 3, seed=114, scale=1.5)}, cs)])])


# ---- learned temperatures (TempNet) ---------------------------------------------------------------------


def temperature():
    tempnet = original("zhqiu/TempNet", "3559645", "GPT-2/megatron/model/tempnet.py")

    def lm(z, y, tau, rho=8.0):
        # tau_cross_entropy(output [bsz, seq_len, V], (labels, loss_mask), tau [bsz*seq_len, 1], rho): the
        # first of its results (the trained lm_loss; the second is the plain CE).
        return tempnet.tau_cross_entropy(z, (y, None), tau.reshape(-1, 1), rho)[0]

    z = randn(2, 3, 7, seed=201, scale=2.0)
    y = torch.randint(0, 7, (2, 3), generator=gen(202))
    tau = (0.5 + 1.5 * torch.rand(2, 3, generator=gen(203))).requires_grad_(True)
    ref = "TempNet GPT-2/megatron/model/tempnet.py tau_cross_entropy @ 3559645"
    cases = [
        case("tau_cross_entropy", "std::temperature::tau_cross_entropy", ref,
             [call({"z": z, "y": y, "tau": tau}, lm)]),
        case("tau_cross_entropy_rho0", "std::temperature::tau_cross_entropy", ref,
             [call({"z": z, "y": y, "tau": tau}, lambda z, y, tau: lm(z, y, tau, rho=0.0))], hypers={"rho": 0.0}),
    ]

    # iSogCLR_TempNet_Loss on the CPU: its constructor puts its tables and temperature generators on the GPU
    # (`.cuda()` is the identity here), and the generators are replaced by the temperatures given as inputs.
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    losses = original("zhqiu/TempNet", "3559645", "Bimodal_CL/models/losses.py")
    crit = losses.iSogCLR_TempNet_Loss(N=10, gamma=0.8, world_size=1, rho=7.0, feature_dim=3)
    del crit.image_temp_gen, crit.text_temp_gen
    calls = []
    for k, (ids_i, ids_t, epoch) in enumerate([([1, 4, 7, 2, 9], [3, 4, 0, 8, 6], 0),
                                                ([7, 1, 5, 9, 0], [6, 2, 3, 4, 8], 1)]):
        x = F.normalize(torch.randn(5, 3, generator=gen(210 + k)), dim=1).requires_grad_(True)
        t = F.normalize(torch.randn(5, 3, generator=gen(220 + k)), dim=1).requires_grad_(True)
        tau_i = (0.05 + 0.5 * torch.rand(5, generator=gen(230 + k))).requires_grad_(True)
        tau_t = (0.05 + 0.5 * torch.rand(5, generator=gen(240 + k))).requires_grad_(True)
        image_ids, text_ids = torch.tensor(ids_i), torch.tensor(ids_t)

        def fn(x, t, tau_i, tau_t, image_ids, text_ids, epoch=epoch):
            crit.image_temp_gen = lambda features: tau_i
            crit.text_temp_gen = lambda features: tau_t
            (clip, temp), _, _ = crit(x, t, image_ids, text_ids, epoch, 30)
            tables = {"b_i_new": crit.b_I[image_ids], "s_i_new": crit.s_I[image_ids],
                      "b_t_new": crit.b_T[text_ids], "s_t_new": crit.s_T[text_ids]}
            return clip + temp, {n: v.clone() for n, v in tables.items()}

        rec = call({"x": x, "t": t, "tau_i": tau_i, "tau_t": tau_t, "image_ids": image_ids, "text_ids": text_ids}, fn)
        rec["hypers"] = {"epoch": epoch}
        calls.append(rec)
    cases.append(case("isogclr_tempnet_two_calls", "std::temperature::isogclr_tempnet",
                      "TempNet Bimodal_CL/models/losses.py iSogCLR_TempNet_Loss(gamma=0.8, rho=7) @ 3559645", calls))
    write("temperature", cases)


# ---- ensembles of calibrated losses (EnsLoss) --------------------------------------------------------


def philox_randn(seed, draw, site, n):
    """lossc's `randn[i]` for i in 0..n, written again from its definition (prims::mix, prims::philox, the
    uniform (top 24 bits + 1) / 2^24 and Box-Muller) to check the compiler's draws independently."""
    m32, m64 = (1 << 32) - 1, (1 << 64) - 1

    def splitmix(z):
        z = (z + 0x9E3779B97F4A7C15) & m64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        return z ^ (z >> 31)

    def philox(key, counter):
        k0, k1 = key & m32, key >> 32
        c = [w & m32 for w in counter]
        for r in range(10):
            if r:
                k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
            p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
            c = [((p1 >> 32) ^ c[1] ^ k0) & m32, p1 & m32, ((p0 >> 32) ^ c[3] ^ k1) & m32, p0 & m32]
        return c

    # Random123's known answer for philox4x32_10 (counter and key all ones).
    assert philox(m64, [m32] * 4) == [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    key = splitmix((splitmix((seed & m64) ^ splitmix(draw & m64)) & m64) ^ splitmix(site))
    out = []
    for i in range(n):
        w = philox(key, [i, 0, 0, 0])
        u1, u2 = ((w[0] >> 8) + 1) / 2**24, ((w[1] >> 8) + 1) / 2**24
        out.append(math.sqrt(-2.0 * math.log(u1)) * math.cos(2 * math.pi * u2))
    return torch.tensor(out)


def ensemble():
    ens = original("statmlben/ensLoss", "fd37682", "losses.py")
    orig_randn, orig_to = torch.randn, torch.Tensor.to

    def run(f, y, z, lam):
        # The draw inside `forward` (torch.randn) is the given z; `.to("cuda")` stays on the CPU.
        crit = ens.ensLoss()
        crit.lam = lam
        torch.randn = lambda *shape, **kw: z.clone()
        torch.Tensor.to = lambda self, *a, **kw: self if a and a[0] == "cuda" else orig_to(self, *a, **kw)
        try:
            return crit(f, y.double())
        finally:
            torch.randn, torch.Tensor.to = orig_randn, orig_to

    ref = "ensLoss losses.py ensLoss @ fd37682"
    cases = []
    for k, lam in enumerate([0.0, 0.5, -0.5]):
        f = randn(9, seed=250 + k, scale=1.5)
        y = torch.randint(0, 2, (9,), generator=gen(260 + k))
        z = torch.randn(9, generator=gen(270 + k)) * 1.5
        cases.append(case(f"ensloss_lam{lam}", "std::ensemble::ensloss", f"{ref} (the draw as the input z)",
                          [call({"f": f, "y": y, "z": z}, lambda f, y, z, lam=lam: run(f, y, z, lam))],
                          hypers={"lam": lam}))
    # The stdlib loss drawing its own z with `randn[i]` (its text, with z a draw instead of an input): the
    # original run on the same normals, computed here from the generator's definition.
    text = open(os.path.join(os.path.dirname(__file__), "..", "stdlib", "ensemble.lx")).read()
    head = "loss ensloss(f: f32[N], y: idx[N] < 2, z: f32[N] nograd, lam: f32 = 0.0) {"
    assert head in text
    body = text[text.index(head) + len(head):]
    source = ("loss ensloss_drawn(f: f32[N], y: idx[N] < 2, lam: f32 = 0.0, seed: idx = 0, draw: idx = 0)"
              " -> (z: f32[N]) {\n    out z[i] = randn[i]" + body[:body.index("\n}\n") + 3])
    for k, (seed, draw, lam) in enumerate([(0, 0, 0.0), (7, 3, 0.5), (123456789, 41, -0.5)]):
        f = randn(11, seed=280 + k, scale=1.5)
        y = torch.randint(0, 2, (11,), generator=gen(290 + k))
        z = philox_randn(seed, draw, 0, 11)
        cases.append(case(f"ensloss_drawn_seed{seed}_draw{draw}", "ensloss_drawn",
                          f"{ref}, its torch.randn replaced by lossc's randn (Philox4x32-10, recomputed in Python)",
                          [call({"f": f, "y": y}, lambda f, y, z=z, lam=lam: (run(f, y, z, lam), {"z": z}))],
                          hypers={"lam": lam, "seed": seed, "draw": draw}, source=source))
    write("ensemble", cases)


# ---- few-shot episodes (FSL-Loss: ProtoNet, proto-triplet) ----------------------------------------------


def few_shot():
    icnn = original("maumruiz/FSL-Loss", "249405f", "algorithms/icnn_loss.py")
    metric = original("maumruiz/FSL-Loss", "249405f", "util/metric.py")
    way, shot, dim, per_class = 4, 2, 3, 2
    supp = randn(way * shot, dim, seed=280)
    q = randn(way * per_class, dim, seed=281)
    y = torch.arange(way).repeat_interleave(per_class)

    def protos(supp):
        # protonet.py compute_prototypes: support.reshape(way, shot, -1).mean(dim=1)
        return supp.reshape(way, shot, -1).mean(dim=1)

    def cross(supp, q, y):
        # protonet.py logits = -euclidean_dist(query_fts, prototypes) / temperature; get_icnn_loss 'cross'
        return F.cross_entropy(-metric.euclidean_dist(q, protos(supp)) / 1.0, y)

    def triplet(supp, q, y):
        return icnn.proto_triplet_loss(q, y, protos(supp), torch.arange(way), way)

    # modified_score(origin, y_orig, target, y_targ, k, ipc): origins and targets as two leaves of the same
    # values where the original passes one tensor (its gradient is then the sum of the two).
    def icnn_case(name, x, yx, t, yt, **kw):
        x = x.detach().clone().requires_grad_(True)
        t = t.detach().clone().requires_grad_(True)
        fn = lambda x, yx, t, yt: -torch.log(icnn.modified_score(x, yx, t, yt, **kw))
        return case(name, "std::few_shot::icnn", f"{ref} algorithms/icnn_loss.py -log modified_score({kw or ''})",
                    [call({"x": x, "yx": yx, "t": t, "yt": yt}, fn)], hypers={k: float(v) for k, v in kw.items()})

    supp_labels = torch.arange(way).repeat_interleave(shot)
    everything = torch.cat((supp, q))
    all_labels = torch.cat((supp_labels, y))
    ref = "FSL-Loss @ 249405f"
    icnn_cases = [
        icnn_case("icnn_support", supp, supp_labels, supp, supp_labels),
        icnn_case("icnn_support_k3", supp, supp_labels, supp, supp_labels, k=3),
        icnn_case("icnn_query_protos", q, y, protos(supp), torch.arange(way)),
        icnn_case("icnn_query_support", q, y, supp, supp_labels),
        icnn_case("icnn_full", everything, all_labels, everything, all_labels, ipc=shot + per_class),
    ]
    inputs = {"supp": supp, "q": q, "y": y}
    lx_inputs = lambda rec: {**rec, "inputs": {**rec["inputs"], "supp": enc(supp.detach().reshape(way, shot, dim))},
                             "grads": {**rec["grads"], "supp": {**rec["grads"]["supp"], "shape": [way, shot, dim]}}}
    write("few_shot", [
        case("proto_cross_entropy", "std::few_shot::proto_cross_entropy",
             f"{ref} models/protonet.py logits, F.cross_entropy", [lx_inputs(call(inputs, cross))]),
        case("proto_triplet", "std::few_shot::proto_triplet", f"{ref} algorithms/icnn_loss.py proto_triplet_loss",
             [lx_inputs(call(inputs, triplet))]),
    ] + icnn_cases)


# ---- face-recognition margin heads (UNPG) ------------------------------------------------------------


def face():
    head = original("Jung-Jun-Uk/UNPG", "a6f9c17", "recognition/models/head.py")
    ns = {"torch": torch, "nn": torch.nn, "F": F, "ArcFace": head.ArcFace, "CosFace": head.CosFace, "UNPG": head.UNPG}
    box, pairs, head_and_loss = original_defs("Jung-Jun-Uk/UNPG", "a6f9c17", "recognition/models/build.py",
                                              ["box_and_whisker_algorithm", "convert_label_to_similarity",
                                               "HeadAndLoss"], ns)
    ref = "UNPG recognition/models/build.py HeadAndLoss.forward (head.zoo.yaml: s 64, m 0.5, wisk 1.5) @ a6f9c17"
    cases = []
    for k, (n, d, c, head_name) in enumerate([(8, 5, 4, "arcface"), (9, 4, 3, "cosface"), (12, 6, 5, "arcface")]):
        x = randn(n, d, seed=300 + k)
        w = randn(c, d, seed=310 + k)
        y = labels(n, c, 320 + k)

        def fn(x, w, y, head_name=head_name):
            # HeadAndLoss without its yaml file: the configuration it would read, set as __init__ sets it
            # (one device: the original stacks the kept similarities once per GPU).
            crit = head_and_loss.__new__(head_and_loss)
            torch.nn.Module.__init__(crit)
            crit.criterion, crit.head_name, crit.aux_name = torch.nn.CrossEntropyLoss(), head_name, "unpg"
            cls = head.ArcFace if head_name == "arcface" else head.CosFace
            crit.head = cls(in_feature=x.shape[1], out_feature=w.shape[0], s=64.0, m=0.5)
            del crit.head.weight  # the case's weights, a leaf of their own
            crit.head.weight = w
            crit.aux, crit.wisk, crit.num_gpu = head.UNPG(s=64.0, wisk=1.5), 1.5, 1
            return crit(x, y)

        cases.append(case(f"unpg_{head_name}_{n}", "std::face::unpg", ref, [call({"x": x, "w": w, "y": y}, fn)],
                          hypers={"head": 0 if head_name == "arcface" else 1}))
    write("face", cases)


# ---- self-distillation from past outputs (SAF) --------------------------------------------------------


def original_statements(repo, commit, path, function, keep):
    """The statements of `function` in the file `path` (as `original`) for which `keep(source)` holds, in
    source order, compiled as one block: for a loss written inline in a training loop."""
    import ast
    text = subprocess.run(["git", "-C", clone(repo), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    fn = next(d for d in ast.walk(ast.parse(text)) if isinstance(d, ast.FunctionDef) and d.name == function)
    body = [n for n in ast.walk(fn) if isinstance(n, (ast.Assign, ast.AugAssign, ast.If))
            and keep(ast.get_source_segment(text, n))]
    body.sort(key=lambda n: n.lineno)
    return compile(ast.Module(body=body, type_ignores=[]), f"{repo}/{path}:{function}", "exec")


def saf():
    ce = original("AngusDujw/SAF", "6e85600", "timm/loss/cross_entropy.py")
    # train_one_epoch's `#SAF` lines: record the outputs in the ring buffer, the label-smoothed CE, the KL
    # term against the outputs of minus_epoch epochs ago.
    lines = original_statements(
        "AngusDujw/SAF", "6e85600", "SAF_train.py", "train_one_epoch",
        lambda src: src.startswith("train_logits[indices") or src.startswith("loss = loss_fn(output, target)")
        or src.startswith("if epoch > args.kl_start_epoch"))
    ref = "SAF SAF_train.py train_one_epoch #SAF lines, timm/loss/cross_entropy.py rein_LabelSmoothingCrossEntropy @ 6e85600"
    cases = []
    # (minus_epoch E, reinforce, temperature, kl_start_epoch, kl_end_epoch): run.sh's E = 2, λ = 0.3; E = 0
    # (the slot read is the one just written); the argparse defaults.
    for k, (E, lam, T, kl_start, kl_end) in enumerate([(2, 0.3, 5.0, 2, 6), (0, 0.5, 2.0, 0, 300), (3, 0.16, 5.0, 5, 300)]):
        args = type("Args", (), {"minus_epoch": E, "reinforce": lam, "temperature": T,
                                 "kl_start_epoch": kl_start, "kl_end_epoch": kl_end})()
        # The buffer is float64 here (float32 in the original): lossc's host state store keeps f64.
        train_logits = np.zeros((8, E + 1, 5), dtype=np.float64)
        loss_fn = ce.rein_LabelSmoothingCrossEntropy(smoothing=0.1)
        calls = []
        for epoch in range(8):
            ids = torch.randperm(8, generator=gen(400 + 10 * k + epoch))[:4]
            s = randn(4, 5, seed=500 + 10 * k + epoch, scale=2.0)
            y = labels(4, 5, 600 + 10 * k + epoch)

            def fn(s, y, ids, epoch=epoch):
                ns = {"train_logits": train_logits, "indices": ids.numpy(), "epoch": epoch, "args": args,
                      "output": s, "target": y, "loss_fn": loss_fn, "F": F, "torch": torch}
                exec(lines, ns)
                return ns["loss"], {"bank_new": torch.tensor(train_logits[ids.numpy()])}

            rec = call({"s": s, "y": y, "ids": ids}, fn)
            rec["hypers"] = {"epoch": epoch}
            calls.append(rec)
        cases.append(case(f"saf_E{E}", "std::distill::saf", ref, calls,
                          hypers={"E": E, "lam": lam, "T": T, "kl_start": kl_start, "kl_end": kl_end}))
    write("saf", cases)


# ---- class-incremental segmentation (BARM) -----------------------------------------------------------


def segmentation():
    loss = original("ANDYZAQ/BARM", "0a59203", "utils/loss.py")
    ns = {"torch": torch, "nn": torch.nn, "F": F, "time": __import__("time")}
    head_cls, trainer_cls = original_defs("ANDYZAQ/BARM", "0a59203", "network/_deeplab.py", ["DeepLabHeadBgA"], ns) + \
        original_defs("ANDYZAQ/BARM", "0a59203", "trainer/trainer.py", ["Trainer"], ns)
    ref = ("BARM trainer/trainer.py Trainer.train_episode (step 1, pseudo labels, bce_loss), utils/loss.py "
           "BCEWithLogitsLossWithIgnoreIndex, network/_deeplab.py DeepLabHeadBgA.forward @ 0a59203")

    def head(heads, fea_pre):
        # DeepLabHeadBgA in training mode whose convolutions are replaced by the case's tensors: `head_pre`
        # gives the ear feature fea_pre, `head[k]` the k-th head's logits (ASPP: the identity).
        m = head_cls.__new__(head_cls)
        torch.nn.Module.__init__(m)
        m.aspp = lambda x: x
        m.head_pre = lambda x: fea_pre
        m.head = [lambda x, t=t: t for t in heads]
        m.ear = [lambda x: torch.zeros_like(fea_pre) for _ in heads[1:]]
        return m

    class Stub:
        """What train_episode calls besides the loss: optimizer, scaler, scheduler, meters (no-ops)."""
        def __getattr__(self, name):
            return lambda *a, **k: self

    cases = []
    for k, (b, a, d, fc, h, w, up) in enumerate([(2, 3, 2, 2, 3, 4, 2), (1, 4, 3, 3, 4, 4, 2)]):
        p0 = randn(b, a, h, w, seed=700 + k, scale=2.0)
        p1 = randn(b, d, h, w, seed=710 + k, scale=2.0)
        q0 = randn(b, a, h, w, seed=720 + k, scale=3.0, grad=False)
        f0 = randn(b, fc, h, w, seed=730 + k)
        g0 = randn(b, fc, h, w, seed=740 + k, grad=False)
        big = (b, h * up, w * up)
        y = torch.randint(0, a + d - 1, big, generator=gen(750 + k))
        y = torch.where(torch.rand(big, generator=gen(760 + k)) < 0.4, 0, y)  # background, for pseudo labels
        y = torch.where(torch.rand(big, generator=gen(770 + k)) < 0.1, 255, y)  # ignored pixels

        def fn(p0, p1, q0, f0, g0, y):
            cur, prev = head([p0, p1], f0), head([q0], g0)
            images = torch.zeros(b, 1, h, w)  # the backbone's output: only its spatial size is read
            t = trainer_cls.__new__(trainer_cls)
            t.model = type("M", (), {"module": staticmethod(lambda x: cur.forward({"out": x}))})()
            t.model_prev = type("M", (), {"module": staticmethod(lambda x: prev.forward({"out": x}))})()
            t.optimizer = t.scheduler = t.aux_loss_1 = t.aux_loss_2 = t.aux_loss_3 = t.aux_loss_4 = Stub()
            t.avg_loss = t.avg_time = t.avg_loss_std = Stub()
            t.amp, t.pseudo, t.curr_step, t.loss_type, t.pseudo_thresh = False, True, 1, "bce_loss", 0.7
            t.num_classes = [a - 1, d - 1]
            t.criterion = loss.BCEWithLogitsLossWithIgnoreIndex(ignore_index=255, reduction="mean")
            t.mse_loss, t.bce_loss = torch.nn.MSELoss(reduction="mean"), torch.nn.BCEWithLogitsLoss(reduction="none")
            _, total = trainer_cls.train_episode(t, images, y, Stub(), 0)
            return total

        cases.append(case(f"barm_{k}", "std::segmentation::barm", ref,
                          [call({"p0": p0, "p1": p1, "q0": q0, "f0": f0, "g0": g0, "y": y}, fn)]))
    write("segmentation", cases)


# ---- pair-adaptive temperatures (AMCL) ---------------------------------------------------------------


def amcl():
    losses = original("LeiWangR/cl", "755799d", "amcl/losses.py")
    ref = "AMCL amcl/losses.py {} @ 755799d (float64: Tensor.float is the identity while it runs)"

    def with_phi(crit, w1, b1, w2, b2):
        # The temperature MLP's weights are the case's inputs (nn.Linear keeps weight [out, in]).
        for lin, (w, b) in zip([crit.temperature.phi[0], crit.temperature.phi[2]], [(w1, b1), (w2, b2)]):
            del lin.weight, lin.bias
            lin.weight, lin.bias = w, b
        return crit

    def in_f64(fn):
        # The original casts to float32 (`.float()`) throughout; the fixtures keep float64.
        def run(**inputs):
            saved = torch.Tensor.float
            torch.Tensor.float = lambda self, *a, **k: self
            try:
                return fn(**inputs)
            finally:
                torch.Tensor.float = saved
        return run

    cases = []
    for k, (b, h, d, topk) in enumerate([(4, 2, 3, 3), (3, 1, 4, 100), (5, 2, 3, 5)]):
        z1, z2 = randn(b, h, d, seed=800 + k), randn(b, h, d, seed=810 + k)
        w1, b1 = randn(d, d, seed=820 + k, scale=0.5), randn(d, seed=830 + k, scale=0.1)
        w2, b2 = randn(d, d, seed=840 + k, scale=0.5), randn(d, seed=850 + k, scale=0.1)

        def fn(z1, z2, w1, b1, w2, b2, h=h, d=d, topk=topk):
            crit = with_phi(losses.AMCLNTXentLoss(dim=d, num_heads=h, topk=topk), w1, b1, w2, b2)
            return crit(z1, z2)

        cases.append(case(f"amcl_nt_xent_{k}", "std::contrastive::amcl_nt_xent", ref.format("AMCLNTXentLoss"),
                          [call({"z1": z1, "z2": z2, "w1": w1, "b1": b1, "w2": w2, "b2": b2}, in_f64(fn))],
                          hypers={"topk": topk}))
    for k, (b, h, d) in enumerate([(4, 2, 3), (3, 3, 5)]):
        # z1 and z2 enter detached (the other branch's projections): no gradient.
        p1, z2, p2, z1 = (randn(b, h, d, seed=860 + 10 * k + j, grad=j % 2 == 0) for j in range(4))
        w1, b1 = randn(d, d, seed=900 + k, scale=0.5), randn(d, seed=910 + k, scale=0.1)
        w2, b2 = randn(d, d, seed=920 + k, scale=0.5), randn(d, seed=930 + k, scale=0.1)

        def fn(p1, z2, p2, z1, w1, b1, w2, b2, h=h, d=d):
            crit = with_phi(losses.AMCLSimSiamLoss(dim=d, num_heads=h), w1, b1, w2, b2)
            return crit(p1, z2, p2, z1)

        inputs = {"p1": p1, "z2": z2, "p2": p2, "z1": z1, "w1": w1, "b1": b1, "w2": w2, "b2": b2}
        cases.append(case(f"amcl_simsiam_{k}", "std::contrastive::amcl_simsiam", ref.format("AMCLSimSiamLoss"),
                          [call(inputs, in_f64(fn))]))
    write("amcl", cases)


# ---- topology -----------------------------------------------------------------------------------------


def topology():
    """Betti matching: BettiMatchingLoss.forward of loss_functions.py at 3e7eca2 with the classes of
    BettiMatching.py it uses, both taken with `original_defs` (their modules import panel, gudhi, monai and
    matplotlib at the top; the loss needs none of them: monai's DiceLoss only fills a dict entry the loss
    does not return, and is a stub here). float64 throughout (the default dtype), so ValueMap is float64."""
    import copy
    import heapq
    repo, commit = "nstucki/Betti-matching", "3e7eca2"
    ns = {"np": np, "torch": torch, "copy": copy, "heapq": heapq}
    if not hasattr(np, "infty"):
        np.infty = np.inf  # removed in NumPy 2.0; the original spells it so
    original_defs(repo, commit, "BettiMatching.py",
                  ["UnionFind", "BoundaryMatrix", "CubicalPersistence", "ImagePersistence", "InducedMatching",
                   "BettiMatching"], ns)

    class DiceLoss:  # monai's, whose value goes into `dic` only
        def __init__(self, **kw):
            pass

        def __call__(self, input, target):
            return torch.zeros(())

    ns["DiceLoss"] = DiceLoss
    ns["_Loss"] = torch.nn.Module
    compute, loss_class = original_defs(repo, commit, "loss_functions.py",
                                        ["compute_BettiMatchingLoss", "BettiMatchingLoss"], ns)
    ref = "Betti-matching loss_functions.py BettiMatchingLoss(filtration={!r}) @ 3e7eca2"
    cases = []
    shapes = [(2, 6, 7), (3, 5, 5), (1, 8, 6)]
    for k, (b, h, w) in enumerate(shapes):
        # Ground truths of blobs and holes (binary: every tie), logits moderate and, in case 1, on a grid of
        # halves so that the prediction has ties too.
        g = (torch.rand(b, h, w, generator=gen(1100 + k)) > 0.55).double()
        logits = torch.randn(b, h, w, generator=gen(1110 + k)) * 1.5
        if k == 1:
            logits = torch.round(logits * 2) / 2
        logits.requires_grad_(True)
        for filtration, loss in [("superlevel", "betti_matching_loss"), ("sublevel", "betti_matching_sublevel"),
                                 ("bothlevel", "betti_matching_both")]:
            def fn(logits, g, filtration=filtration):
                total, _ = loss_class(filtration=filtration)(logits, g)
                return total
            cases.append(case(f"{loss}_{k}", f"std::topology::{loss}", ref.format(filtration),
                              [call({"logits": logits, "g": g}, fn)]))
    write("topology", cases)


FAMILIES = {
    "dro_metrics_divergence": dro_metrics_divergence,
    "classification": classification,
    "robust": robust,
    "focal_hinge_distill": focal_hinge_distill,
    "ranking": ranking,
    "metric_learning": metric_learning,
    "contrastive": contrastive,
    "sorting": sorting,
    "temperature": temperature,
    "ensemble": ensemble,
    "few_shot": few_shot,
    "face": face,
    "saf": saf,
    "amcl": amcl,
    "segmentation": segmentation,
    "topology": topology,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or FAMILIES:
        FAMILIES[name]()
