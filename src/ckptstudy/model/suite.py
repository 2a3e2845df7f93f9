"""Build the embedded micro suite: a tiny Pythia-like model trained here, with checkpoints.

Pythia weights cannot be downloaded on machines without internet, so the default
study runs on a suite trained on this machine: a GPT-NeoX model with Pythia's
architecture choices (`ckptstudy.model.neox`), its own byte-level BPE tokenizer, trained
deterministically on the Python standard library's sources (`ckptstudy.model.corpus`).
The recipe, its checkpoint steps and its directory are `ckptstudy.model.suite_spec`.

The data follows a curriculum so the suite shows the phenomena the tool measures:
ordinary text first (natural repetition appears early), then mostly sequences made of
a repeated random-token span (a strong copying signal that produces induction heads
within a CPU budget), then back to mostly text. Checkpoints are saved on a Pythia-like
schedule (step 0, powers of two, then evenly spaced) in Hugging Face format, one
directory per step, each loadable with `from_pretrained`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from ckptstudy.config import compose_config
from ckptstudy.model.corpus import load_corpus
from ckptstudy.model.neox import make_neox
from ckptstudy.model.suite_spec import SuiteSpec, spec_from_config, suite_dir
from ckptstudy.progress import progress_bar

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
MANIFEST = "suite.json"


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
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def is_built(spec: SuiteSpec, out_dir: Path) -> bool:
    """True when `out_dir` holds a finished build of exactly this spec."""
    manifest = read_manifest(out_dir)
    return bool(manifest) and manifest.get("spec_hash") == spec.spec_hash()


def build_suite(spec: SuiteSpec, out_dir: str | Path, force: bool = False) -> Path:
    """Train the suite and save its checkpoints under `out_dir/step<N>/`; reuse a finished build.

    The manifest (`suite.json`) is written last, so an interrupted build is redone.
    Deterministic: the global torch RNG is seeded once here, before the corpus, the tokenizer and the
    model are made in that order (the model's initial weights depend on it); batches use their own generator.
    """
    out_dir = Path(out_dir)
    if is_built(spec, out_dir) and not force:
        return out_dir
    start = time.time()
    hf_logging.disable_progress_bar()  # one bar per saved checkpoint would drown the build's own bar in a log
    torch.manual_seed(spec.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)

    texts = load_corpus(spec.text_glob, spec.max_chars)
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    eos = tokenizer.eos_token_id
    stream = torch.tensor([i for t in texts for i in [*tokenizer(t)["input_ids"], eos]], dtype=torch.long)
    n_special = len(tokenizer.all_special_ids)

    model = make_neox(
        vocab_size=len(tokenizer),
        d_model=spec.d_model,
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rotary_pct=spec.rotary_pct,
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
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def ensure_suite(model_cfg) -> Path | None:
    """Build the model's micro suite if it is a suite model and not built yet; its directory."""
    if model_cfg.checkpoints != "suite":
        return None
    spec = spec_from_config(model_cfg)
    directory = suite_dir(model_cfg)
    if not is_built(spec, directory):
        log.info("micro suite %r not built yet: building it under %s", spec.name, directory)
        build_suite(spec, directory)
    return directory


def cli(argv: list[str] | None = None) -> None:
    """`ckptstudy-suite [model=micro] [paths.root=outputs] [--force]`: build a suite model's checkpoints."""
    parser = argparse.ArgumentParser(description=cli.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=micro paths.root=outputs")
    parser.add_argument("--force", action="store_true", help="rebuild even if a build of this spec exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = compose_config(args.overrides)
    if cfg.model.checkpoints != "suite":
        raise SystemExit(f"model={cfg.model.name} is not a suite model (model.checkpoints={cfg.model.checkpoints})")
    spec = spec_from_config(cfg.model)
    directory = suite_dir(cfg.model)
    if is_built(spec, directory) and not args.force:
        print(f"micro suite {spec.name!r} already built at {directory} ({len(spec.checkpoint_steps())} checkpoints)")
        return
    build_suite(spec, directory, force=args.force)
    manifest = read_manifest(directory)
    print(f"built micro suite {spec.name!r} at {directory} in {manifest['build_seconds']} s: steps {manifest['steps']}")
