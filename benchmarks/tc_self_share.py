"""How much of beta-TCVAE's estimate of q(z) is a code's own posterior, for a trained model.

The minibatch estimate of log q(z_i) sums q(z_i | x_j) over the M posteriors at hand; with narrow
posteriors the code's own term (j = i) makes almost all of that sum, and the "total correlation" then
measures the code's own log-density, not the dependence between dimensions. This prints, for codes
z_i ~ q(z | x_i) of random training images, the share of the own term in the joint sum for several M
(the batch, or the batch with ``objective.tc_memory`` remembered posteriors), and per dimension in the
marginals' sums at the first M, with each dimension's variance of the means and median scale.

    python benchmarks/tc_self_share.py disent-btcvae                  # a pretrained model's name, or
    python benchmarks/tc_self_share.py runs/disent-btcvae --sizes 256 4352 16640 --codes 20000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vaelab import pretrained
from vaelab.data.datasets import load_dataset
from vaelab.distributions.kl import diagonal_normal_parts
from vaelab.model import load_model


def own_share(log_q: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """exp(own - logsumexp(log_q)) along the last dimension: the own term's share of the sum."""
    return (own - torch.logsumexp(log_q, -1)).exp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run directory or a pretrained model's name")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 4352, 16640, 20000])
    parser.add_argument("--codes", type=int, default=20000, help="training images encoded (at least the sizes)")
    parser.add_argument("--probes", type=int, default=256, help="codes whose sums are measured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = Path(args.model) if Path(args.model).is_dir() else pretrained.path(args.model)
    model, config, _ = load_model(folder)
    data = load_dataset(config.data.name)
    generator = torch.Generator().manual_seed(args.seed)
    rows = torch.randint(len(data.x_train), (max(args.codes, *args.sizes),), generator=generator)
    with torch.no_grad():
        parts = [diagonal_normal_parts(model.q_z(data.x_train[r].float() / 255)) for r in rows.split(1000)]
    loc, scale = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    z = loc + scale * torch.randn(loc.shape, generator=generator)
    probes = range(min(args.probes, min(args.sizes)))
    print(f"{folder}: {len(loc)} codes; variance of the means per dimension:", loc.var(0).numpy().round(3))
    print("median scale per dimension:", scale.median(0).values.numpy().round(3))
    for m in args.sizes:
        log_q = torch.stack([torch.distributions.Normal(loc[:m], scale[:m]).log_prob(z[i]).sum(-1) for i in probes])
        own = log_q[torch.arange(len(log_q)), torch.arange(len(log_q))]
        print(f"M = {m}: the own term's mean share of the joint sum {own_share(log_q, own).mean():.3f}")
    m = min(args.sizes)
    per_dim = torch.stack([torch.distributions.Normal(loc[:m], scale[:m]).log_prob(z[i]) for i in probes])  # P x M x d
    own = per_dim[torch.arange(len(per_dim)), torch.arange(len(per_dim))]
    share = own_share(per_dim.transpose(1, 2), own).mean(0)
    print(f"M = {m}: the own term's mean share of each marginal's sum", share.numpy().round(3))


if __name__ == "__main__":
    main()
