"""``vfmtok demo``: the whole method end to end, offline, on a CPU in minutes.

A frozen foundation model (the bundled DINOv2-S/14) becomes a tokenizer, a GPT learns its tokens, new images come out,
and the numbers say how good they are. Each stage is an ordinary ``vfmtok`` command run on the previous stage's output,
so the demo is also the recipe a user follows on their own data:

1. data        Fashion-MNIST from Debian's ``dataset-fashion-mnist`` exported as an ImageFolder (or ``--data``)
2. tokenizer   ``train-tokenizer`` (VFM features cached once and deleted afterwards unless ``--keep-feature-cache``;
               pixel + semantic + VQ losses)
3. codes       ``extract-codes`` on the training split
4. gpt         ``train-gpt`` on those codes
5. samples     ``sample`` a class-conditional grid without and with classifier-free guidance
6. evaluate    ``eval-tokenizer`` (PSNR, SSIM, LPIPS, usage, FD on VFM features, linear probe) and ``eval-samples``
               (FD with its spread over bootstrap resamples, precision / recall)
7. regions     where six tokens' deformable attention samples, on two test images (``regions``)
8. report      ``report.html`` / ``report.md``: labelled sample grids, a metrics table that explains every number,
               the pictures, loss curves and stage times (wall and CPU seconds)

Both training stages show their progress (step, running loss, time left): a bar on a terminal, a log line every 30 s
otherwise (``--progress``).

A finished stage leaves ``<out>/stages/<name>.json``; re-running the command skips it, and an interrupted training
stage resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

HELP = "run VFMTok end to end offline (tokenizer -> codes -> GPT -> samples -> evaluation -> report)"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """Sizes of every stage. ``default`` runs in about 8 minutes on 2 CPU cores; ``toy`` in well under a minute."""

    train_per_class: int
    test_per_class: int
    tok_steps: int
    tok_batch: int
    gpt_steps: int
    gpt_batch: int
    gpt_layers: int
    gpt_dim: int
    samples_per_class: int
    eval_num: int


PLANS = {
    "default": DemoPlan(train_per_class=300, test_per_class=50, tok_steps=800, tok_batch=32, gpt_steps=600,
                        gpt_batch=64, gpt_layers=4, gpt_dim=192, samples_per_class=8, eval_num=500),
    "toy": DemoPlan(train_per_class=12, test_per_class=4, tok_steps=6, tok_batch=8, gpt_steps=6, gpt_batch=8,
                    gpt_layers=1, gpt_dim=32, samples_per_class=1, eval_num=16),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output directory (re-running resumes)")
    parser.add_argument("--data", type=Path, default=None,
                        help="ImageFolder with train/<class>/* (and optionally test/<class>/*); default: Fashion-MNIST")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", choices=sorted(PLANS), default="default", help="stage sizes (toy: a quick check)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="scale the training steps to roughly this many minutes of training in total")
    parser.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                        help="training progress: a bar on a terminal, a log line every 30 s otherwise (auto), "
                        "or forced")
    parser.add_argument("--keep-feature-cache", action="store_true",
                        help="keep the tokenizer's VFM feature cache (<out>/tokenizer/feature_cache, ~0.7 GB) after "
                        "training; by default it is deleted once the tokenizer is trained")


class Demo:
    def __init__(self, out: Path, plan: DemoPlan, device: str, data: Path | None, progress: str = "auto",
                 keep_feature_cache: bool = False) -> None:
        self.out, self.plan, self.device, self.user_data = out, plan, device, data
        self.progress, self.keep_feature_cache = progress, keep_feature_cache
        (out / "stages").mkdir(parents=True, exist_ok=True)

    # -- stage bookkeeping -------------------------------------------------------------------------------------
    def done(self, name: str) -> dict[str, Any] | None:
        path = self.out / "stages" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def stage(self, name: str, fn) -> dict[str, Any]:  # noqa: ANN001 - a bound stage method
        result = self.done(name)
        if result is not None:
            print(f"[demo] {name}: already done, skipping", flush=True)
            return result
        print(f"[demo] {name} ...", flush=True)
        t0, c0 = time.time(), time.process_time()
        result = fn() or {}
        result["seconds"] = round(time.time() - t0, 1)
        result["cpu_seconds"] = round(time.process_time() - c0, 1)  # all threads of this process
        tmp = self.out / "stages" / f".{name}.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(self.out / "stages" / f"{name}.json")
        print(f"[demo] {name}: done in {result['seconds']} s", flush=True)
        return result

    def cli(self, *argv: str) -> None:
        from .main import UserError, main

        rc = main([str(a) for a in argv])
        if rc != 0:
            raise UserError(f"stage command failed (exit {rc}): vfmtok {' '.join(map(str, argv))}")

    # -- stages ------------------------------------------------------------------------------------------------
    def data(self) -> dict[str, Any]:
        if self.user_data is not None:
            from .main import UserError

            root = self.user_data
            if not (root / "train").is_dir():
                raise UserError(f"--data {root}: expected {root}/train/<class>/<images> (and optionally test/)")
            test = root / "test" if (root / "test").is_dir() else root / "train"
            return {"train": str(root / "train"), "test": str(test), "source": str(root)}
        from ..data.fashion_mnist import export_fashion_mnist

        root = export_fashion_mnist(self.out / "data" / "fashion-mnist",
                                    {"train": self.plan.train_per_class, "test": self.plan.test_per_class})
        return {"train": str(root / "train"), "test": str(root / "test"),
                "source": "Fashion-MNIST (Debian dataset-fashion-mnist), class-balanced subset"}

    def tokenizer(self, data: dict[str, Any]) -> dict[str, Any]:
        from ..training.tokenizer import TokenizerTrainConfig

        p = self.plan
        cfg = TokenizerTrainConfig(
            preset="tok-demo", backbone_weights="bundled", data=data["train"], val_data=data["test"],
            num_val=min(64, p.eval_num), crop="resize", hflip=False, batch_size=p.tok_batch, total_steps=p.tok_steps,
            optimizer="adamw", lr=1e-3, schedule="cosine", warmup_steps=max(1, p.tok_steps // 20), min_lr=1e-5,
            # LPIPS would double the CPU step time; it is still measured in the evaluation stage
            ema_decay=0.99 if p.tok_steps >= 500 else 0.5, pixel_loss="l1", lpips_weight=0.0, semantic_weight=1.0,
            disc_type="none", cache_features=True, cache_dtype="float32", device=self.device, workers=0,
            log_every=max(1, p.tok_steps // 50), eval_every=max(1, p.tok_steps // 3),
            ckpt_every=max(1, p.tok_steps // 3),
            num_grid=8,
        )
        run = self.out / "tokenizer"
        run.mkdir(parents=True, exist_ok=True)
        cfg.save(run / "recipe.json")
        self.cli("train-tokenizer", "--config", run / "recipe.json", "--out", run, "--progress", self.progress)
        cache = run / "feature_cache"
        if cache.is_dir() and not self.keep_feature_cache:
            size = sum(f.stat().st_size for f in cache.iterdir() if f.is_file())
            shutil.rmtree(cache)
            print(f"[demo] deleted the feature cache {cache} ({size / 1e9:.2f} GB; --keep-feature-cache keeps it)",
                  flush=True)
        return {"run": str(run), "model": str(run / "final"), "steps": p.tok_steps}

    def codes(self, data: dict[str, Any], tok: dict[str, Any]) -> dict[str, Any]:
        out = self.out / "codes"
        self.cli("extract-codes", "--tokenizer", tok["model"], "--data", data["train"], "--out", out,
                 "--crop", "resize", "--num-workers", "0", "--shard-size", "1000", "--device", self.device)
        return {"codes": str(out)}

    def gpt(self, codes: dict[str, Any], tok: dict[str, Any]) -> dict[str, Any]:
        from ..training.generator import GPTTrainConfig

        p = self.plan
        cfg = GPTTrainConfig(
            model="gpt-tiny", model_overrides=(f"n_layer={p.gpt_layers}", f"dim={p.gpt_dim}", "n_head=4"),
            codes=codes["codes"], val_size=min(200, p.train_per_class), augment=False, tokenizer="",
            global_batch_size=p.gpt_batch, total_steps=p.gpt_steps, lr=1e-3, lr_schedule="cosine",
            warmup_steps=max(1, p.gpt_steps // 20), min_lr=1e-5, weight_decay=0.05, ema=True,
            ema_decay=0.99 if p.gpt_steps >= 500 else 0.5, mixed_precision="none",
            log_every=max(1, p.gpt_steps // 50), eval_every=max(1, p.gpt_steps // 5),
            ckpt_every=max(1, p.gpt_steps // 3),
        )
        run = self.out / "gpt"
        run.mkdir(parents=True, exist_ok=True)
        cfg.save(run / "recipe.json")
        self.cli("train-gpt", "--config", run / "recipe.json", "--out", run, "--device", self.device,
                 "--progress", self.progress)
        return {"run": str(run), "model": str(run / "final"), "steps": p.gpt_steps}

    def samples(self, gpt: dict[str, Any], tok: dict[str, Any]) -> dict[str, Any]:
        n = 10 * self.plan.samples_per_class
        result = {}
        for name, scale in (("cfg-free", 1.0), ("cfg-3", 3.0)):
            out = self.out / "samples" / name
            self.cli("sample", "--gpt", gpt["model"], "--tokenizer", tok["model"], "--num", n, "--out", out,
                     "--cfg-scale", scale, "--image-size", 0, "--seed", 0, "--batch-size", 40, "--no-png",
                     "--grid-max", n, "--device", self.device)
            result[name] = {"dir": str(out), "cfg_scale": scale, "num": n,
                            "grid_per_class": self.plan.samples_per_class}
        return {"runs": result}

    def evaluate(self, data: dict[str, Any], tok: dict[str, Any], samples: dict[str, Any]) -> dict[str, Any]:
        n = str(self.plan.eval_num)
        ev = self.out / "eval"
        # batches of 64, not 16: the small VFM and LPIPS passes spend 20 % less CPU time per image
        self.cli("eval-tokenizer", "--tokenizer", tok["model"], "--data", data["test"], "--num", n,
                 "--eval-size", "0", "--vfm-size", "84", "--device", self.device, "--batch-size", "64",
                 "--probe-train", data["train"], "--probe-test", data["test"],
                 "--probe-num", str(2 * self.plan.eval_num), "--out", ev / "tokenizer.json")
        ref_stats = ev / "reference-stats.npz"  # reference features extracted once, reused for every sample set
        for name, s in samples["runs"].items():
            ref = ["--ref", ref_stats] if ref_stats.exists() else ["--ref", data["test"], "--num-ref", n,
                                                                   "--save-ref-stats", ref_stats]
            self.cli("eval-samples", Path(s["dir"]) / "samples.npz", *ref, "--extractor", "dinov2-bundled",
                     "--vfm-size", "84", "--device", self.device, "--bootstrap", "100",
                     "--out", ev / f"samples-{name}.json")
        return {"dir": str(ev)}

    def regions(self, data: dict[str, Any], tok: dict[str, Any]) -> dict[str, Any]:
        """Token-region pictures of the first test image of two classes (6 tokens each, the last encoder layer)."""
        test = Path(data["test"])
        classes = sorted(p for p in test.iterdir() if p.is_dir())
        pictures = []
        for i, c in enumerate(classes[:: max(1, len(classes) // 2)][:2]):
            image = sorted(c.iterdir())[0]
            out = self.out / "regions" / f"regions-{i}.png"
            self.cli("regions", image, "--tokenizer", tok["model"], "--out", out, "--device", self.device,
                     "--num-tokens", "6")
            pictures.append(str(out))
        return {"pictures": pictures}

    def report(self) -> dict[str, Any]:
        from .demo_report import write_report

        return {"html": str(write_report(self.out))}

    def run(self) -> Path:
        data = self.stage("data", self.data)
        tok = self.stage("tokenizer", lambda: self.tokenizer(data))
        codes = self.stage("codes", lambda: self.codes(data, tok))
        gpt = self.stage("gpt", lambda: self.gpt(codes, tok))
        samples = self.stage("samples", lambda: self.samples(gpt, tok))
        self.stage("evaluate", lambda: self.evaluate(data, tok, samples))
        self.stage("regions", lambda: self.regions(data, tok))
        (self.out / "stages" / "report.json").unlink(missing_ok=True)  # the report always reflects the latest state
        return Path(self.stage("report", self.report)["html"])


def scaled_plan(plan: DemoPlan, minutes: float | None) -> DemoPlan:
    """Scale the training steps to a time budget (the default plan trains for about 7 minutes on 2 cores)."""
    if minutes is None:
        return plan
    f = max(0.05, minutes / 7.0)
    return dataclasses.replace(plan, tok_steps=max(2, int(plan.tok_steps * f)),
                               gpt_steps=max(2, int(plan.gpt_steps * f)))


def run(args: argparse.Namespace) -> int:
    plan = scaled_plan(PLANS[args.size], args.minutes)
    t0 = time.time()
    html = Demo(args.out, plan, args.device, args.data, args.progress, args.keep_feature_cache).run()
    print(f"[demo] finished in {time.time() - t0:.0f} s; open {html}")
    return 0
