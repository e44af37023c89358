"""An MLP on scikit-learn's bundled 8x8 digits, with every technique of gradfuse in the loop.

scaler (gf.data.StandardScaler, fitted on the training split only) -> Linear (an init scheme
by name) -> a normalization layer -> an activation -> Dropout -> ... -> fused cross entropy ->
backward into the optimizer's flat gradient arena -> gradient norm folded into the step ->
one fused optimizer call -> an lr schedule. ``gradfuse demo`` runs it; its options pick the
optimizer, activation, normalization and initialization, so their effect can be compared.
"""

from __future__ import annotations

import time

import numpy as np

import gradfuse as gf

from .digits_softmax import load_digits_split

OPTIMIZERS = {
    "sgd": lambda p, lr: gf.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
    "rmsprop": lambda p, lr: gf.optim.RMSprop(p, lr=lr),
    "adagrad": lambda p, lr: gf.optim.Adagrad(p, lr=lr),
    "adam": lambda p, lr: gf.optim.Adam(p, lr=lr),
    "adamw": lambda p, lr: gf.optim.AdamW(p, lr=lr, weight_decay=1e-2),
    "nadam": lambda p, lr: gf.optim.NAdam(p, lr=lr),
    "lion": lambda p, lr: gf.optim.Lion(p, lr=lr / 3),
}
DEFAULT_LR = {"sgd": 0.05, "rmsprop": 1e-3, "adagrad": 0.05}  # else 1e-3 (Lion takes lr/3)
ACTIVATIONS = {
    "relu": gf.nn.ReLU, "leaky_relu": gf.nn.LeakyReLU, "elu": gf.nn.ELU, "gelu": gf.nn.GELU,
    "silu": gf.nn.SiLU, "tanh": gf.nn.Tanh, "sigmoid": gf.nn.Sigmoid, "softplus": gf.nn.Softplus,
}
NORMS = {
    "batch": gf.nn.BatchNorm1d, "layer": gf.nn.LayerNorm, "rms": gf.nn.RMSNorm, "none": None,
}


def build_model(hidden=(128, 64), activation="relu", norm="batch", init=None, dropout=0.1,
                seed=0):
    """64 -> hidden... -> 10: ``[Linear, norm, activation, Dropout]`` per hidden layer."""
    gf.manual_seed(seed)
    layers, width = [], 64
    for h in hidden:
        layers.append(gf.nn.Linear(width, h, init=init))
        if NORMS[norm] is not None:
            layers.append(NORMS[norm](h))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(gf.nn.Dropout(dropout))
        width = h
    layers.append(gf.nn.Linear(width, 10, init=init))
    return gf.nn.Sequential(*layers)


def train(epochs=20, optimizer="adam", lr=None, activation="relu", norm="batch", init=None,
          batch_size=64, clip=1.0, seed=0, log=print, device="cpu") -> dict:
    """Train on ``device`` ("cpu" or "cuda"); returns {"val_accuracy", "train_loss" (per
    epoch), "seconds"}. The model is moved before the optimizer is built (its flat arena is
    then allocated on that device)."""
    (xtr, ytr), (xva, yva) = load_digits_split(seed)
    scaler = gf.data.StandardScaler()
    xtr, xva = scaler.fit_transform(xtr), scaler.transform(xva)
    model = build_model(activation=activation, norm=norm, init=init, seed=seed).to(device)
    lr = DEFAULT_LR.get(optimizer, 1e-3) if lr is None else lr
    opt = OPTIMIZERS[optimizer](model.parameters(), lr)
    steps_per_epoch = -(-len(xtr) // batch_size)
    sched = gf.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    loss_fn = gf.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    n_params = sum(p.data.size for p in model.parameters())
    log(f"digits: {len(xtr)} train / {len(xva)} validation samples; MLP 64-128-64-10 "
        f"({n_params} parameters), {norm} norm, {activation}, init {init or 'default'}, "
        f"{optimizer} lr {lr:g} with cosine decay, grad-norm clip {clip}")
    xv = gf.from_numpy(xva) if device == "cpu" else gf.tensor(xva, device=device)
    history, acc, t0 = [], 0.0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order, total = rng.permutation(len(xtr)), 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2 and norm == "batch":
                continue  # BatchNorm cannot normalize a batch of one sample
            xb, yb = gf.from_numpy(xtr[idx]), gf.from_numpy(ytr[idx])
            if device != "cpu":
                xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            if clip:
                opt.clip_grad_norm_(clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        with gf.no_grad():
            acc = float((model(xv).argmax(dim=1).numpy() == yva).mean())
        history.append(total / len(xtr))
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            log(f"epoch {epoch:3d}  train loss {history[-1]:.4f}  val accuracy {acc:.3f}  "
                f"lr {sched.get_last_lr()[0]:.2e}")
    seconds = time.perf_counter() - t0
    log(f"done in {seconds:.2f} s: validation accuracy {acc:.3f}")
    return {"val_accuracy": acc, "train_loss": history, "seconds": seconds}


def run(epochs=20, optimizer="adam", lr=None, activation="relu", norm="batch", init=None,
        batch_size=64, seed=0) -> int:
    """The ``gradfuse demo`` command: arguments checked here, with the option's name."""
    for name, v in (("epochs", epochs), ("batch-size", batch_size)):
        if v < 1:
            raise SystemExit(f"--{name}: expected an integer >= 1, got {v}")
    if lr is not None and not lr > 0:
        raise SystemExit(f"--lr: expected a positive learning rate, got {lr}")
    if init is not None and init not in gf.nn.init.names():
        raise SystemExit(f"--init: unknown scheme {init!r}; one of {', '.join(gf.nn.init.names())}")
    train(epochs, optimizer, lr, activation, norm, init, batch_size, seed=seed)
    return 0
