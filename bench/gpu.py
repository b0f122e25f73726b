"""One GPU, one command: LVLM extraction throughput and model FLOP utilisation, graph training epochs, the kNN
build. Run through ``bench/gpu.sh`` (at most ~8 minutes on one H100/H200-class GPU; appends its table to
bench/RESULTS.md)::

    bench/gpu.sh                                   # on a GPU machine
    bench/gpu.sh --dry-run --out /tmp/gpu-dry.md   # every part at toy size on the CPU, in well under a minute

Parts, in one process except the kNN build (bench/train.py runs it in its own interpreter):

1. **Qwen2-VL-2B, random weights.** Built from ``bench/qwen2_vl_2b_config.json`` (the dimensions of
   Qwen/Qwen2-VL-2B-Instruct's ``config.json``: no download) with the offline Qwen2 tokenizer, chat template and
   image processor of :mod:`rmm.features.tiny`, saved, and loaded back the way an extractor loads any checkpoint.
   ``embed``: the ``lvlm_embed`` extractor (the class Ray Data's actors run: length bucketing, model batches,
   failure isolation) on one batch of synthetic items, bf16. ``describe``: the generation the ``lvlm_describe``
   extractor runs (:class:`rmm.features.lvlm.LVLMDescriber`, greedy, ``max_new_tokens``; random weights never
   emit the end token, so every item generates all of them); the extractor's MiniLM embedding of the answers is
   another model and left out. Items: a ``--image-px`` square picture and a ~40-word title + text each.
   Model FLOP utilisation = useful FLOPs / time / the device's dense bf16 peak (:data:`PEAK_BF16`; "unknown" on
   a device not in the table). Useful FLOPs (:func:`lvlm_flops`) count the matrix products of the real (unpadded)
   tokens: 2 x the linear weights per token, causal attention's QK^T and AV, the vision tower per patch with its
   full per-image attention, the patch merger, and the LM head where logits are computed (one row per item in
   embed, each generated token in describe); describe adds each decoding step with its growing context.
2. **LightGCN and FREEDOM epochs** on bench/train.py's Baby-sized data (its generator and model builder): a
   warm-up epoch, then one full epoch timed (``rmm.train.loop``'s epoch: sampler, batches moved to the device,
   forward, backward, Adam; FREEDOM's per-epoch pruning included), float32.
3. **The kNN item graph** of bench/train.py (``KNNSpec(k=10, cosine, sym)``) at 1M items x 384, every chunk
   computed, on the GPU.

``--dry-run``: a 2-layer, 64-wide Qwen2-VL with the real vocabulary (the same code path), 16 items of 56 px, a
300-user / 200-item dataset, a 2,000-item kNN, all on the CPU; its table goes to ``--out`` only.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from rmm.config import LVLMEmbedConfig, TrainConfig
from rmm.features.extractors import DONE, LVLMEmbedExtractor
from rmm.features.lvlm import LVLMDescriber
from rmm.features.prompts import load_describe_template
from rmm.features.tiny import QWEN2_VL_CHAT_TEMPLATE, _qwen_tokenizer
from rmm.models.base import Recommender
from rmm.train.loop import BPRSampler, _train_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as train_bench  # noqa: E402  (bench/train.py: Baby data, model builder, kNN case)

CONFIG_FILE = Path(__file__).resolve().parent / "qwen2_vl_2b_config.json"
RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"

#: Dense (no sparsity) bf16 tensor-core peak FLOP/s by device-name fragment, most specific first (the vendors'
#: data sheets; SXM parts). The first fragment in the CUDA device name wins.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("A100", 312e12),
    ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("V100", 125e12),
)

#: The dry run's Qwen2-VL: the 2B's config with these dimensions (same architecture, vocabulary and code path).
TOY_DIMENSIONS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "max_window_layers": 2,
                  "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
TOY_VISION = {"depth": 2, "embed_dim": 32, "num_heads": 2, "hidden_size": 64}
TOY_BABY = {"num_users": 300, "num_items": 200, "num_interactions": 3_000}


@dataclass(frozen=True)
class Sizes:
    """What each part runs at: the GPU sizes or the dry run's."""

    embed_items: int
    describe_items: int
    batch_size: int
    image_px: int
    max_new_tokens: int
    knn_items: int


