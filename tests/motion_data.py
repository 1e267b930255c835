"""A toy video task shared by the attack tests (a plain module: pytest puts tests/ on sys.path)."""

import torch


def make_motion(n: int, seed: int, frames: int = 4, size: int = 16):
    """A 4-class toy task where time matters: a faint 5x5 square moves left / right / up / down (3 px per frame) on a
    noisy grey background. Learnable in a few dozen steps, and not robust: small perturbations flip it."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    x = 0.45 + 0.1 * (2 * torch.rand(n, frames, 3, size, size, generator=g) - 1)
    side, speed = 5, 3
    span = speed * (frames - 1)
    for i in range(n):
        c = int(labels[i])
        a = int(torch.randint(0, size - side - span + 1, (1,), generator=g))
        b = int(torch.randint(0, size - side + 1, (1,), generator=g))
        for f in range(frames):
            pos = a + speed * f if c in (1, 3) else a + span - speed * f
            row, col = (b, pos) if c < 2 else (pos, b)
            x[i, f, :, row : row + side, col : col + side] += 0.15
    return x.clamp(0, 1), labels
