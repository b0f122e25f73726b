"""Extraction throughput: rmm's batched LVLM extractors against a plain per-item transformers loop, same model,
same prompts, measured in one run.

    .venv/bin/python bench/extract.py                      # tiny random Qwen2-VL on the CPU (offline)
    .venv/bin/python bench/extract.py --model Qwen/Qwen2-VL-2B-Instruct --device cuda --dtype bfloat16

What is timed (after one warm-up call each, ``torch.inference_mode``, the same chat prompts):

- ``per-item loop``: what a one-script-per-model pipeline does: for each item, ``processor(text, image)`` then
  ``model(...)`` (embed: mean of the last hidden layer) or ``model.generate(...)`` (describe), one item at a time.
- ``rmm batched``: the extractor class that runs in the Ray actors (``lvlm_embed`` / ``lvlm_describe``), given the
  whole item set as one Ray batch: items sorted by input length (bucketing), model batches of ``batch_size``.
  ``no bucketing`` keeps the input order. ``generate + parse`` is the describe work the per-item loop also does;
  the full extractor also embeds each description with MiniLM (its own row).

Ray start-up and image decoding are not included (they are per job, not per item; see the quickstart timings in
bench/RESULTS.md). Items have images of 40-112 px and texts of 0-60 words, so lengths vary as in a catalogue.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from rmm.config import ExtractorConfig  # noqa: E402
from rmm.features.extractors import Extractor, get_extractor  # noqa: E402
from rmm.features.lvlm import load_lvlm  # noqa: E402
from rmm.features.prompts import (  # noqa: E402
    build_describe_messages,
    build_messages,
    get_template,
    load_describe_template,
)
from rmm.features.tiny import resolve_model_id  # noqa: E402

WORDS = "soft cotton baby blanket with a classic stripe pattern machine washable gift for newborns and toddlers".split()


def make_items(num_items: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch as Ray Data hands it to an extractor actor (decoded images as raw bytes + shape)."""
    rng = np.random.default_rng(seed)
    batch: dict[str, list] = {"item_id": [], "title": [], "text": [], "image": [], "image_height": [],
                              "image_width": [], "image_reason": []}
    for i in range(num_items):
        size = int(rng.integers(40, 113))
        picture = Image.new("RGB", (size, size), (255, 255, 255))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        ImageDraw.Draw(picture).ellipse((size // 8, size // 8, size - size // 8, size - size // 8), fill=colour)
        pixels = np.asarray(picture)
        words = rng.choice(WORDS, size=int(rng.integers(0, 61)))
        batch["item_id"].append(i)
        batch["title"].append(" ".join(rng.choice(WORDS, size=3)))
        batch["text"].append(" ".join(words))
        batch["image"].append(pixels.tobytes())
        batch["image_height"].append(size)
        batch["image_width"].append(size)
        batch["image_reason"].append("")
    return {key: np.asarray(values, dtype=np.int64 if key in ("item_id", "image_height", "image_width") else object)
            for key, values in batch.items()}


def _images(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.frombuffer(raw, np.uint8).reshape(h, w, 3)
            for raw, h, w in zip(batch["image"], batch["image_height"], batch["image_width"])]


class _Unbucketed:
    """Wraps an extractor so every item gets the same sort key: model batches in input order."""

    def __init__(self, extractor: Extractor) -> None:
        extractor.sort_keys = lambda items: [0] * len(items)  # type: ignore[method-assign]
        self.extractor = extractor

    def __call__(self, batch: dict[str, np.ndarray]) -> object:
        return self.extractor(batch)


class _WithoutTextEncoder:
    """Wraps a describe extractor so the description is not embedded: the same work as the per-item loop."""

    def __init__(self, extractor: Extractor) -> None:
        dim = extractor.encoder.dim
        extractor.encoder = type("NoEncoder", (), {"encode": staticmethod(
            lambda texts: np.zeros((len(texts), dim), dtype=np.float32))})()
        self.extractor = extractor

    def __call__(self, batch: dict[str, np.ndarray]) -> object:
        return self.extractor(batch)


def per_item_embed(model_path: str, dtype: str, device: str) -> Callable[[dict[str, np.ndarray]], None]:
    processor, model = load_lvlm(model_path, dtype, device=device)
    template = get_template("default")

    @torch.inference_mode()
    def run(batch: dict[str, np.ndarray]) -> None:
        for title, text, image in zip(batch["title"], batch["text"], _images(batch)):
            prompt = processor.apply_chat_template(build_messages(template, title, text, True), tokenize=False,
                                                   add_generation_prompt=True)
            inputs = processor(text=[prompt], images=[Image.fromarray(image)], return_tensors="pt").to(device)
            hidden = model(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]
            hidden.float().mean(dim=1).cpu().numpy()

    return run


def per_item_describe(model_path: str, dtype: str, device: str, max_new_tokens: int) -> Callable[[dict], None]:
    processor, model = load_lvlm(model_path, dtype, device=device)
    template = load_describe_template("default")

    @torch.inference_mode()
    def run(batch: dict[str, np.ndarray]) -> None:
        for title, text, image in zip(batch["title"], batch["text"], _images(batch)):
            prompt = processor.apply_chat_template(build_describe_messages(template, title, text, True),
                                                   tokenize=False, add_generation_prompt=True)
            inputs = processor(text=[prompt], images=[Image.fromarray(image)], return_tensors="pt").to(device)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                    do_sample=False)
            processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return run


def best_rates(runners: dict[str, Callable[[dict[str, np.ndarray]], object]], batch: dict[str, np.ndarray],
               warmup: dict[str, np.ndarray], repeats: int) -> dict[str, tuple[float, float]]:
    """(items per CPU-second, items per wall-second) of each runner: one warm-up call each, then ``repeats``
    rounds that time every runner once, in turn; the best round counts. Interleaving spreads a busy neighbour's
    load over all runners alike; CPU time (of this process, one torch thread) is what the work costs whatever the
    neighbours do, and equals wall time on an idle core."""
    for run in runners.values():
        run(warmup)
    cpu = dict.fromkeys(runners, float("inf"))
    wall = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, run in runners.items():
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            run(batch)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
            wall[name] = min(wall[name], time.perf_counter() - start_wall)
    size = len(batch["item_id"])
    return {name: (size / cpu[name], size / wall[name]) for name in runners}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:qwen2-vl")
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the best counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: as in a Ray actor with num_cpus < 2; robust on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_path = resolve_model_id(args.model)
    batch, warmup = make_items(args.items), make_items(4, seed=1)
    gpus = 1.0 if args.device == "cuda" else 0.0
    rows: list[tuple[str, str, str, float, float, float, float]] = []

    def config(kind: str, batch_size: int, **kw: object) -> ExtractorConfig:
        return ExtractorConfig(name="bench", kind=kind, model=args.model, batch_size=batch_size, dtype=args.dtype,
                               bucket_window=max(1, args.items // batch_size), num_gpus=gpus, **kw)

    size = max(args.batch_sizes)
    embed: dict[str, Callable] = {"per-item loop|1": per_item_embed(model_path, args.dtype, args.device)}
    for batch_size in args.batch_sizes:
        embed[f"rmm batched|{batch_size}"] = get_extractor("lvlm_embed")(config("lvlm_embed", batch_size))
    embed[f"rmm batched, no bucketing|{size}"] = _Unbucketed(get_extractor("lvlm_embed")(config("lvlm_embed", size)))
    four = config("lvlm_embed", size, poolings=("mean", "image_mean", "text_mean", "last"))
    embed[f"rmm batched, 4 poolings (4 features) in one pass|{size}"] = get_extractor("lvlm_embed")(four)
    describe: dict[str, Callable] = {
        "per-item loop|1": per_item_describe(model_path, args.dtype, args.device, args.max_new_tokens)}
    for batch_size in args.batch_sizes:
        cfg = config("lvlm_describe", batch_size, max_new_tokens=args.max_new_tokens)
        describe[f"rmm batched (generate + parse)|{batch_size}"] = _WithoutTextEncoder(
            get_extractor("lvlm_describe")(cfg))
    cfg = config("lvlm_describe", size, max_new_tokens=args.max_new_tokens)
    describe[f"rmm batched (generate + parse + MiniLM embedding)|{size}"] = get_extractor("lvlm_describe")(cfg)
    for task, runners in (("embed", embed), ("describe", describe)):
        rates = best_rates(runners, batch, warmup, args.repeats)
        base_cpu, base_wall = rates["per-item loop|1"]
        for name, (per_cpu, per_wall) in rates.items():
            mode, size_text = name.split("|")
            rows.append((task, mode, size_text, per_cpu, per_cpu / base_cpu, per_wall, per_wall / base_wall))

    print(f"\nmodel {args.model} ({model_path}), {args.items} items, dtype {args.dtype}, device {args.device}, "
          f"describe max_new_tokens {args.max_new_tokens}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}, Python {platform.python_version()}\n")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (items/s per CPU-second is robust to it)\n")
    print("| task | mode | batch size | items/s (CPU time) | vs per-item | items/s (wall) | vs per-item |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for task, mode, size_text, per_cpu, ratio_cpu, per_wall, ratio_wall in rows:
        print(f"| {task} | {mode} | {size_text} | {per_cpu:.1f} | {ratio_cpu:.1f}x | {per_wall:.1f} | "
              f"{ratio_wall:.1f}x |")


if __name__ == "__main__":
    main()
