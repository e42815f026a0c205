"""A short joint classifier–discriminator training run on CIFAR-10 (SPEC §3), to see that it trains.

Run from the repository root (one GPU, a few minutes):
    python benchmarks/train_gpu_demo.py --data-dir DATA --out-dir $OUT --iters 600

DATA must hold (anywhere below it) one `train_jpeg75_part*.npz` shard and `resnet20-12fca82f.th` (see
shared/data/README.md). The shard is split three ways, disjointly:
    1,000 held-out real images (ℓ0 and clean statistics), N real training images, and the rest as the source of
    STAND-IN generated images: real images degraded on purpose (blur + colour cast + noise, kept with their
    labels; benchmarks/make_standin_generated.py). They are NOT generator samples: they only give the
    discriminator a distribution shift to learn, until the project has a class-conditional generator.
The model is the standard (non-robust) CIFAR ResNet-20, trained with `python -m ccfast.train` at SPEC §3's
settings except for the attack sizes: SPEC's ε and steps are for 64×64 images and L2 norms grow with
√(pixels), so they are halved at 32×32 by default (--attack-scale 0.5; --attack-scale 1 for the raw values).
Writes OUT/run/ (config, metrics.jsonl, model.pt with ℓ0), OUT/train_demo.png (curves),
OUT/train_demo_summary.md, and prints the summary table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from make_standin_generated import STANDIN_NOTE, write_standins  # noqa: E402

from ccfast.data import save_samples  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True,
                   help="folder holding a train_jpeg75_part*.npz shard and resnet20-12fca82f.th")
    p.add_argument("--out-dir", type=Path, required=True, help="run directory, curves and summary go here")
    p.add_argument(
        "--work-dir", type=Path, default=None, help="where the split .npz files go (default: a temporary folder)"
    )
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr",
        type=float,
        default=3e-4,
        help="default 3e-4: SPEC's 1e-5 is for fine-tuning an already robust ResNet-50; a non-robust ResNet-20 "
        "must first become robust, and 1e-5 barely moves it in a few hundred iterations",
    )
    p.add_argument(
        "--attack-scale",
        type=float,
        default=0.5,
        help="multiplies SPEC's attack ε and step sizes (real 1.0/0.25, generated 10/0.1), which are for 64×64 "
        "images; L2 norms grow with √(pixels), so 0.5 (default) gives the same per-pixel budget at 32×32; "
        "1 = SPEC values",
    )
    p.add_argument("--n-real", type=int, default=6000, help="real training images (default 6000)")
    p.add_argument("--n-heldout", type=int, default=1000)
    p.add_argument("--ckpt-every", type=int, default=None, help="evaluation/checkpoint interval (default iters/6)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def find_one(root: Path, pattern: str) -> Path:
    found = sorted(root.rglob(pattern))
    if not found:
        sys.exit(f"train_gpu_demo: no {pattern} under {root}")
    return found[0]


def prepare_data(args, work: Path) -> dict:
    shard = find_one(args.data_dir, "train_jpeg75_part*.npz")
    with np.load(shard) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(images))
    held, real, source = np.split(perm, [args.n_heldout, args.n_heldout + args.n_real])
    if len(source) < args.batch_size:
        sys.exit(f"train_gpu_demo: the shard has {len(images)} images; too few left for stand-in generated images")
    paths = {"real": work / "real.npz", "heldout": work / "heldout.npz", "fake": work / "standin_generated.npz"}
    save_samples(paths["real"], images[real], labels[real], layout="images")
    save_samples(paths["heldout"], images[held], labels[held], layout="images")
    write_standins(paths["fake"], images[source], labels[source], seed=1)
    print(f"data: {shard.name}: {len(real)} real, {len(held)} held-out, {len(source)} {STANDIN_NOTE}", file=sys.stderr)
    return {k: str(v) for k, v in paths.items()}


def read_metrics(path: Path):
    train, evals = [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        (train if rec["kind"] == "train" else evals).append(rec)
    return train, evals


def plot(train, evals, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iter"] for r in train]
    ev = [r["iter"] for r in evals]
    fig, ax = plt.subplots(2, 3, figsize=(15, 8))
    a = ax[0, 0]
    a.plot(it, [r["D_real_adv"] for r in train], label="D(attacked real)")
    a.plot(it, [r["D_fake_adv"] for r in train], label="D(attacked stand-in generated)")
    a.plot(ev, [r["heldout_D"] for r in evals], "o--", label="D(clean held-out real)")
    a.plot(ev, [r["gen_D"] for r in evals], "s--", label="D(clean stand-in generated)")
    a.set_title("realness D = σ(f_c(x))"), a.legend(fontsize=8)
    a = ax[0, 1]
    a.plot(it, [r["realness_gap"] for r in train], label="attacked: D real − D generated")
    a.plot(ev, [r["clean_realness_gap"] for r in evals], "o--", label="clean: D held-out real − D generated")
    a.axhline(0, color="grey", lw=0.5)
    a.set_title("realness gap"), a.legend(fontsize=8)
    a = ax[0, 2]
    a.plot(it, [r["acc_real_adv"] for r in train], label="attacked real")
    a.plot(it, [r["acc_fake_adv"] for r in train], label="attacked stand-in generated")
    a.plot(ev, [r["heldout_acc"] for r in evals], "o--", label="clean held-out real")
    a.set_title("accuracy"), a.legend(fontsize=8)
    a = ax[1, 0]
    for k in ("ce_real", "ce_fake", "bce_real", "bce_fake", "loss"):
        a.plot(it, [r[k] for r in train], label=k)
    a.set_title("loss terms (attacked images)"), a.legend(fontsize=8)
    a = ax[1, 1]
    a.plot(it, [r["fake_steps"] for r in train], label="attack budget (steps)")
    a.plot(it, [r["fake_steps_taken"] for r in train], label="mean steps taken")
    a2 = a.twinx()
    a2.plot(it, [r["fake_early_stopped"] for r in train], color="C3", label="fraction early-stopped")
    a2.set_ylim(0, 1)
    (
        a.set_title("generated-image attack"),
        a.legend(fontsize=8, loc="upper left"),
        a2.legend(fontsize=8, loc="upper right"),
    )
    a = ax[1, 2]
    a.plot(ev, [r["ell0"] for r in evals], "o-", label="ℓ0 (held-out real)")
    a.plot(ev, [r["gen_ell_fake"] for r in evals], "s-", label="mean ℓ_fake (stand-in generated)")
    a.set_title("ℓ_fake = softplus(s), clean images"), a.legend(fontsize=8)
    for a in ax.flat:
        a.set_xlabel("iteration")
    fig.suptitle("ccfast.train demo: CIFAR-10 ResNet-20; generated images are STAND-INS (degraded real images)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def summary_table(train, evals, seconds: float, window: int = 5) -> str:
    def mean(rows, k):
        return float(np.mean([r[k] for r in rows]))

    first, last = train[:window], train[-window:]
    rows = [("metric (attacked images, mean of 5 log windows)", f"iters {first[0]['iter']}–{first[-1]['iter']}",
             f"iters {last[0]['iter']}–{last[-1]['iter']}")]
    for k in ("D_real_adv", "D_fake_adv", "realness_gap", "acc_real_adv", "acc_fake_adv", "loss", "ce_real", "bce_real",
              "bce_fake", "fake_steps_taken", "fake_early_stopped"):
        rows.append((k, f"{mean(first, k):.4f}", f"{mean(last, k):.4f}"))
    e0, e1 = evals[0], evals[-1]
    rows.append((f"clean, held-out (iteration {e0['iter']} → {e1['iter']})", "start", "end"))
    for k in ("ell0", "heldout_D", "gen_D", "clean_realness_gap", "heldout_acc", "gen_acc"):
        rows.append((k, f"{e0[k]:.4f}", f"{e1[k]:.4f}"))
    rows.append(("seconds per iteration (mean)", "", f"{mean(train, 'sec_per_iter'):.4f}"))
    rows.append(("wall time of the training command (s)", "", f"{seconds:.1f}"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"| {r[0]:<{w[0]}} | {r[1]:>{w[1]}} | {r[2]:>{w[2]}} |" for r in rows]
    lines.insert(1, f"|{'-' * (w[0] + 2)}|{'-' * (w[1] + 1)}:|{'-' * (w[2] + 1)}:|")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ccfast_train_demo_") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = prepare_data(args, work)
        weights = find_one(args.data_dir, "resnet20-12fca82f.th")
        run = args.out_dir / "run"
        cmd = [
            "--real",
            data["real"],
            "--fake",
            data["fake"],
            "--ell0-data",
            data["heldout"],
            "--arch",
            "cifar_resnet20",
            "--init",
            str(weights),
            "--out",
            str(run),
            "--iters",
            str(args.iters),
            "--batch-size",
            str(args.batch_size),
            "--lr",
            str(args.lr),
            "--log-every",
            str(args.log_every),
            "--overwrite",
            "--ckpt-every",
            str(args.ckpt_every or max(1, args.iters // 6)),
        ]
        k = args.attack_scale
        cmd += ["--real-eps", str(1.0 * k), "--real-step", str(0.25 * k),
                "--fake-eps", str(10.0 * k), "--fake-step", str(0.1 * k)]
        if args.device:
            cmd += ["--device", args.device]
        if args.quiet:
            cmd += ["--quiet"]
        print("python -m ccfast.train " + " ".join(cmd), file=sys.stderr)
        from ccfast.train import main as train_main

        t0 = time.perf_counter()
        rc = train_main(cmd)
        seconds = time.perf_counter() - t0
        if rc:
            return rc
    train, evals = read_metrics(run / "metrics.jsonl")
    png = args.out_dir / "train_demo.png"
    plot(train, evals, png)
    cfg = json.loads((run / "config.json").read_text())
    c = cfg["config"]
    table = summary_table(train, evals, seconds)
    header = (
        f"# ccfast.train demo\n\n{STANDIN_NOTE}.\n\ndevice {cfg['device']}, amp {cfg['amp']}, "
        f"{cfg['world_size']} process(es); {args.iters} iterations, batch {args.batch_size} real + {args.batch_size} "
        f"generated, lr {args.lr}; attacks: real ε {c['real_eps']:g} step {c['real_step']:g} × {c['real_steps']}, "
        f"generated ε {c['fake_eps']:g} step {c['fake_step']:g} × {c['fake_steps_start']}+ (SPEC × "
        f"{args.attack_scale:g}); "
        f"init: {cfg['init']}\n\n"
    )
    (args.out_dir / "train_demo_summary.md").write_text(header + table + "\n")
    print(header + table)
    print(f"\nwrote {png}, {args.out_dir / 'train_demo_summary.md'}, {run}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
