"""`ckptstudy-prefetch model=<m> schedule=<s>`: download every hub revision a sweep will load into the
Hugging Face cache, before the sweep, where there is network (e.g. a cluster's login node).

Only what loading needs is fetched (`hubcache.download`, which `checkpoints.prefetch_ahead` uses too:
`snapshot_download` with `allow_patterns`): config.json and generation_config.json, the weights
(`*.safetensors`, or `*.bin` only when the revision has no safetensors) and the tokenizer files. What this
command downloads is the user's: a sweep's `checkpoints.evict` never deletes it. Revisions download in
parallel on a small thread pool. Downloads resume: a revision already complete in the cache is not
contacted again, and an interrupted file resumes from its `.incomplete` blob. Offline (`HF_HUB_OFFLINE=1`)
or with `--check`, nothing is downloaded: it reports which revisions are cached and exits 1 naming the
missing ones. `--branches` downloads nothing either: it lists the hub repo's branches that match the model's
branch-name pattern, as the `steps:` or `branch_tokens:` entry of its yaml (how a suite's step list is completed).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from huggingface_hub import HfApi, constants
from huggingface_hub.utils import disable_progress_bars
from omegaconf import DictConfig

from ckptstudy.config import compose_config
from ckptstudy.model import checkpoints, hubcache
from ckptstudy.model.hubcache import Revision, cache_state
from ckptstudy.progress import is_terminal
from ckptstudy.sweeps import sweep_values, swept_steps, take_override

DEFAULT_WORKERS = 4  # revisions downloaded at once


def revisions_for(cfg: DictConfig, steps: list[int]) -> list[Revision]:
    if cfg.model.source != "hub":
        raise PrefetchError(
            f"model {cfg.model.name} is not a hub model (model.source={cfg.model.source}): nothing to download"
        )
    out = []
    for step in steps:
        source = checkpoints.source_for(cfg.model, step)
        out.append(Revision(checkpoints.run_name(cfg.model), step, source.location, source.revision))
    return out


class PrefetchError(RuntimeError):
    """The request cannot be served (not a hub model, a bad step); the message says why."""


def branch_pattern(template: str, seed) -> re.Pattern:
    """The regular expression of a `model.revision` template: {step} and {tokens} captured, {seed} filled in."""
    fields = {"step": r"(?P<step>\d+)", "tokens": r"(?P<tokens>\d+)", "seed": re.escape(str(seed))}
    parts = re.split(r"\{(step|tokens|seed)\}", template)  # odd items are the field names
    return re.compile("".join(fields[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)))


def yaml_steps(branches: list[str], template: str, seed=None) -> tuple[str, list[str]]:
    """The yaml entry listing the steps of `branches` that match `template` (`branch_tokens: [[step, tokens], ...]`
    when the branch names carry a token count, else `steps: [...]`), sorted by step, and the branches that do not
    match."""
    pattern = branch_pattern(template, seed)
    found, other = {}, []
    for name in branches:
        match = pattern.fullmatch(name)
        if match is None:
            other.append(name)
        else:
            found[int(match["step"])] = int(match["tokens"]) if "tokens" in pattern.groupindex else None
    if "tokens" in pattern.groupindex:
        return "branch_tokens: [" + ", ".join(f"[{s}, {t}]" for s, t in sorted(found.items())) + "]", sorted(other)
    return "steps: [" + ", ".join(str(s) for s in sorted(found)) + "]", sorted(other)


def hub_branches(repo: str) -> list[str]:
    """The branch names of a hub repo (one call; needs network)."""
    return [ref.name for ref in HfApi().list_repo_refs(repo).branches]


def list_branches(cfg: DictConfig, out=print) -> None:
    """Print the configured model's hub branches as its yaml's step list (`yaml_steps`)."""
    if cfg.model.source != "hub":
        raise PrefetchError(f"model {cfg.model.name} is not a hub model (model.source={cfg.model.source}): no branches")
    repo = checkpoints.repo_for(cfg.model)
    branches = hub_branches(repo)
    entry, other = yaml_steps(branches, cfg.model.revision, cfg.model.get("seed"))
    out(f"# {len(branches) - len(other)} branches of {repo} named {cfg.model.revision} (ckptstudy-prefetch --branches)")
    out(entry)
    if other:
        out(f"# {len(other)} other branches: {' '.join(other[:20])}{' ...' if len(other) > 20 else ''}")


def size_text(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.2f} MB"


def names(items: list[Revision]) -> str:
    """Revision names, prefixed with the repo when the items span several repos."""
    several = len({item.repo for item in items}) > 1
    return " ".join(f"{item.repo}@{item.revision}" if several else item.revision for item in items)


def prefetch(items: list[Revision], workers: int = DEFAULT_WORKERS, check_only: bool = False, out=print) -> dict:
    """Report what is cached; download the rest (unless offline or `check_only`). Returns
    {"cached": [...], "downloaded": [...], "missing": [...] (still missing at the end), "failed": {...}}."""
    states = {item: cache_state(item.repo, item.revision) for item in items}
    cached = [item for item in items if states[item].complete]
    missing = [item for item in items if not states[item].complete]
    repos = sorted({item.repo for item in items})
    out(f"{', '.join(repos)}: {len(items)} revision(s); HF cache {constants.HF_HUB_CACHE}")
    several = len(repos) > 1
    label = {item: f"{item.repo}@{item.revision}" if several else item.revision for item in items}
    out(f"cached  {len(cached):4d} ({size_text(sum(states[i].nbytes for i in cached))}): {names(cached) or '-'}")
    out(f"missing {len(missing):4d}: {names(missing) or '-'}")
    for item in missing:
        if states[item].path is not None:
            out(f"  {label[item]}: partly cached, missing {', '.join(states[item].missing)}")
    result = {"cached": cached, "downloaded": [], "missing": missing, "failed": {}}
    if not missing or check_only or checkpoints.hub_offline():
        return result
    if not is_terminal(sys.stderr):
        disable_progress_bars()  # per-file bars from several threads would flood a log file
    out(f"downloading {len(missing)} revision(s) with {workers} thread(s) ...")
    started, total = time.time(), 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(hubcache.download, item): item for item in missing}
        for future in as_completed(futures):
            item = futures[future]
            try:
                done = future.result()
            except Exception as err:
                result["failed"][item] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                out(f"{label[item]}: FAILED {result['failed'][item]}")
                continue
            if not done["state"].complete:
                result["failed"][item] = f"still missing after download: {', '.join(done['state'].missing)}"
                out(f"{label[item]}: FAILED {result['failed'][item]}")
                continue
            total += done["nbytes"]
            result["downloaded"].append(item)
            out(f"{label[item]}: {size_text(done['nbytes'])} in {done['seconds']:.0f} s ({len(done['files'])} files)")
    seconds = max(time.time() - started, 1e-9)
    out(
        f"downloaded {len(result['downloaded'])} revision(s), {size_text(total)} in {seconds:.0f} s "
        f"({total / seconds / 1e6:.1f} MB/s)"
    )
    result["missing"] = [item for item in missing if item not in result["downloaded"]]
    return result


def main(argv: list[str] | None = None) -> None:
    """`ckptstudy-prefetch model=<m> [schedule=<s> | step=<a>,<b>] [model.seed=<k>,...] [overrides]`: download
    every checkpoint of the sweep (of each training seed) into the HF cache (run it where there is network)."""
    parser = argparse.ArgumentParser(prog="ckptstudy-prefetch", description=main.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: model=, schedule= or step=, model.repo= ...")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="revisions downloaded at once")
    parser.add_argument("--check", action="store_true", help="only report what is cached; download nothing")
    parser.add_argument(
        "--branches", action="store_true", help="list the hub repo's branches as the yaml's step list; download nothing"
    )
    args = parser.parse_args(argv)
    step_value, overrides = take_override(args.overrides, "step")
    model_value, overrides = take_override(overrides, "model")
    seed_value, overrides = take_override(overrides, "model.seed")
    choices = [m.strip() for m in model_value.split(",")] if model_value else [None]
    seeds = sweep_values(seed_value) if seed_value else [None]
    if args.branches:
        try:
            for choice in choices:
                chosen = [*([f"model={choice}"] if choice else []), *([f"model.seed={seeds[0]}"] if seeds[0] else [])]
                list_branches(compose_config([*chosen, *overrides]))
        except (PrefetchError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        return
    try:
        items = []
        for choice in choices:
            for seed in seeds:
                chosen = [*([f"model={choice}"] if choice else []), *([f"model.seed={seed}"] if seed else [])]
                cfg = compose_config([*chosen, *overrides], return_hydra_config=True)
                items += revisions_for(cfg, swept_steps(cfg, step_value))
    except (PrefetchError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    result = prefetch(items, args.workers, args.check)
    if result["missing"]:
        if result["failed"]:
            why = "download failed"
        elif args.check:
            why = "--check: not downloaded"
        else:
            why = "offline (HF_HUB_OFFLINE=1): not downloaded"
        print(
            f"missing {len(result['missing'])} revision(s) ({why}): {names(result['missing'])}\n"
            "run `ckptstudy-prefetch` with the same model and schedule where there is network (e.g. a login "
            "node) and share or copy its HF cache here",
            file=sys.stderr,
        )
        sys.exit(1)
    print(f"all {len(items)} revision(s) are in the HF cache: runs can set HF_HUB_OFFLINE=1")


if __name__ == "__main__":
    main()
