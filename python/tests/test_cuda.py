"""lossc.torch on CUDA tensors (backend="cuda"). Without a GPU only the refusal is checked; on a GPU
(`tools/gpu_check.sh`) the device path is compared with the CPU JIT and with torch's own losses."""

import pytest
import torch
import torch.nn.functional as F

import lossc
import lossc.torch as lt

CE = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }"
CE_BF16 = "loss ce(s: bf16[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }"

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_check.sh)")


def test_cpu_module_refuses_cuda_tensors_and_cuda_needs_a_device():
    crit = lt.Loss(CE)
    if torch.cuda.is_available():
        with pytest.raises(lossc.DeviceError, match='backend="cuda"'):
            crit(torch.zeros(2, 3, device="cuda"), torch.zeros(2, dtype=torch.int64, device="cuda"))
    else:
        with pytest.raises(lossc.DeviceError, match="E203"):
            lt.Loss(CE, backend="cuda")


@gpu
def test_cuda_cross_entropy_equals_cpu_and_torch():
    torch.manual_seed(0)
    crit = lt.Loss(CE, backend="cuda")
    s = torch.randn(512, 1000, device="cuda", requires_grad=True)
    y = torch.randint(0, 1000, (512,), device="cuda")
    loss = crit(s, y)
    loss.backward()
    assert loss.device.type == "cuda" and s.grad.device.type == "cuda"
    ref_s = s.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_s, y)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.grad, ref_s.grad, rtol=1e-4, atol=1e-7)
    cpu_loss, cpu_grads = lossc.compile(CE).loss()(s=s.detach().cpu().numpy(), y=y.cpu().numpy())
    assert loss.item() == pytest.approx(cpu_loss, rel=1e-5)


@gpu
def test_cuda_bf16_logits_and_label_errors():
    torch.manual_seed(1)
    crit = lt.Loss(CE_BF16, backend="cuda")
    s = torch.randn(256, 4096, device="cuda").to(torch.bfloat16).requires_grad_()
    y = torch.randint(0, 4096, (256,), device="cuda")
    loss = crit(s, y)
    loss.backward()
    assert s.grad.dtype == torch.bfloat16
    ref_s = s.detach().clone().requires_grad_()
    F.cross_entropy(ref_s.float(), y).backward()
    torch.testing.assert_close(loss.float(), F.cross_entropy(s.detach().float(), y), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.grad.float(), ref_s.grad.float(), rtol=2e-2, atol=1e-5)
    with pytest.raises(lossc.LabelError, match="label out of range"):
        crit(s, torch.full((256,), 4096, device="cuda"))


@gpu
def test_cuda_torch_compile_has_no_graph_break():
    crit = lt.Loss("std::robust::ldr_kl", backend="cuda")
    model = torch.nn.Linear(32, 10).cuda()

    def step(x, y):
        return crit(model(x), y)

    x, y = torch.randn(64, 32, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    explained = torch._dynamo.explain(step)(x, y)
    assert explained.graph_break_count == 0
    torch.testing.assert_close(torch.compile(step)(x, y), step(x, y))
