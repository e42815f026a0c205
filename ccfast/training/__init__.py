"""Training the joint classifier–discriminator (SPEC §3): one network trained adversarially as a
classifier and as a discriminator, so that its input gradients are worth following at refinement time; or,
with `mode="robust-classifier"`, BIGROC's robust classifier (SPEC §4: L2 adversarial training on real images).

Modules, one job each:
    config.py    `TrainConfig`: every knob, validated, JSON round trip; the modes (joint, robust-classifier)
    losses.py    the four loss terms on attacked images (SPEC §3.3)
    attacks.py   the two L2 PGD attacks, the paired early stop and the attack-step schedule (SPEC §3.1–2)
    datasets.py  labelled image sources (npz, folders, downsampled-ImageNet batches), batch order, augmentation
    model_init.py  building the model from an init checkpoint (fresh head when asked or needed)
    state.py     the run directory: resolved config, training-state checkpoints, resume checks
    loop.py      `Trainer`: the iteration, DDP, metrics, ℓ0 at checkpoints
The command line is `python -m ccfast.train` (ccfast/train.py).
"""

from .config import TrainConfig

__all__ = ["TrainConfig"]
