"""Recompute a run's importance-weighted test NLL without vaelab's model or estimator code.

The networks are rebuilt here in plain PyTorch from ``model.safetensors`` and ``model.json``
(Burda's tanh MLP, or the study's conv VAE with a standard normal prior and Bernoulli likelihood),
and log p(x) ~= logsumexp_i [log p(x|z_i) + log N(z_i; 0, I) - log q(z_i|x)] - log k is written out
term by term, with its own noise. A hierarchical run (``model.family = hierarchical``: Burda's
two-layer MLPs, bottom-up or ladder inference) gets the same with every layer's log p(z_i | z_{i+1})
and log q(z_i | .) written out. Only the test images come from vaelab (``vaelab.data``), so that
both see the same binarised test set. The two estimates use different noise, so they agree to
within their Monte Carlo error, which at k = 5000 is far below the standard error over images.

    python benchmarks/independent_nll.py RUN_DIR --k 5000 --limit 500
    vaelab eval RUN_DIR --nll --k 5000 --limit 500 --no-write        # compare
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

LOG_2PI = math.log(2 * math.pi)


def mlp(weights: dict[str, torch.Tensor], prefix: str, h: torch.Tensor, activation) -> torch.Tensor:
    """Linear layers with ``activation`` between them; a layer with running statistics after a Linear
    is its batch normalisation (``model.batch_norm``), applied as at test time before the activation."""
    layers = sorted({int(k.split(".")[-2]) for k in weights if k.startswith(prefix)})
    linears = [i for i in layers if f"{prefix}{i}.running_mean" not in weights]
    for n, index in enumerate(linears):
        h = F.linear(h, weights[f"{prefix}{index}.weight"], weights[f"{prefix}{index}.bias"])
        if f"{prefix}{index + 1}.running_mean" in weights:
            norm = f"{prefix}{index + 1}."
            h = (h - weights[norm + "running_mean"]) / (weights[norm + "running_var"] + 1e-5).sqrt()
            h = h * weights[norm + "weight"] + weights[norm + "bias"]
        if n < len(linears) - 1:
            h = activation(h)
    return h


def log_normal(z: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (z - mu).pow(2) / log_var.exp() - 0.5 * log_var - 0.5 * LOG_2PI).sum(-1)


def hierarchical_log_weights(w, model, x, eps, encode, decode, activation) -> torch.Tensor:
    """log p(x, z_1..L) - log q(z_1..L | x) for the samples made from ``eps`` (n x sum of the layer sizes)."""
    sizes = model["stochastic_layers"]
    noise = eps.split(sizes, dim=-1)
    up = [lambda h, i=i: mlp(w, f"up.{i}.", h, activation).chunk(2, dim=-1) for i in range(len(sizes) - 1)]
    down = [lambda h, i=i: mlp(w, f"down.{i}.", h, activation).chunk(2, dim=-1) for i in range(len(sizes) - 1)]
    log_q = 0.0
    if model["inference"] == "bottom-up":
        mu, log_var = encode(x).chunk(2, dim=-1)
        zs = [mu + (0.5 * log_var).exp() * noise[0]]
        log_q = log_normal(zs[0], mu, log_var)
        for i, layer in enumerate(up):
            mu, log_var = layer(zs[-1])
            zs.append(mu + (0.5 * log_var).exp() * noise[i + 1])
            log_q = log_q + log_normal(zs[-1], mu, log_var)
    else:  # ladder: the bottom-up terms, then top-down with precision-weighted merging
        terms = [encode(x).chunk(2, dim=-1)]
        for layer in up:
            terms.append(layer(terms[-1][0]))
        mu, log_var = terms[-1]
        zs = [mu + (0.5 * log_var).exp() * noise[-1]]
        log_q = log_normal(zs[0], mu, log_var)
        for i in reversed(range(len(sizes) - 1)):
            mu_p, log_var_p = down[i](zs[0])
            mu_u, log_var_u = terms[i]
            precision_p, precision_u = (-log_var_p).exp(), (-log_var_u).exp()
            var = 1 / (precision_p + precision_u)
            mu = (mu_u * precision_u + mu_p * precision_p) * var
            zs.insert(0, mu + var.sqrt() * noise[i])
            log_q = log_q + log_normal(zs[0], mu, var.log())
    log_p = log_normal(zs[-1], torch.zeros(()), torch.zeros(()))
    for i in range(len(sizes) - 1):
        mu_p, log_var_p = down[i](zs[i + 1])
        log_p = log_p + log_normal(zs[i], mu_p, log_var_p)
    logits = decode(zs[0])
    target = x.flatten(1)
    log_px_z = -F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none").sum(-1)
    return log_px_z + log_p - log_q


def conv_encoder(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = F.relu(F.conv2d(x, w["encoder.net.0.weight"], w["encoder.net.0.bias"], stride=2, padding=1))
    h = F.relu(F.conv2d(h, w["encoder.net.2.weight"], w["encoder.net.2.bias"], stride=2, padding=1))
    h = F.relu(F.linear(h.flatten(1), w["encoder.net.5.weight"], w["encoder.net.5.bias"]))
    return F.linear(h, w["encoder.net.7.weight"], w["encoder.net.7.bias"])


def conv_decoder(w: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    h = F.relu(F.linear(z, w["decoder.net.0.weight"], w["decoder.net.0.bias"])).view(-1, 64, 7, 7)
    h = F.relu(F.conv_transpose2d(h, w["decoder.net.3.weight"], w["decoder.net.3.bias"], 2, 1, 1))
    h = F.relu(F.conv_transpose2d(h, w["decoder.net.5.weight"], w["decoder.net.5.bias"], 2, 1, 1))
    return F.conv_transpose2d(h, w["decoder.net.7.weight"], w["decoder.net.7.bias"], 1, 1).flatten(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()

    meta = json.loads((args.run_dir / "model.json").read_text())
    model, data = meta["config"]["model"], meta["config"]["data"]
    if model["prior"] != "standard" or model["likelihood"] != "bernoulli":
        raise SystemExit("this check covers the standard normal prior with a Bernoulli likelihood")
    w = {name: t.float() for name, t in load_file(args.run_dir / "model.safetensors").items()}  # float16 too
    activation = {"tanh": torch.tanh, "relu": F.relu}.get(model["activation"])
    if model["arch"] == "mlp":
        encode = lambda x: mlp(w, "encoder.net.1.", x.flatten(1), activation)  # noqa: E731
        decode = lambda z: mlp(w, "decoder.net.0.", z, activation)  # noqa: E731
    elif model["arch"] == "conv":
        encode = lambda x: conv_encoder(w, x)  # noqa: E731
        decode = lambda z: conv_decoder(w, z)  # noqa: E731
    else:
        raise SystemExit(f"no plain rebuild of the {model['arch']!r} architecture here")

    from vaelab.data import Batches, load_dataset  # the test images only

    dataset = load_dataset(data["name"])
    images = dataset.x_test[: args.limit]
    x_all = torch.cat(
        list(Batches(images, batch_size=100, binarize=data["binarize"], training=False).epoch(shuffle=False))
    )

    torch.manual_seed(args.seed)
    values = []
    with torch.no_grad():
        for x in x_all:
            x = x.unsqueeze(0)
            if model.get("family", "vae") == "hierarchical":
                size = sum(model["stochastic_layers"])
                log_w = [
                    hierarchical_log_weights(w, model, x, torch.randn(min(1000, args.k - s), size), encode, decode,
                                             activation).double()
                    for s in range(0, args.k, 1000)
                ]  # fmt: skip
                values.append(torch.logsumexp(torch.cat(log_w), 0).item() - math.log(args.k))
                continue
            mu, log_var = encode(x).chunk(2, dim=-1)
            std = torch.exp(0.5 * log_var)
            target = x.flatten(1)
            log_w = []
            for start in range(0, args.k, 1000):
                eps = torch.randn(min(1000, args.k - start), mu.shape[-1])
                z = mu + std * eps
                logits = decode(z)
                log_px_z = -F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none").sum(
                    -1
                )
                log_pz = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
                log_qz = (-0.5 * eps.pow(2) - 0.5 * LOG_2PI - 0.5 * log_var).sum(-1)
                log_w.append((log_px_z + log_pz - log_qz).double())
            values.append(torch.logsumexp(torch.cat(log_w), 0).item() - math.log(args.k))
    nll = -torch.tensor(values, dtype=torch.float64)
    print(
        json.dumps(
            {
                "nll": nll.mean().item(),
                "nll_stderr": (nll.std() / math.sqrt(len(nll))).item(),
                "k": args.k,
                "images": len(nll),
            }
        )
    )


if __name__ == "__main__":
    main()
