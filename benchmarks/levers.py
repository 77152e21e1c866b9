"""Accuracy levers: one source-trained classifier per setting, trained and scored the pipeline's way.

Each run trains the classifier of one variant (default `src_classic`: the source classes plus the
one-shot exemplars, classic transforms) on a prepared dataset with the `siamese` params of
params.yaml, changed by `--set key=value` (keys of the `siamese` section: max_steps, channels,
loss, temperature, rotated_classes, batch_classes, lr, ...), then scores it on the evaluation
protocols of params.yaml (20-way and 5-way novel, 20-way within-alphabet, seen) and appends one row
to --out (CSV): the setting, the training time, and every accuracy with its 95% CI.

    python benchmarks/levers.py --name proto --set loss=proto
    python benchmarks/levers.py --name proto-rot --set loss=proto rotated_classes=true max_steps=3000
    python benchmarks/levers.py --name classic-cv --variant classic --augment engine=albumentations \
        --paired-with classic-tensor

Each row's per-episode accuracies are kept (`<out folder>/episodes/<name>.npz`): `--paired-with NAME`
adds the paired delta to that earlier row, scored on the same episodes (same data and eval seed),
with its 95% CI (`delta_<protocol>_vs_<NAME>`).

`--peer` then trains the peer for the same wall-clock time, in the same process, and scores it on
the same episodes (one more row, and paired deltas in ours): a Prototypical network (Snell et al.
2017) on a Conv-4 backbone, 60-way 1-shot 5-query episodes over the same source classes with their
rotated copies, Adam, bf16 autocast and channels_last as ours: the configuration of easyfsl's
figure in the issue. It is written here, not imported: easyfsl imports torchvision, and the only
torchvision wheel for torch 2.13 is built for CUDA and fails to load on the CPU wheel
("operator torchvision::nms does not exist").
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.training import fit_siamese, with_rotated_classes
from pipeline.config import TrainerConfig, load_params, section
from pipeline.data.augment import ClassicAugmentConfig, classic_transform
from pipeline.data.episodes import Episodes, mean_ci95
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor
from pipeline.data.synthetic import SyntheticSet
from pipeline.evaluation import EvaluationConfig, accuracy_metrics, build_episodes, per_episode_accuracy, rounded
from pipeline.io import atomic_path
from pipeline.training import configure_torch
from pipeline.variants import VariantConfig, training_pools

ROOT = Path(__file__).resolve().parents[1]


def conv4(channels: int = 64) -> torch.nn.Module:
    """The peer's backbone: Snell et al.'s four 3x3 conv-BN-ReLU-maxpool blocks of 64 channels, flattened."""
    blocks: list[torch.nn.Module] = []
    for c_in in (1, channels, channels, channels):
        blocks += [torch.nn.Conv2d(c_in, channels, 3, padding=1), torch.nn.BatchNorm2d(channels), torch.nn.ReLU(),
                   torch.nn.MaxPool2d(2)]
    return torch.nn.Sequential(*blocks, torch.nn.Flatten())


def train_peer(pools: list[np.ndarray], seconds: float, seed: int, n_way: int = 60, n_query: int = 5,
               lr: float = 1e-3) -> tuple[torch.nn.Module, int]:
    """A Prototypical network (Snell et al. 2017) trained on 1-shot episodes until `seconds` have passed:
    (Conv-4 backbone, episodes). Each episode: `n_way` classes drawn from the pools (those with at
    least 1 + n_query images), one support and `n_query` query drawings each; the loss is the
    cross-entropy of the queries' softmax over negative squared Euclidean distances to the supports."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pools = [torch.from_numpy(p).float().div_(255.0) for p in pools if len(p) >= 1 + n_query]
    model = conv4().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    target = torch.arange(n_way).repeat_interleave(n_query)
    start, episodes = time.perf_counter(), 0
    progress = tqdm(desc="peer: Prototypical network", unit="episode")
    while time.perf_counter() - start < seconds:
        drawn = [pools[c][rng.choice(len(pools[c]), size=1 + n_query, replace=False)]
                 for c in rng.choice(len(pools), size=n_way, replace=False)]
        x = torch.cat([torch.stack([d[0] for d in drawn]), torch.cat([d[1:] for d in drawn])])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f = model(x.contiguous(memory_format=torch.channels_last)).float()
        support, query = f[:n_way], f[n_way:]
        loss = F.cross_entropy(-torch.cdist(query, support).pow(2), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        episodes += 1
        progress.update()
    progress.close()
    return model.eval(), episodes


@torch.no_grad()
def peer_accuracy(model: torch.nn.Module, images: torch.Tensor, episodes: dict[str, Episodes]) -> dict[str, np.ndarray]:
    """Per-episode accuracy of the peer on the pipeline's episodes: each image's features once, then
    nearest prototype (the support image's features, 1-shot) by Euclidean distance."""
    feats = []
    for start in range(0, len(images), 1024):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats.append(model(images[start:start + 1024].contiguous(memory_format=torch.channels_last)).float())
    f = torch.cat(feats)
    out = {}
    for key, ep in episodes.items():
        support, query = f[torch.from_numpy(ep.support)], f[torch.from_numpy(ep.query)]  # [E, N, D]
        predicted = torch.cdist(query, support).argmin(-1).numpy()  # [E, N]
        out[key] = (predicted == np.arange(ep.n_way)).mean(axis=1)
    return out


def key_values(items: list[str], flag: str) -> dict[str, object]:
    """`KEY=VALUE` strings -> {key: YAML value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} {item}: give KEY=VALUE, e.g. --set max_steps=3000")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="the row's name")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="siamese params to change")
    ap.add_argument("--augment", nargs="*", default=[], metavar="KEY=VALUE", help="augment params to change")
    ap.add_argument("--paired-with", metavar="NAME", help="an earlier row: paired deltas to it")
    ap.add_argument("--variant", default="src_classic", help="a variant of params.yaml without synthetic drawings")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "prepared" / "dataset.npz")
    ap.add_argument("--eval-seed", type=int, default=None, help="evaluation.seed (other episodes)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "levers" / "levers.csv")
    ap.add_argument("--peer", action="store_true",
                    help="train and score the peer (a Prototypical network) for as long, too")
    args = ap.parse_args()

    params = load_params(args.params)
    changes, augment_changes = key_values(args.set, "--set"), key_values(args.augment, "--augment")
    params["siamese"] = {**params["siamese"], **changes}
    params["augment"] = {**params["augment"], **augment_changes}
    kept = args.out.parent / "episodes"
    paired = None
    if args.paired_with is not None:
        if not (kept / f"{args.paired_with}.npz").is_file():
            raise SystemExit(f"--paired-with {args.paired_with}: no row of that name in {kept}; run it first")
        paired = dict(np.load(kept / f"{args.paired_with}.npz"))
    if args.eval_seed is not None:
        params["evaluation"] = {**params["evaluation"], "seed": args.eval_seed}
    cfg = section(params, SiameseConfig, "siamese")
    trainer_cfg = section(params, TrainerConfig, "trainer")
    augment = section(params, ClassicAugmentConfig, "augment")
    variant = section(params, VariantConfig, f"variants.{args.variant}")
    if variant.synthetic != "none":
        raise SystemExit(f"--variant {args.variant}: choose a variant without synthetic drawings")
    eval_cfg = section(params, EvaluationConfig, "evaluation")
    configure_torch(trainer_cfg)

    dataset = FewShotSet.load(args.data)
    none = SyntheticSet(images=dataset.images[:0], labels=dataset.labels[:0], generator="none")
    pools = training_pools(dataset, variant, none)
    start = time.perf_counter()
    net = fit_siamese(pools, cfg, trainer_cfg, [], transform=classic_transform(augment, cfg.seed) if variant.classic
                      else None)
    seconds = time.perf_counter() - start
    images = to_tensor(dataset.images)
    episodes = build_episodes(dataset, eval_cfg)
    accuracy = per_episode_accuracy(net, embed_all(net, images), episodes)
    row = {"name": args.name, "variant": args.variant, "set": " ".join(args.set + args.augment),
           "eval_seed": eval_cfg.seed, "train_s": round(seconds, 1),
           **{k: v for k, v in dataclasses.asdict(cfg).items() if k in changes}}
    rows = [{**row, **rounded(accuracy_metrics(accuracy))}]
    if paired is not None:
        for key in accuracy:
            delta = f"delta_{key}_vs_{args.paired_with}"
            d, ci = mean_ci95(accuracy[key] - paired[key])
            rows[0].update(rounded({delta: d, f"{delta}_ci95": ci}))
    kept.mkdir(parents=True, exist_ok=True)
    with atomic_path(kept / f"{args.name}.npz") as tmp, tmp.open("wb") as fh:
        np.savez(fh, **accuracy)
    if args.peer:
        source = training_pools(dataset, VariantConfig(train_on=("source",)), none)
        start = time.perf_counter()
        peer, n = train_peer(with_rotated_classes(source), seconds, cfg.seed)
        peer_s = time.perf_counter() - start
        peer_acc = peer_accuracy(peer, images, episodes)
        rows.append({"name": f"{args.name}: peer", "variant": "Prototypical network, Conv-4",
                     "set": f"{n} episodes of 60-way 1-shot 5-query, rotated source classes",
                     "eval_seed": eval_cfg.seed, "train_s": round(peer_s, 1),
                     **rounded(accuracy_metrics(peer_acc))})
        for key in accuracy:  # paired on the same episodes: the per-episode difference gives the CI
            delta = f"delta_{key}_vs_peer"
            d, ci = mean_ci95(accuracy[key] - peer_acc[key])
            rows[0].update(rounded({delta: d, f"{delta}_ci95": ci}))
    for r in rows:
        print(" ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    frame = pd.read_csv(args.out) if args.out.is_file() else pd.DataFrame()
    with atomic_path(args.out) as tmp:
        pd.concat([frame, pd.DataFrame(rows)], ignore_index=True).to_csv(tmp, index=False)



if __name__ == "__main__":
    main()
