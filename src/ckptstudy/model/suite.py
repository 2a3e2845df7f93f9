"""Build the embedded micro suite: a tiny Pythia-like model trained here, with checkpoints.

Pythia weights cannot be downloaded on machines without internet, so the default
study runs on a suite trained on this machine: a GPT-NeoX model with Pythia's
architecture choices (`ckptstudy.model.neox`; the recipe's `arch` builds another family with
`ckptstudy.model.build`), its own byte-level BPE tokenizer, trained
deterministically on the Python standard library's sources (`ckptstudy.model.corpus`).
The recipe, its checkpoint steps and its directory are `ckptstudy.model.suite_spec`.

Only `make suite` / `ckptstudy-suite` (and `ckptstudy-refine`, before it launches jobs) build a suite, never
a job. A build trains into a hidden staging directory beside its target, writes the manifest last and
renames the staging directory into place, so a killed build never leaves a directory that looks built;
builders of one directory take turns on a file lock, and the second finds the first one's build.

The data follows a curriculum so the suite shows the phenomena the tool measures:
ordinary text first (natural repetition appears early), then mostly sequences made of
a repeated random-token span (a strong copying signal that produces induction heads
within a CPU budget), then back to mostly text. Checkpoints are saved on a Pythia-like
schedule (step 0, powers of two, then evenly spaced) in Hugging Face format, one
directory per step, each loadable with `from_pretrained`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from ckptstudy.config import compose_config
from ckptstudy.model.build import make_model
from ckptstudy.model.corpus import load_corpus
from ckptstudy.model.suite_spec import (
    MANIFEST,
    SUITE_DIR_ENV,
    SuiteSpec,
    build_problem,
    is_built,
    read_manifest,
    spec_from_config,
    suite_dir,
)
from ckptstudy.progress import progress_bar

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer in Pythia's conventions (`<|endoftext|>` = id 0 = BOS/EOS)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )


class BatchSampler:
    """Seeded batches mixing windows of the text stream and repeated random spans."""

    def __init__(self, spec: SuiteSpec, stream: torch.Tensor, vocab_size: int, n_special: int):
        self.spec = spec
        self.stream = stream
        self.low, self.high = n_special, vocab_size
        self.gen = torch.Generator().manual_seed(spec.seed)

    def repeated_span_row(self, natural: bool) -> torch.Tensor:
        s = self.spec
        span = int(torch.randint(s.span_min, s.span_max + 1, (1,), generator=self.gen))
        ids = self.text_row(span) if natural else torch.randint(self.low, self.high, (span,), generator=self.gen)
        return ids.repeat(s.seq_len // span + 1)[: s.seq_len]

    def text_row(self, length: int | None = None) -> torch.Tensor:
        length = length or self.spec.seq_len
        start = int(torch.randint(0, len(self.stream) - length, (1,), generator=self.gen))
        return self.stream[start : start + length]

    def batch(self, step: int) -> torch.Tensor:
        repeat_share, natural_share = self.spec.phase(step)
        is_repeat = (torch.rand(self.spec.batch_size, generator=self.gen) < repeat_share).tolist()
        # the natural/random draw only happens when natural spans are on, so phases without them
        # consume the generator exactly as before (their batches do not change)
        is_natural = [
            bool(natural_share) and float(torch.rand(1, generator=self.gen)) < natural_share for _ in is_repeat
        ]
        rows = [self.repeated_span_row(n) if r else self.text_row() for r, n in zip(is_repeat, is_natural)]
        return torch.stack(rows)


def save_checkpoint(model, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


class SuiteExistsError(RuntimeError):
    """The target directory holds something that is not a build of this recipe: never replaced silently."""


def _sibling(directory: Path, kind: str) -> Path:
    """A hidden path beside `directory` (same filesystem: a rename into place is atomic)."""
    return directory.parent / f".{directory.name}.{kind}-{os.getpid()}"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the lock of `directory` (a file beside it), saying so when another process holds it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory.parent / f".{directory.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is building or adopting %s: waiting for it (lock %s)", directory, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _check_replaceable(spec: SuiteSpec, directory: Path, force: bool) -> None:
    """Refuse to replace a directory that holds another recipe's build or files that are not a build, unless
    `force` (an unfinished build of this recipe, an empty directory or a dangling link is replaced)."""
    if force or not directory.exists():  # a dangling link does not exist either
        return
    manifest = read_manifest(directory)
    if manifest is not None and manifest.get("spec_hash") == spec.spec_hash():
        return
    if manifest is None and directory.is_dir() and not any(directory.iterdir()):
        return
    raise SuiteExistsError(
        f"not building the {spec.name!r} suite into {directory}: {build_problem(spec, directory)}. Point "
        f"paths.suite (or {SUITE_DIR_ENV}) at another directory (the default, under the user's cache, is keyed "
        "by the recipe), or pass --force to replace it"
    )


def _move_into_place(staging: Path, directory: Path) -> None:
    """Replace `directory` by `staging`. A link is removed, never what it points to."""
    old = None
    if directory.is_symlink() or directory.is_file():
        directory.unlink()
    elif directory.exists():
        old = _sibling(directory, "old")
        directory.rename(old)
    staging.rename(directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(directory: Path) -> None:
    """Staging and replaced directories of killed builds (called holding the lock: nobody else is building)."""
    for kind in ("building", "old", "link"):
        for path in directory.parent.glob(f".{directory.name}.{kind}-*"):
            if path.is_symlink() or path.is_file():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)


def build_suite(spec: SuiteSpec, out_dir: str | Path, force: bool = False) -> Path:
    """Train the suite and save its checkpoints under `out_dir/step<N>/`; reuse a finished build.

    Atomic and locked: training goes to a staging directory beside `out_dir` that is renamed into place once
    its manifest is written; a second builder waits on the lock and then finds the build done. A directory
    that holds another recipe's build or files that are not a build is refused (SuiteExistsError) unless
    `force`. Deterministic: the global torch RNG is seeded once, before the corpus, the tokenizer and the model
    are made in that order (the model's initial weights depend on it); batches use their own generator.
    """
    out_dir = Path(out_dir)
    if is_built(spec, out_dir) and not force:
        return out_dir
    with _locked(out_dir):
        if is_built(spec, out_dir) and not force:
            log.info("micro suite %r was built at %s by another builder meanwhile", spec.name, out_dir)
            return out_dir
        _check_replaceable(spec, out_dir, force)
        _remove_leftovers(out_dir)
        staging = _sibling(out_dir, "building")
        try:
            _train(spec, staging)
            _move_into_place(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _train(spec: SuiteSpec, out_dir: Path) -> None:
    """Train the suite into `out_dir` (a fresh directory); the manifest is written last."""
    start = time.time()
    hf_logging.disable_progress_bar()  # one bar per saved checkpoint would drown the build's own bar in a log
    torch.manual_seed(spec.seed)
    out_dir.mkdir(parents=True)

    texts = load_corpus(spec.text_glob, spec.max_chars)
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    eos = tokenizer.eos_token_id
    stream = torch.tensor([i for t in texts for i in [*tokenizer(t)["input_ids"], eos]], dtype=torch.long)
    n_special = len(tokenizer.all_special_ids)

    model = make_model(
        spec.arch,
        len(tokenizer),
        spec.d_model,
        spec.n_layers,
        spec.n_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rotary_pct=spec.rotary_pct,
        d_ff=spec.d_ff,
        attn_implementation="eager",  # as every build of a recipe trained: the kernel's sums shape the weights
    )
    sampler = BatchSampler(spec, stream, len(tokenizer), n_special)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / spec.warmup_steps))
    save_at = set(spec.checkpoint_steps())

    model.train()
    bar = progress_bar(range(spec.total_steps + 1), desc=f"building micro suite {spec.name!r}", unit="step")
    for step in bar:
        if step in save_at:
            save_checkpoint(model, tokenizer, out_dir / f"step{step}")
        if step == spec.total_steps:
            break
        ids = sampler.batch(step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.2f}", repeat=spec.repeat_share(step))

    manifest = {
        "name": spec.name,
        "spec_hash": spec.spec_hash(),
        "spec": asdict(spec),
        "steps": spec.checkpoint_steps(),
        "train_tokens": int(stream.numel()),
        "build_seconds": round(time.time() - start, 1),
        # the recipe does not hold these, yet the weights depend on them (NOTES.md): recorded, not keyed
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))


def adopt_suite(spec: SuiteSpec, source: str | Path, out_dir: str | Path) -> Path:
    """Make `out_dir` a link to `source`, a finished build of `spec` made elsewhere (e.g. another clone's
    `outputs/suite/micro`), instead of training it again. Nothing is copied or written into `source`.

    Raises ValueError when `source` is not a finished build of `spec`, SuiteExistsError when `out_dir` holds
    something else than an empty directory, a dangling link or an unfinished build of this recipe."""
    source, out_dir = Path(source).resolve(), Path(out_dir)
    problem = build_problem(spec, source)
    if problem:
        raise ValueError(f"cannot adopt {source} as the {spec.name!r} suite: {problem}")
    if out_dir.resolve() == source or is_built(spec, out_dir):
        return out_dir  # before the lock: a built suite's directory (maybe another clone's) is never written to
    with _locked(out_dir):
        if is_built(spec, out_dir):
            return out_dir
        _check_replaceable(spec, out_dir, force=False)
        _remove_leftovers(out_dir)
        link = _sibling(out_dir, "link")
        link.symlink_to(source, target_is_directory=True)
        if out_dir.is_dir() and not out_dir.is_symlink():
            shutil.rmtree(out_dir)  # an empty directory or an unfinished build of this recipe
        os.replace(link, out_dir)
    return out_dir


def ensure_suite(model_cfg, legacy_root: str | Path | None = None) -> Path | None:
    """Make a suite model's suite available at its directory (`paths.suite`); its directory (None for a model
    that is not a suite). A finished build there is used as it is; else a finished build of the same recipe
    at the location of earlier versions, `<legacy_root>/suite/<name>`, is adopted (linked); else it is built
    (minutes). For `make suite` and the tools that prepare a sweep, never for a job."""
    if model_cfg.checkpoints != "suite":
        return None
    spec = spec_from_config(model_cfg)
    directory = suite_dir(model_cfg)
    if is_built(spec, directory):
        return directory
    legacy = Path(legacy_root) / "suite" / spec.name if legacy_root is not None else None
    if legacy is not None and is_built(spec, legacy) and legacy.resolve() != directory.resolve():
        log.info("micro suite %r: adopting the finished build at %s (linked from %s)", spec.name, legacy, directory)
        return adopt_suite(spec, legacy, directory)
    log.info("micro suite %r not built at %s: building it (about 5 minutes on 2 cores)", spec.name, directory)
    return build_suite(spec, directory)


def cli(argv: list[str] | None = None) -> None:
    """`ckptstudy-suite [overrides] [--where | --adopt DIR | --force]`: build a suite model's checkpoints in
    its directory (`paths.suite`: $CKPTSTUDY_SUITE_DIR, else the user's cache keyed by the recipe hash)."""
    parser = argparse.ArgumentParser(description=cli.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=micro paths.suite=/data/micro")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--force", action="store_true", help="rebuild even if a build of this recipe exists")
    action.add_argument("--where", action="store_true", help="print the directory; exit 1 when it is not built")
    action.add_argument("--adopt", metavar="DIR", help="link a finished build of this recipe made elsewhere")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = compose_config(args.overrides, check=False)  # builds a recipe: probe and metric values do not matter
    if cfg.model.checkpoints != "suite":
        kind = getattr(cfg.model.checkpoints, "value", cfg.model.checkpoints)
        message = f"model={cfg.model.name} is not a suite model (model.checkpoints={kind})"
        if args.where or args.adopt or args.force:
            raise SystemExit(f"error: {message}")
        print(f"{message}: nothing to build")  # `make run ARGS=model=pythia-160m` builds nothing
        return
    spec = spec_from_config(cfg.model)
    directory = suite_dir(cfg.model)
    problem = build_problem(spec, directory)
    if args.where:
        print(f"{directory}" + (f"  (not built: {problem})" if problem else ""))
        sys.exit(1 if problem else 0)
    if problem is None and not args.force:
        steps = len(spec.checkpoint_steps())
        print(f"micro suite {spec.name!r} already built at {directory} ({steps} checkpoints)")
        return
    try:
        if args.adopt:
            adopt_suite(spec, args.adopt, directory)
            print(f"micro suite {spec.name!r}: {directory} -> {Path(args.adopt).resolve()} (adopted, not copied)")
            return
        if args.force:
            build_suite(spec, directory, force=True)
        else:
            ensure_suite(cfg.model, legacy_root=cfg.paths.root)
    except (SuiteExistsError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    manifest = read_manifest(directory) or {}
    how = f"-> {directory.resolve()} (adopted)" if directory.is_symlink() else f"in {manifest['build_seconds']} s"
    print(f"micro suite {spec.name!r} ready at {directory} {how}: steps {manifest.get('steps')}")
