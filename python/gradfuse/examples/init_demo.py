"""Why initialization matters: activation statistics through a deep tanh network.

A 20-layer tanh MLP (width 256, no biases) is fed a batch of standard-normal inputs, and the
standard deviation of each layer's activations is printed for three weight initializations:

* ``normal_(std=0.01)``: each layer multiplies the signal's scale by about 0.01 * sqrt(256) =
  0.16, so activations vanish geometrically (and with them the gradients);
* ``normal_(std=1)``: pre-activations have std ~16, tanh saturates at +-1 and its derivative is
  ~0: the network's units are stuck;
* ``xavier_normal_``: Var(W) = 2 / (fan_in + fan_out) keeps the pre-activation variance near
  the input's, and the std stays of order one through all 20 layers.

Run it with ``python -m gradfuse.examples.init_demo``.
"""

from __future__ import annotations

import numpy as np

import gradfuse as gf

SCHEMES = {
    "normal_(std=0.01)": lambda w, g: gf.nn.init.normal_(w, std=0.01, generator=g),
    "normal_(std=1)": lambda w, g: gf.nn.init.normal_(w, std=1.0, generator=g),
    "xavier_normal_": lambda w, g: gf.nn.init.xavier_normal_(w, generator=g),
}


def activation_stats(scheme: str, depth: int = 20, width: int = 256, batch: int = 512,
                     seed: int = 0):
    """Per-layer (std, fraction saturated |h| > 0.99) of the tanh activations under ``scheme``."""
    g = gf.Generator(seed)
    layers = [gf.nn.Linear(width, width, bias=False) for _ in range(depth)]
    for layer in layers:
        SCHEMES[scheme](layer.weight, g)
    h = gf.randn(batch, width, generator=g)
    stats = []
    with gf.no_grad():
        for layer in layers:
            h = gf.tanh(layer(h))
            a = h.numpy()
            stats.append((float(a.std()), float(np.mean(np.abs(a) > 0.99))))
    return stats


def main() -> None:
    results = {name: activation_stats(name) for name in SCHEMES}
    names = list(results)
    print("activation std per layer of a 20-layer tanh MLP (width 256)")
    print("layer  " + "  ".join(f"{n:>18s}" for n in names))
    for i in range(len(results[names[0]])):
        row = "  ".join(f"{results[n][i][0]:18.3g}" for n in names)
        print(f"{i + 1:5d}  {row}")
    sat = "  ".join(f"{results[n][-1][1]:18.0%}" for n in names)
    print(f"  sat  {sat}    <- share of layer-20 units with |h| > 0.99")


if __name__ == "__main__":
    main()