GPU_SIZES = Sizes(embed_items=1024, describe_items=256, batch_size=64, image_px=448, max_new_tokens=48,
                  knn_items=1_000_000)
DRY_SIZES = Sizes(embed_items=16, describe_items=8, batch_size=8, image_px=56, max_new_tokens=8, knn_items=2_000)


# ------------------------------------------------------------------------------------------------ the model


def qwen2_vl_config(dry_run: bool) -> dict[str, Any]:
    """The repo's Qwen2-VL-2B ``config.json`` dict; for the dry run with :data:`TOY_DIMENSIONS`."""
    config = json.loads(CONFIG_FILE.read_text())
    if dry_run:
        config.update(TOY_DIMENSIONS)
        config["vision_config"] = {**config["vision_config"], **TOY_VISION}
    return config


def build_qwen2_vl(target: Path, config_dict: Mapping[str, Any], device: str) -> Path:
    """A random-weight Qwen2-VL of ``config_dict``'s dimensions saved in ``target`` with a processor, loadable as
    a hub checkpoint. The tokenizer is rmm's offline Qwen2 one (a small vocabulary whose ids all lie inside the
    model's); the special-token ids in the config are remapped to it, the vocabulary size is the model's."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer, ids = _qwen_tokenizer()
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN2_VL_CHAT_TEMPLATE)
    config = Qwen2VLConfig.from_dict({
        **config_dict, "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]})
    torch.manual_seed(train_bench.SEED)
    with torch.device(device):  # initialising 2B weights on the GPU takes seconds, on the CPU minutes
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def lvlm_flops(config: Any, text_tokens: int, patches: int, logit_rows: int) -> float:
    """Useful forward FLOPs of one item: ``text_tokens`` through the language model (causal), ``patches`` through
    the vision tower (full attention within the image) and merger, the LM head on ``logit_rows`` positions.

    Linear layers cost 2 x weights per token; attention 2 x (QK^T + AV) multiply-adds of the positions each query
    sees (causal: T^2 / 2 in all; vision: P^2).
    """
    text, vision = config.get_text_config(), config.vision_config
    hidden, heads = text.hidden_size, text.num_attention_heads
    head_dim = hidden // heads
    kv = text.num_key_value_heads * head_dim
    layer = hidden * (hidden + 2 * kv) + hidden * hidden + 3 * hidden * text.intermediate_size
    flops = text.num_hidden_layers * (2 * layer * text_tokens + 2 * heads * head_dim * text_tokens ** 2)
    flops += 2 * hidden * text.vocab_size * logit_rows
    embed, merge = vision.embed_dim, vision.spatial_merge_size ** 2
    patch_in = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    block = 4 * embed * embed + 2 * embed * int(embed * vision.mlp_ratio)
    flops += 2 * patch_in * embed * patches
    flops += vision.depth * (2 * block * patches + 4 * embed * patches ** 2)
    flops += 2 * ((embed * merge) ** 2 + embed * merge * vision.hidden_size) * patches / merge
    return float(flops)


def decode_flops(config: Any, context: int, new_tokens: int) -> float:
    """FLOPs of generating ``new_tokens`` after a ``context``-token prompt with a KV cache: each step runs one
    token through every linear layer and the LM head, and attends to everything before it."""
    text = config.get_text_config()
    per_token = lvlm_flops(config, 1, 0, 1) - 2 * text.num_hidden_layers * text.hidden_size  # no self-attention
    attended = sum(context + step for step in range(new_tokens))
    return float(new_tokens * per_token + text.num_hidden_layers * 4 * text.hidden_size * attended)


def make_items(num_items: int, image_px: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A Ray Data batch as the extractors receive it: decoded square pictures (raw RGB bytes + shape), a short
    title and a ~40-word text per item."""
    rng = np.random.default_rng(seed)
    words = ("soft cotton baby blanket with a classic stripe pattern machine washable gift for newborns and toddlers "
             "leather shoe vintage look minimalist design wool hat sporty shirt ceramic mug metal lamp").split()
    pictures = []
    for _ in range(num_items):
        picture = Image.new("RGB", (image_px, image_px), tuple(int(c) for c in rng.integers(0, 256, 3)))
        box = sorted(rng.integers(0, image_px, 2)), sorted(rng.integers(0, image_px, 2))
        ImageDraw.Draw(picture).ellipse((box[0][0], box[1][0], box[0][1], box[1][1]),
                                        fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        pictures.append(np.asarray(picture).tobytes())
    column = np.empty(num_items, dtype=object)
    column[:] = pictures
    return {"item_id": np.arange(num_items, dtype=np.int64),
            "title": np.array([" ".join(rng.choice(words, 3)) for _ in range(num_items)], dtype=object),
            "text": np.array([" ".join(rng.choice(words, int(rng.integers(30, 50)))) for _ in range(num_items)],
                             dtype=object),
            "image": column, "image_height": np.full(num_items, image_px, dtype=np.int64),
            "image_width": np.full(num_items, image_px, dtype=np.int64),
            "image_reason": np.full(num_items, "", dtype=object)}


def item_shapes(processor: Any, prompts: list[str], batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Real (unpadded) prompt tokens and vision patches of each item, from the model's own processor."""
    tokens, patches = [], []
    for start in range(0, len(prompts), 16):  # a few items at a time: pixel values of 1,000 items fill GBs
        rows = slice(start, start + 16)
        images = [Image.frombytes("RGB", (int(w), int(h)), raw) for raw, h, w in
                  zip(batch["image"][rows], batch["image_height"][rows], batch["image_width"][rows], strict=True)]
        inputs = processor(text=prompts[rows], images=images, padding=True, return_tensors="pt")
        tokens.append(inputs["attention_mask"].sum(dim=1).numpy())
        patches.append(inputs["image_grid_thw"].prod(dim=1).numpy())
    return np.concatenate(tokens), np.concatenate(patches)


def synchronize(device: str) -> None:
    """Wait for the GPU's queued kernels, so a timer reads work done rather than work launched."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[], Any], device: str) -> tuple[Any, float]:
    """``run()``'s result and wall seconds, the device's queued work included."""
    synchronize(device)
    tic = time.perf_counter()
    result = run()
    synchronize(device)
    return result, time.perf_counter() - tic


def lvlm_rows(model_dir: Path, sizes: Sizes, device: str, peak: float | None) -> list[dict[str, Any]]:
    """Embed (the extractor) and describe (its generation) throughput and FLOP utilisation."""
    gpus = 1.0 if device == "cuda" else 0.0
    cfg = LVLMEmbedConfig(name="bench", model=str(model_dir), dtype="bfloat16",
                          batch_size=sizes.batch_size, bucket_window=max(1, sizes.embed_items // sizes.batch_size),
                          max_image_size=sizes.image_px, num_gpus=gpus)
    extractor = LVLMEmbedExtractor(cfg)
    embedder = extractor.embedder
    config = embedder.model.config
    label = (f"Qwen2-VL {sum(p.numel() for p in embedder.model.parameters()) / 1e9:.2f}B params, bf16, "
             f"batch {sizes.batch_size}, {sizes.image_px} px")
    batch = make_items(sizes.embed_items, sizes.image_px)
    extractor(make_items(sizes.batch_size, sizes.image_px, seed=1))  # warm-up: kernels, allocator
    tables, seconds = timed(lambda: extractor(batch), device)
    done = int((next(iter(tables.values()))["status"] == DONE).sum())
    prompts = embedder.prompts(list(batch["title"]), list(batch["text"]), [True] * sizes.embed_items)
    (tokens, patches), processor_s = timed(lambda: item_shapes(embedder.processor, prompts, batch), "cpu")
    flops = sum(lvlm_flops(config, int(t), int(p), 1) for t, p in zip(tokens, patches, strict=True))
    rows = [row("LVLM embed (lvlm_embed extractor)", f"{label}; {sizes.embed_items} items "
                f"({done} done), {tokens.mean():.0f} tokens/item ({patches.mean():.0f} patches); the processor "
                f"alone: {processor_s:.3g} s", seconds,
                sizes.embed_items / seconds, "items/s", flops / seconds, peak)]

    describer = LVLMDescriber(str(model_dir), template=load_describe_template("default"),
                              max_new_tokens=sizes.max_new_tokens, dtype="bfloat16", device=device)
    describe_batch = {key: values[:sizes.describe_items] for key, values in batch.items()}
    images = [np.frombuffer(raw, np.uint8).reshape(int(h), int(w), 3) for raw, h, w in
              zip(describe_batch["image"], describe_batch["image_height"], describe_batch["image_width"], strict=True)]

    def describe_all(titles: list[str], texts: list[str], pictures: list[np.ndarray]) -> list[str]:
        return [answer for start in range(0, len(titles), sizes.batch_size)
                for answer in describer.describe(titles[start:start + sizes.batch_size],
                                                 texts[start:start + sizes.batch_size],
                                                 pictures[start:start + sizes.batch_size])]

    titles, texts = list(describe_batch["title"]), list(describe_batch["text"])
    describe_all(titles[:sizes.batch_size], texts[:sizes.batch_size], images[:sizes.batch_size])  # warm-up
    _, seconds = timed(lambda: describe_all(titles, texts, images), device)
    prompts = describer.prompts(titles, texts, [True] * len(titles))
    tokens, patches = item_shapes(describer.processor, prompts, describe_batch)
    flops = sum(lvlm_flops(config, int(t), int(p), 1) + decode_flops(config, int(t), sizes.max_new_tokens - 1)
                for t, p in zip(tokens, patches, strict=True))
    rows.append(row("LVLM describe (lvlm_describe generation)", f"{label}; {sizes.describe_items} items, "
                    f"{tokens.mean():.0f} prompt tokens/item, {sizes.max_new_tokens} new tokens", seconds,
                    sizes.describe_items / seconds, "items/s", flops / seconds, peak))
    return rows


# ------------------------------------------------------------------------------------ training and kNN


def run_epoch(model: Recommender[Any], optimizer: torch.optim.Optimizer, sampler: BPRSampler, train_cfg: TrainConfig,
              number: int, device: str) -> float:
    """Epoch ``number`` of one single-process rank, as rmm.train.loop.fit runs it (the model first told which epoch
    starts, for the models that rebuild a graph per epoch); its mean batch loss."""
    model.start_epoch(train_cfg.seed, number)
    return _train_epoch(model, optimizer, sampler, train_cfg, number, 0, 1, device)


def epoch_rows(data_dir: Path, device: str) -> list[dict[str, Any]]:
    """bench/train.py's data written into ``data_dir``; LightGCN and FREEDOM built on it, then a warm-up epoch and
    one timed full epoch of rmm's training loop each."""
    train_bench.make_baby(data_dir)
    graph, features = train_bench.load_baby(data_dir)
    size = f"{graph.num_users:,} users, {graph.num_items:,} items, {len(graph.users):,} train pairs"
    train_cfg = TrainConfig(batch_size=train_bench.BATCH_SIZE, seed=train_bench.SEED)
    sampler = BPRSampler(graph)
    rows = []
    for name in ("lightgcn", "freedom"):
        torch.manual_seed(train_bench.SEED)
        case = {"model": name, "impl": "rmm", "cache_dir": str(data_dir / "knn-cache")}
        model = train_bench.build(case, graph, features)[0].to(device)
        # as rmm.train.loop.fit builds it (fused: one pass per parameter)
        optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.learning_rate, fused=True)
        run_epoch(model, optimizer, sampler, train_cfg, 1, device)  # warm-up
        loss, seconds = timed(functools.partial(run_epoch, model, optimizer, sampler, train_cfg, 2, device), device)
        if not math.isfinite(loss):
            raise RuntimeError(f"{name}: epoch loss {loss}")
        steps = math.ceil(len(sampler) / train_cfg.batch_size)
        rows.append(row(f"{name} epoch (float32)", f"{size}; {steps} steps of {train_cfg.batch_size}", seconds,
                        steps / seconds, "steps/s"))
    return rows


def knn_row(items: int, device: str) -> dict[str, Any]:
    """bench/train.py's kNN case, every chunk computed, in its own interpreter."""
    r = train_bench.run_in_subprocess("knn", {"items": items, "chunks": 1, "full": True, "threads": os.cpu_count(),
                                              "device": device})
    peak = f", peak GPU {r['peak_gpu_mib']:,.0f} MiB" if r["peak_gpu_mib"] else ""
    return row("kNN item graph (k=10, cosine, sym)", f"{items:,} items x 384, {r['edges']:,} edges{peak}",
               r["build_s"], items / r["build_s"], "items/s")


# ------------------------------------------------------------------------------------------------ the table


def row(part: str, size: str, seconds: float, rate: float, unit: str, flops: float | None = None,
        peak: float | None = None) -> dict[str, Any]:
    """One table row; ``flops`` is achieved FLOP/s, and MFU its share of ``peak`` when both are known."""
    return {"part": part, "size": size, "seconds": seconds, "rate": rate, "unit": unit, "flops": flops,
            "mfu": flops / peak if flops is not None and peak else None}


def peak_bf16(device: str) -> tuple[str, float | None]:
    """The device's name and dense bf16 peak FLOP/s (None: not in :data:`PEAK_BF16`, or a CPU)."""
    if device != "cuda":
        return f"CPU ({os.cpu_count()} cores)", None
    name = torch.cuda.get_device_name()
    return name, peak_of(name)


def peak_of(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a CUDA device name: the first :data:`PEAK_BF16` fragment in it."""
    return next((peak for fragment, peak in PEAK_BF16 if fragment in device_name), None)


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    """``header``, a blank line and the rows as a markdown table."""
    lines = [header, "", "| part | size | seconds | rate | unit | TFLOP/s | MFU (bf16 peak) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        tflops = f"{r['flops'] / 1e12:.3g}" if r["flops"] is not None else "-"
        mfu = "-" if r["flops"] is None else f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "unknown"
        lines.append(f"| {r['part']} | {r['size']} | {r['seconds']:.3g} | {r['rate']:.4g} | {r['unit']} | {tflops} | "
                     f"{mfu} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every part at toy size on the CPU")
    parser.add_argument("--out", type=Path, help="markdown file the table is appended to (default: "
                        "bench/RESULTS.md; required with --dry-run)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["lvlm", "train", "knn"], help="parts to leave out")
    args = parser.parse_args(argv)
    if args.dry_run and (args.out is None or args.out.resolve() == RESULTS_FILE):
        parser.error("--dry-run needs --out FILE other than bench/RESULTS.md")
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device visible; use --dry-run for the CPU rehearsal")
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    name, peak = peak_bf16(device)
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f}s] {message}", file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []

    def run_part(part: str, measure: Callable[[], list[dict[str, Any]]]) -> None:
        """Measure one part and show its rows at once. A part that raises becomes a FAILED row (with the error)
        and the others still run: one run on a lent GPU must bring back whatever it can."""
        try:
            done = measure()
        except Exception as err:  # noqa: BLE001 (printed with its traceback, recorded in the table)
            traceback.print_exc()
            done = [row(part, f"FAILED: {type(err).__name__}: {err}"[:300], math.nan, math.nan, "-")]
        rows.extend(done)
        progress(markdown(done, f"{part} done:"))

    with tempfile.TemporaryDirectory(prefix="rmm-gpu-bench-") as tmp:
        if "lvlm" not in args.skip:
            run_part("LVLM", lambda: lvlm_rows(build_qwen2_vl(Path(tmp) / "qwen2-vl", qwen2_vl_config(args.dry_run),
                                                              device), sizes, device, peak))
        if "train" not in args.skip:
            if args.dry_run:  # bench/train.py's generator reads its sizes from BABY
                train_bench.BABY.update(TOY_BABY)
            run_part("epochs", lambda: epoch_rows(Path(tmp), device))
        if "knn" not in args.skip:
            run_part("kNN", lambda: [knn_row(sizes.knn_items, device)])
    command = " ".join(["bench/gpu.sh", *sys.argv[1:]])
    header = (f"### bench/gpu.sh on {name}: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n\n"
              f"`{command}` ({time.perf_counter() - started:.0f} s in all); torch {torch.__version__}, "
              f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; bf16 peak "
              f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'}")
    table = markdown(rows, header)
    print(table)
    out = args.out or RESULTS_FILE
    with open(out, "a") as handle:
        handle.write("\n" + table)
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
