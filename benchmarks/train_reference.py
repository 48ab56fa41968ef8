"""Train the reference teacher shipped in src/vltrim/assets/reference_clip (about 15 minutes on 2 CPU cores).

python benchmarks/train_reference.py [--steps 1500] [--out src/vltrim/assets/reference_clip]
"""

from __future__ import annotations

import argparse
import time

import torch

from vltrim.reference import ASSET, TRAIN_STEPS, train_reference

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=TRAIN_STEPS)
    ap.add_argument("--out", default=str(ASSET))
    args = ap.parse_args()
    t0 = time.time()
    train_reference(args.out, steps=args.steps)
    print(f"trained in {time.time() - t0:.0f}s on {torch.get_num_threads()} threads; saved to {args.out}")
    print(open(f"{args.out}/README.md").read())
