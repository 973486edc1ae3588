"""lossc.torch: autograd, gradcheck, torch.compile, training and state against torch's own losses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lossc
import lossc.torch as lt
from conftest import ROOT

CE = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }"


def test_cross_entropy_equals_torch():
    torch.manual_seed(0)
    crit = lt.Loss(CE)
    s = torch.randn(16, 7, requires_grad=True)
    y = torch.randint(0, 7, (16,))
    loss = crit(s, y)
    loss.backward()
    ref_s = s.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_s, y)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(s.grad, ref_s.grad, rtol=1e-5, atol=1e-7)
    # A gradient scaled by what flows in (2 * loss).
    s.grad = None
    (2 * crit(s=s, y=y)).backward()
    torch.testing.assert_close(s.grad, 2 * ref_s.grad, rtol=1e-5, atol=1e-7)


GRADCHECK = [
    ("std::classification::cross_entropy", {"s": (5, 4)}, {"y": 4}),
    ("std::robust::ldr_kl", {"s": (5, 4)}, {"y": 4}),
    ("std::classification::gce", {"s": (4, 3)}, {"y": 3}),
    ("std::dro::kl_dro", {"s": (6, 3)}, {"y": 3}),
    ("std::focal::focal_multiclass", {"s": (5, 3)}, {"y": 3}),
    ("std::contrastive::nt_xent", {"a": (4, 3), "b": (4, 3)}, {}),
    ("std::metric_learning::triplet_margin", {"a": (3, 4), "p": (3, 4), "n": (3, 4)}, {}),
    ("std::classification::cross_entropy_per_sample", {"s": (5, 4)}, {"y": 4}),
]


@pytest.mark.parametrize("path,floats,labels", GRADCHECK, ids=[g[0] for g in GRADCHECK])
def test_gradcheck_float64_on_the_interpreter(path, floats, labels):
    crit = lt.Loss(path, backend="interp")
    gen = torch.Generator().manual_seed(3)
    args = {n: torch.randn(*s, dtype=torch.float64, generator=gen, requires_grad=True) for n, s in floats.items()}
    rows = next(iter(floats.values()))[0]
    ys = {n: torch.randint(0, k, (rows,), generator=gen) for n, k in labels.items()}
    names = list(args)

    def f(*xs):
        return crit(**dict(zip(names, xs)), **ys)

    assert torch.autograd.gradcheck(f, tuple(args.values()), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_mlp_training_matches_torch_loss():
    torch.manual_seed(1)
    x = torch.randn(64, 10)
    y = torch.randint(0, 4, (64,))

    def train(criterion):
        torch.manual_seed(2)
        model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return model, losses

    ours, our_losses = train(lt.Loss(CE))
    theirs, their_losses = train(F.cross_entropy)
    assert our_losses[-1] < our_losses[0]
    np.testing.assert_allclose(our_losses, their_losses, rtol=1e-5)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torch_compile_has_no_graph_break():
    torch.manual_seed(4)
    crit = lt.Loss("std::robust::ldr_kl")
    model = torch.nn.Linear(8, 5)

    def step(x, y):
        return crit(model(x), y)

    x, y = torch.randn(12, 8), torch.randint(0, 5, (12,))
    explained = torch._dynamo.explain(step)(x, y)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(step)
    eager = step(x, y)
    traced = compiled(x, y)
    torch.testing.assert_close(traced, eager)
    traced.backward()
    grad = model.weight.grad.clone()
    model.weight.grad = None
    eager.backward()
    torch.testing.assert_close(grad, model.weight.grad)


def test_per_sample_loss_takes_its_cotangent():
    crit = lt.Loss("std::classification::cross_entropy_per_sample")
    s = torch.randn(6, 3, requires_grad=True)
    y = torch.randint(0, 3, (6,))
    values = crit(s, y)
    assert values.shape == (6,)
    w = torch.arange(6.0)
    (values * w).sum().backward()
    ref_s = s.detach().clone().requires_grad_()
    (F.cross_entropy(ref_s, y, reduction="none") * w).sum().backward()
    torch.testing.assert_close(values, F.cross_entropy(s.detach(), y, reduction="none"))
    torch.testing.assert_close(s.grad, ref_s.grad, rtol=1e-5, atol=1e-6)


def test_sogclr_state_dict_round_trip(tmp_path):
    torch.manual_seed(5)
    h1, h2 = torch.randn(8, 4), torch.randn(8, 4)
    ids = torch.arange(8)
    a = lt.Loss("std::contrastive::sogclr")
    for _ in range(2):
        loss, outputs = a(h1, h2, ids)
    assert set(outputs) == {"u_new"}
    saved = a.state_dict()
    assert "_extra_state" in saved and tuple(saved["_extra_state"]["u"].shape) == (8, 2)  # (id, value) rows
    b = lt.Loss("std::contrastive::sogclr")
    b.load_state_dict(saved)
    fresh = lt.Loss("std::contrastive::sogclr")
    la, _ = a(h1, h2, ids)
    lb, _ = b(h1, h2, ids)
    lf, _ = fresh(h1, h2, ids)
    assert la.item() == lb.item()
    assert la.item() != lf.item()
    # Through torch.save / torch.load (weights_only) too.
    path = tmp_path / "sogclr_state.pt"
    torch.save(a.state_dict(), path)
    c = lt.Loss("std::contrastive::sogclr")
    c.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(c.get_extra_state()["u"], a.get_extra_state()["u"])


def test_saf_ring_buffer_state_trains_and_round_trips():
    # SAF keeps a row of (E + 1) x C past logits per sample id (issue 24): state_dict holds (id, values...)
    # rows, and each epoch's loss equals label-smoothed CE plus the KL term against the logits of E epochs
    # ago, kept here by hand.
    torch.manual_seed(3)
    n, c, E, T, lam = 6, 4, 1, 2.0, 0.5
    crit = lt.Loss("std::distill::saf", E=E, T=T, lam=lam, kl_start=0)
    bank = {}
    for epoch in range(4):
        ids = torch.randperm(8)[:n]
        s = torch.randn(n, c, requires_grad=True)
        y = torch.randint(0, c, (n,))
        loss, outputs = crit(s, y, ids, epoch=epoch)
        assert tuple(outputs["bank_new"].shape) == (n, E + 1, c)
        ref_s = s.detach().clone().requires_grad_()
        for i, k in enumerate(ids.tolist()):
            bank.setdefault(k, torch.zeros(E + 1, c))[epoch % (E + 1)] = ref_s.detach()[i]
        past = torch.stack([bank[k][(epoch - E) % (E + 1)] for k in ids.tolist()])
        ref = F.cross_entropy(ref_s, y, label_smoothing=0.0) * 0.9 - 0.1 * F.log_softmax(ref_s, 1).mean(1).mean()
        if epoch > 0:
            ref = ref + lam * T * T * F.kl_div(F.log_softmax(ref_s / T, 1), F.softmax(past / T, 1), reduction="batchmean")
        loss.backward()
        ref.backward()
        torch.testing.assert_close(loss, ref.to(loss.dtype), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s.grad, ref_s.grad, rtol=1e-4, atol=1e-6)
    saved = crit.state_dict()["_extra_state"]["bank"]
    assert tuple(saved.shape) == (len(bank), 1 + (E + 1) * c)
    for row in saved:
        torch.testing.assert_close(row[1:].reshape(E + 1, c), bank[int(row[0])].to(row.dtype), rtol=1e-6, atol=1e-6)
    again = lt.Loss("std::distill::saf", E=E, T=T, lam=lam, kl_start=0)
    again.load_state_dict(crit.state_dict())
    s, y, ids = torch.randn(n, c), torch.randint(0, c, (n,)), torch.arange(n)
    assert again(s, y, ids, epoch=4)[0].item() == crit(s, y, ids, epoch=4)[0].item()


def test_bad_calls_raise_lossc_errors():
    crit = lt.Loss(CE)
    s = torch.zeros(2, 3)
    with pytest.raises(lossc.LabelError, match="label out of range"):
        crit(s, torch.tensor([0, 3]))
    with pytest.raises(lossc.InputError, match="missing input `y`"):
        crit(s)
    with pytest.raises(lossc.ShapeError, match="dimension N mismatch"):
        crit(s, torch.tensor([0, 1, 2]))
    with pytest.raises(lossc.HyperparameterError, match="unknown hyperparameter `tau`"):
        crit(s, torch.tensor([0, 1]), tau=1.0)
    with pytest.raises(lossc.HyperparameterError, match="unknown hyperparameter `tau`"):
        lt.Loss(CE, tau=1.0)
    with pytest.raises(lossc.CompileError):
        lt.Loss("loss f(x: f32[N]) { mean[i] x[j] }")


def test_dtypes_are_converted_and_gradients_keep_the_input_dtype():
    crit = lt.Loss(CE)
    s64 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0], dtype=torch.int32)
    crit(s64, y).backward()
    assert s64.grad.dtype == torch.float64
    sbf = torch.randn(4, 3).to(torch.bfloat16).requires_grad_()
    crit(sbf, y.to(torch.uint8)).backward()
    assert sbf.grad.dtype == torch.bfloat16


def test_training_example_brings_the_loss_down():
    import re
    import subprocess
    import sys

    from conftest import ROOT

    run = subprocess.run([sys.executable, str(ROOT / "examples/python/train.py")], capture_output=True, text=True, check=True)
    losses = [float(m) for m in re.findall(r"mean loss (\S+),", run.stdout)]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0], run.stdout


def test_betti_matching_calls_its_extern_and_matches_the_original():
    # Betti matching (issue 24): the persistence barcodes are matched by an extern operation in Rust before
    # the kernel; the loss and its gradient equal BettiMatchingLoss's at 3e7eca2 (tests/fixtures, written by
    # tools/make_fixtures.py topology), and the signature has only the loss's own inputs.
    import json
    import pathlib

    fixtures = json.loads((pathlib.Path(__file__).parents[2] / "tests/fixtures/topology.json").read_text())
    crit = lt.Loss("std::topology::betti_matching_both")
    assert [i.name for i in crit.loss.inputs] == ["logits", "g"]
    case = next(c for c in fixtures["cases"] if c["loss"] == "std::topology::betti_matching_both")
    call = case["calls"][0]

    def tensor(t):
        return torch.tensor(t["data"], dtype=torch.float32).reshape(t["shape"])

    logits = tensor(call["inputs"]["logits"]).requires_grad_()
    loss = crit(logits, tensor(call["inputs"]["g"]))
    loss.backward()
    assert abs(loss.item() - call["loss"]) < 1e-4 * abs(call["loss"])
    torch.testing.assert_close(logits.grad, tensor(call["grads"]["logits"]), rtol=1e-4, atol=1e-5)


def test_streamed_nt_xent_equals_torch():
    """`stream=True` recomputes the [B, B] similarities a row at a time; the loss and gradients are torch's."""
    source = (ROOT / "benches/nt_xent.lx").read_text()
    streamed = lt.Loss(source, stream=True)
    whole = lt.Loss(source)
    g = torch.Generator().manual_seed(4)
    a0 = torch.randn(96, 16, generator=g)
    b0 = torch.randn(96, 16, generator=g)

    def reference(a, b, tau=0.1):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        z = torch.cat([a, b]) @ torch.cat([a, b]).T / tau
        z.fill_diagonal_(float("-inf"))
        n = a.shape[0]
        pos = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return (torch.logsumexp(z, 1) - z[torch.arange(2 * n), pos]).mean()

    results = []
    for fn in (streamed, whole, reference):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        results.append((loss.item(), a.grad, b.grad))
    for loss, ga, gb in results[:2]:
        assert loss == pytest.approx(results[2][0], rel=1e-4)
        torch.testing.assert_close(ga, results[2][1], rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(gb, results[2][2], rtol=1e-3, atol=1e-5)
