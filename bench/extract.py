"""Extraction throughput of every model-backed extractor kind against the library's own batched loop, same model,
same batch size, same threads, measured in one run.

    .venv/bin/python bench/extract.py                        # MiniLM + tiny random Qwen2-VL on the CPU (offline)
    .venv/bin/python bench/extract.py --kinds sentence --items 4000 --batch-size 128
    .venv/bin/python bench/extract.py --model Qwen/Qwen2-VL-2B-Instruct --device cuda --dtype bfloat16

Per kind (``sentence``: the shipped all-MiniLM-L6-v2; ``lvlm_embed`` and ``lvlm_describe``: ``--model``), rows:

- ``library, batched`` (the baseline): what a script using the library alone does. ``sentence``:
  sentence-transformers ``encode(texts, batch_size)``. ``lvlm_embed``: per batch of ``batch_size`` items in input
  order, the items' image files read (the PNGs the Ray rows read), the processor on the batch (chat template,
  images, padding) and one forward pass, masked mean of the last hidden layer. ``lvlm_describe``: the same
  batches through ``generate`` (greedy, ``max_new_tokens``), decoded, then sentence-transformers ``encode`` of
  all the answers in one call (the description feature is their MiniLM embedding).
- ``library, per item``: the same with batches of one, on the first ``--per-item`` items (context: what a
  one-item-at-a-time script costs).
- ``rmm extractor, one batch``: the extractor class that runs in a Ray actor, handed every item as one batch
  of decoded pixels (no Ray, no image files): length bucketing, model batches of ``batch_size``, status
  bookkeeping.
- ``rmm extract (Ray Data)``: the pipeline as ``rmm extract`` runs it (:func:`extract_features` on a dataset
  folder of ``--items`` synthetic items, a pool of ``--actors`` actors sharing the ``--threads`` CPUs, by default
  one single-thread actor per core, Ray already started), from the
  items file to the consolidated ``matrix.npy``, wall time: it counts the actor's start (worker, imports, model
  load) and Ray Data's work. ``twice the items``: the same on twice as many items (the same ones first).
- ``rmm extract (Ray Data), steady state``: the difference of those two, i.e. what the second half of the items
  cost once the actor runs (the one-off start cancels out), against the warm library loop; a difference of two
  runs whose one-off starts vary by seconds, so noisy unless the items take much longer than that.
- ``rmm extract (Ray Data), once running``: the same once-running pipeline read off one run (the
  ``twice the items`` one): items of the Ray batches after the first quarter (at least one per actor) over the
  time from the last of those to the last part file (:func:`pipelined`); no start-up in it to cancel out.
- ``rmm extract (Ray Data), one actor x N threads, once running``: the same with one actor holding
  every CPU instead (with ``--actors`` > 1): how the pool's shape matters.
  No CPU column for the Ray rows: their work runs in other processes, and Ray Data's per-task CPU times overlap
  (an actor's queued task counts the running one's CPU as well), so their sum measures nothing. The Ray Data
  stats of the last run are printed above the table (per operator: tasks, blocks, times).

Every row takes the best of ``--repeats`` interleaved rounds (in-process rows after a warm-up call). Items/s per
core divides by the threads (Ray: the pool's CPUs). Ratios are against ``library, batched``; >= 1 means rmm is at
least as fast. CPU time (of all threads of the process) is what the work costs whatever the neighbours do, so on
a shared box the CPU ratio is the robust one; wall time is what a user waits on an idle one.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from rmm.config import (  # noqa: E402
    EXTRACTOR_CONFIGS,
    Config,
    ExtractorConfig,
    FeaturesConfig,
    LVLMDescribeConfig,
    OutputConfig,
    RayConfig,
)
from rmm.data.schema import write_dataset  # noqa: E402
from rmm.features.encoders import SentenceEncoder, sentence_text  # noqa: E402
from rmm.features.extractors import get_extractor  # noqa: E402
from rmm.features.lvlm import load_lvlm  # noqa: E402
from rmm.features.prompts import (  # noqa: E402
    build_describe_messages,
    build_messages,
    get_template,
    load_describe_template,
)
from rmm.features.tiny import resolve_model_id  # noqa: E402

WORDS = ("soft cotton baby blanket with a classic stripe pattern machine washable gift for newborns and toddlers "
         "stainless steel bottle keeps drinks cold insulated lid wooden toy train set colourful blocks").split()
KINDS = ("sentence", "lvlm_embed", "lvlm_describe")
BASELINE, PER_ITEM = "library, batched", "library, per item"
CLASS, RAY = "rmm extractor, one batch", "rmm extract (Ray Data)"
RAY_TWICE = "rmm extract (Ray Data), twice the items"
STEADY = "rmm extract (Ray Data), steady state"
PIPELINED = "rmm extract (Ray Data), once running"
ONE_ACTOR = "rmm extract (Ray Data), one actor x {threads} threads, once running"

Batch = dict[str, np.ndarray]
Runner = Callable[[Batch], object]


def make_items(num_items: int, seed: int = 0) -> Batch:
    """Synthetic catalogue items as Ray Data hands them to an actor: titles of 3 words, texts of 5-30 words (about
    120 characters, like real short product texts), drawn images of 40-112 px (raw RGB bytes + shape)."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {key: [] for key in ("item_id", "title", "text", "image", "image_height",
                                                    "image_width", "image_reason")}
    for i in range(num_items):
        size = int(rng.integers(40, 113))
        picture = Image.new("RGB", (size, size), (255, 255, 255))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        ImageDraw.Draw(picture).ellipse((size // 8, size // 8, size - size // 8, size - size // 8), fill=colour)
        columns["item_id"].append(i)
        columns["title"].append(" ".join(rng.choice(WORDS, size=3)))
        columns["text"].append(" ".join(rng.choice(WORDS, size=int(rng.integers(5, 31)))))
        columns["image"].append(np.asarray(picture).tobytes())
        columns["image_height"].append(size)
        columns["image_width"].append(size)
        columns["image_reason"].append("")
    ints = ("item_id", "image_height", "image_width")
    return {key: np.asarray(values, dtype=np.int64 if key in ints else object) for key, values in columns.items()}


def head(batch: Batch, count: int) -> Batch:
    return {key: values[:count] for key, values in batch.items()}


def images(batch: Batch) -> list[Image.Image]:
    """The batch's pictures: read from its files where it has ``image_path`` (what a script over a catalogue on disk
    does, and rmm's pipeline), else from its raw RGB columns."""
    if "image_path" in batch:
        pictures = []
        for path in batch["image_path"]:
            with Image.open(path) as opened:
                pictures.append(opened.convert("RGB"))
        return pictures
    return [Image.fromarray(np.frombuffer(raw, np.uint8).reshape(h, w, 3))
            for raw, h, w in zip(batch["image"], batch["image_height"], batch["image_width"], strict=True)]


def on_disk(batch: Batch, root: Path) -> Batch:
    """``batch`` with its images as the PNG files :func:`write_items` wrote under ``root`` instead of pixels."""
    pixels = ("image", "image_height", "image_width", "image_reason")
    rest = {key: values for key, values in batch.items() if key not in pixels}
    return {**rest, "image_path": np.array([str(root / f"images/{i}.png") for i in batch["item_id"]], dtype=object)}


def chunks(count: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, count, size)]


# ------------------------------------------------------------------------------------------ library baselines

def library_sentence(batch_size: int, device: str) -> Runner:
    """sentence-transformers' own batched loop (it sorts by length and pads per batch itself)."""
    model = SentenceEncoder(None, device=device, batch_size=batch_size).model

    def run(batch: Batch) -> None:
        texts = [sentence_text(title, text) for title, text in zip(batch["title"], batch["text"], strict=True)]
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False)

    return run


