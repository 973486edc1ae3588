"""Trains a small classifier with a stdlib loss from lossc (LDR-KL, robust to label noise) in PyTorch.

    pip install ./python torch
    python examples/python/train.py

The loss is an ordinary torch module: its forward and backward run lossc's compiled kernel (loss and
gradient in one call); torch.compile traces it without a graph break.
"""

import torch

import lossc.torch

torch.manual_seed(0)
classes, features, n = 5, 20, 2048
centers = torch.randn(classes, features) * 0.4
y = torch.randint(0, classes, (n,))
x = centers[y] + torch.randn(n, features)
noisy = torch.where(torch.rand(n) < 0.2, torch.randint(0, classes, (n,)), y)  # 20% of labels flipped

model = torch.nn.Sequential(torch.nn.Linear(features, 64), torch.nn.ReLU(), torch.nn.Linear(64, classes))
criterion = lossc.torch.Loss("std::robust::ldr_kl", c=2.0)
print(criterion)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(8):
    total = 0.0
    for batch in torch.randperm(n).split(256):
        opt.zero_grad()
        loss = criterion(model(x[batch]), noisy[batch])
        loss.backward()
        opt.step()
        total += loss.item() * len(batch) / n
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"epoch {epoch}: mean loss {total:.4f}, accuracy on clean labels {accuracy:.3f}")