def library_embed(model_path: str, batch_size: int, dtype: str, device: str) -> Runner:
    """Batches in input order: processor on the batch (right padding), one forward, masked mean of the last layer."""
    processor, model = load_lvlm(model_path, dtype, device=device)
    template = get_template("default")

    @torch.inference_mode()
    def run(batch: Batch) -> None:
        pictures = images(batch)
        for part in chunks(len(pictures), batch_size):
            prompts = [processor.apply_chat_template(build_messages(template, title, text, True), tokenize=False,
                                                     add_generation_prompt=True)
                       for title, text in zip(batch["title"][part], batch["text"][part], strict=True)]
            processor.tokenizer.padding_side = "right"
            inputs = processor(text=prompts, images=pictures[part], padding=True, return_tensors="pt").to(device)
            hidden = model(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]  # (B, T, H)
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            ((hidden * mask).sum(dim=1) / mask.sum(dim=1)).float().cpu().numpy()

    return run


def library_describe(model_path: str, batch_size: int, max_new_tokens: int, dtype: str, device: str) -> Runner:
    """Batches in input order: processor on the batch (left padding), greedy ``generate``, decode; then
    sentence-transformers ``encode`` of the answers."""
    processor, model = load_lvlm(model_path, dtype, device=device)
    template = load_describe_template("default")
    encoder = SentenceEncoder(None, device=device, batch_size=batch_size).model
    pad = processor.tokenizer.pad_token_id
    generation = {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": None, "top_p": None,
                  "top_k": None, "pad_token_id": pad if pad is not None else processor.tokenizer.eos_token_id}

    @torch.inference_mode()
    def run(batch: Batch) -> None:
        pictures, answers = images(batch), []
        for part in chunks(len(pictures), batch_size):
            prompts = [processor.apply_chat_template(build_describe_messages(template, title, text, True),
                                                     tokenize=False, add_generation_prompt=True)
                       for title, text in zip(batch["title"][part], batch["text"][part], strict=True)]
            processor.tokenizer.padding_side = "left"
            inputs = processor(text=prompts, images=pictures[part], padding=True, return_tensors="pt").to(device)
            output = model.generate(**inputs, **generation)
            answers += processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        encoder.encode([answer.strip() or "-" for answer in answers], batch_size=batch_size,
                       normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    return run


def library_runner(kind: str, args: argparse.Namespace, batch_size: int) -> Runner:
    if kind == "sentence":
        return library_sentence(batch_size, args.device)
    model_path = resolve_model_id(args.model)
    if kind == "lvlm_embed":
        return library_embed(model_path, batch_size, args.dtype, args.device)
    return library_describe(model_path, batch_size, args.max_new_tokens, args.dtype, args.device)


# --------------------------------------------------------------------------------------------------- rmm paths

def extractor_config(kind: str, args: argparse.Namespace, actors: int) -> ExtractorConfig:
    """The extractor the rmm rows run: the bench's batch size, ``actors`` actors sharing ``--threads`` CPUs (and
    the GPU with ``--device cuda``); ``--model``, ``--dtype`` and ``--max-new-tokens`` where the kind has them."""
    cls = EXTRACTOR_CONFIGS[kind]
    model = {"model": None} if kind == "sentence" else {"model": args.model, "dtype": args.dtype}
    decoding = {"max_new_tokens": args.max_new_tokens} if cls is LVLMDescribeConfig else {}
    return cls(name="bench", batch_size=args.batch_size, bucket_window=args.bucket_window,
               num_cpus=args.threads / actors, concurrency=actors,
               num_gpus=1.0 if args.device == "cuda" else 0.0, **model, **decoding)


def write_items(root: Path, batch: Batch) -> None:
    """A dataset folder holding ``batch``'s items (images as PNG) and a one-interaction graph."""
    (root / "images").mkdir(parents=True)
    paths = []
    for item_id, picture in zip(batch["item_id"], images(batch), strict=True):
        paths.append(f"images/{item_id}.png")
        picture.save(root / paths[-1])
    items = pd.DataFrame({"item_id": batch["item_id"], "source_id": [f"s{i}" for i in batch["item_id"]],
                          "title": batch["title"], "text": batch["text"], "image_path": paths})
    write_dataset(root, items, pd.DataFrame({"user_id": [0], "item_id": [0], "timestamp": [1], "split": [0]}),
                  pd.DataFrame({"user_id": [0], "source_id": ["u0"]}), {"name": "bench", "source": "synthetic"})


class RayExtract:
    """Runs ``rmm extract``'s pipeline for one extractor on a prepared dataset folder, in a fresh output each time
    (a finished feature would be skipped), and keeps the Ray Data stats of the last run and the best
    :func:`pipelined` span over all runs."""

    def __init__(self, scratch: Path, batch: Batch, extractor: ExtractorConfig, ray_cfg: RayConfig) -> None:
        self.scratch, self.extractor, self.ray_cfg = scratch, extractor, ray_cfg
        self.data = scratch / f"items-{len(batch['item_id'])}"
        if not self.data.exists():
            write_items(self.data, batch)
        self.runs = 0
        self.stats = ""
        self.pipelined = (0, math.inf)

    def __call__(self, batch: Batch) -> None:
        from rmm.features.pipeline import extract_features

        self.runs += 1
        out = self.scratch / f"out-{self.extractor.kind}-{len(batch['item_id'])}-{self.runs}"
        cfg = Config(features=FeaturesConfig(extractors=(self.extractor,)), output=OutputConfig(dir=str(out)),
                     ray=self.ray_cfg)
        shutil.copytree(self.data, cfg.dataset_dir)
        with _captured("rmm.features.pipeline") as records:
            extract_features(cfg)
        self.stats = "\n".join(r.getMessage() for r in records if r.getMessage().startswith("Ray Data stats"))
        first_output = get_extractor(self.extractor.kind).output_names(self.extractor)[0]
        concurrency = self.extractor.concurrency
        span = pipelined(cfg.feature_root / first_output, concurrency if isinstance(concurrency, int) else 1)
        if span is not None and span[0] / span[1] > self.pipelined[0] / self.pipelined[1]:
            self.pipelined = span
        shutil.rmtree(out)


def pipelined(feature: Path, actors: int) -> tuple[int, float] | None:
    """Items and seconds from the ``skip``-th part file written to the last, ``skip`` the larger of ``actors`` and
    a quarter of the parts: the pipeline once it runs (image decoding, transfers, the model, the sink and Ray
    Data's scheduling between them), without the one-off start (workers, imports, model loads, first batches) and
    the consolidation after. Each Ray batch's rows are written as one part when done, so the parts' times are its
    timeline, once the writer runs: the first writes also wait for the sink's worker to start, which would shorten
    a span measured from the first part. None with fewer than ``skip`` + 2 parts."""
    parts = sorted((path.stat().st_mtime, pq.ParquetFile(path).metadata.num_rows)
                   for path in feature.glob("part-*.parquet"))
    skip = max(actors, len(parts) // 4)
    if len(parts) < skip + 2:
        return None
    return sum(rows for _, rows in parts[skip:]), parts[-1][0] - parts[skip - 1][0]


class _captured:
    """Collects a logger's DEBUG records for the duration of a ``with`` block."""

    def __init__(self, name: str) -> None:
        self.logger, self.records = logging.getLogger(name), []
        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = self.records.append  # type: ignore[method-assign]

    def __enter__(self) -> list[logging.LogRecord]:
        self.level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


# ------------------------------------------------------------------------------------------------------- timing

def best_times(runners: dict[str, tuple[Runner, Batch]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) seconds of each runner on its batch over ``repeats`` rounds that run every runner once, in
    turn (interleaving spreads a busy neighbour's load over all runners alike). CPU: of this process; NaN for a
    :class:`RayExtract`, whose work runs in other processes (Ray Data's per-task CPU times overlap: an actor's
    queued task counts the running one's CPU too, so their sum is no measure)."""
    wall = dict.fromkeys(runners, float("inf"))
    cpu = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, (run, batch) in runners.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(batch)
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = math.nan if isinstance(run, RayExtract) else min(cpu[name], time.process_time() - start_cpu)
    return {name: (wall[name], cpu[name]) for name in runners}


def bench_kind(kind: str, args: argparse.Namespace, scratch: Path, ray_cfg: RayConfig) -> list[tuple]:
    """Rows ``(kind, mode, batch size, items, wall s, items/s, per core, ratio, items per CPU-s, ratio)``."""
    items = make_items(args.items if kind == "sentence" else args.lvlm_items)
    extractor_cfg = extractor_config(kind, args, args.actors)
    baseline = library_runner(kind, args, args.batch_size)
    per_item = library_runner(kind, args, 1)
    extractor = get_extractor(kind)(extractor_cfg)
    ray_run = RayExtract(scratch, items, extractor_cfg, ray_cfg)
    files = on_disk(items, ray_run.data)  # the library loops read the same image files as the pipeline
    baseline(head(files, 4))
    per_item(head(files, 4))
    extractor(head(items, 4))
    runners: dict[str, tuple[Runner, Batch]] = {BASELINE: (baseline, files),
                                                PER_ITEM: (per_item, head(files, args.per_item)),
                                                CLASS: (extractor, items), RAY: (ray_run, items)}
    twice = make_items(2 * len(items["item_id"]))  # the same items first, then as many again
    runners[RAY_TWICE] = (RayExtract(scratch, twice, extractor_cfg, ray_cfg), twice)
    one_actor = ONE_ACTOR.format(threads=args.threads)
    if args.actors > 1:
        runners[one_actor] = (RayExtract(scratch, twice, extractor_config(kind, args, 1), ray_cfg), twice)
    seconds = best_times(runners, args.repeats)
    # the second half of the items alone: the one-off start and the tail of a run cancel out
    seconds[STEADY] = (seconds[RAY_TWICE][0] - seconds[RAY][0], math.nan)
    runners[STEADY] = runners[RAY]
    twice_run = runners[RAY_TWICE][0]
    assert isinstance(twice_run, RayExtract)
    if not twice_run.pipelined[0]:
        raise SystemExit(f"{kind}: fewer than 3 Ray batches in {len(twice['item_id'])} items; the pipelined rate "
                         "needs more items or a smaller --batch-size / --bucket-window")
    count, seconds[PIPELINED] = twice_run.pipelined[0], (twice_run.pipelined[1], math.nan)
    runners[PIPELINED] = (twice_run, head(twice, count))
    if one_actor in runners:  # its whole run was timed; its row is its pipelined rate, as PIPELINED's
        one_actor_run = runners.pop(one_actor)[0]
        assert isinstance(one_actor_run, RayExtract)
        count, seconds[one_actor] = one_actor_run.pipelined[0], (one_actor_run.pipelined[1], math.nan)
        runners[one_actor] = (one_actor_run, head(twice, count))
    print(f"\n<details><summary>Ray Data stats, {kind}</summary>\n\n```\n{ray_run.stats}\n```\n</details>\n",
          flush=True)
    rows = []
    for mode, (_, batch) in runners.items():
        count, (wall, cpu) = len(batch["item_id"]), seconds[mode]
        rows.append((kind, mode, 1 if mode == PER_ITEM else args.batch_size, count, wall, count / wall,
                     count / wall / args.threads, count / cpu))
    base_wall, base_cpu = rows[0][5], rows[0][7]
    return [(*row[:7], row[5] / base_wall, row[7], row[7] / base_cpu) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--model", default="tiny:qwen2-vl", help="the LVLM of lvlm_embed and lvlm_describe")
    parser.add_argument("--items", type=int, default=2000, help="items of the sentence rows")
    parser.add_argument("--lvlm-items", type=int, default=256, help="items of the LVLM rows")
    parser.add_argument("--per-item", type=int, default=64, help="items of the per-item rows")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bucket-window", type=int, default=4, help="model batches per Ray batch")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="float32", help="LVLM weights (bfloat16 on a GPU)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the library rows; CPUs of the Ray pool")
    parser.add_argument("--actors", type=int, default=None,
                        help="actors of the Ray pool, each with threads/actors CPUs and torch threads (default: "
                             "one per thread); with more than one, a row with one actor holding every CPU too")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; the best counts")
    args = parser.parse_args()
    args.actors = args.actors or args.threads
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from rmm.cluster import init_ray

    ray_cfg = RayConfig(num_cpus=args.threads, num_gpus=1 if args.device == "cuda" else 0, dashboard=False)
    start = time.perf_counter()
    init_ray(ray_cfg)
    ray_start = time.perf_counter() - start
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="rmm-bench-extract-") as scratch:
        for kind in args.kinds:
            rows += bench_kind(kind, args, Path(scratch), ray_cfg)
    print(f"\nsentence model all-MiniLM-L6-v2 ({args.items} items), LVLM {args.model} ({args.lvlm_items} items), "
          f"batch size {args.batch_size}, bucket window {args.bucket_window}, describe max_new_tokens "
          f"{args.max_new_tokens}, {args.dtype} on {args.device}, {args.threads} torch threads per library row (Ray: "
          f"{args.actors} actor(s) of {args.threads / args.actors:g} CPUs and torch threads each); Ray start-up "
          f"{ray_start:.1f} s, not counted")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"Python {platform.python_version()}; load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| kind | mode | batch | items | wall s | items/s | items/s per core | vs library | items per CPU-s "
          "| vs library |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, mode, batch_size, count, wall, rate, per_core, ratio, per_cpu, cpu_ratio in rows:
        cpu = f"{per_cpu:.1f} | {cpu_ratio:.2f}x" if math.isfinite(per_cpu) else "– | –"
        print(f"| {kind} | {mode} | {batch_size} | {count} | {wall:.2f} | {rate:.1f} | {per_core:.1f} | {ratio:.2f}x | "
              f"{cpu} |")


if __name__ == "__main__":
    main()
