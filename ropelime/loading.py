"""Loading a surrogate: resolve its name (catalogue, directory, GGUF file, hub id), device and compute
precision, and return the model and tokenizer ready for `ropelime.surrogate.Surrogate`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ropelime import catalogue, settings
from ropelime.catalogue import EMBEDDED, PromptFormat, load_gguf
from ropelime.errors import SurrogateError

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "mixed", "bfloat16")
"""float32; mixed: matrix products in bfloat16 (autocast; linear weights stored in bfloat16), float32 embeddings,
norms and residual stream; bfloat16."""
DEFAULT_PRECISION = "auto"
"""mixed where bf16 is native, else float32: mixed changes attributions by less than their bootstrap interval
(docs/EVALUATION.md), for about half the time."""


def resolve_device(device: str | None) -> torch.device:
    """The device asked for (or $ROPELIME_DEVICE); else cuda when available, else cpu."""
    device = device or settings.device()
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The compute precision: as asked (or $ROPELIME_DTYPE); 'auto' is 'mixed' where the hardware runs
    bfloat16 natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), else float32."""
    precision = precision or settings.dtype() or DEFAULT_PRECISION
    if precision not in (*PRECISIONS, "auto"):
        raise SurrogateError(f"unknown dtype {precision!r}: give one of {', '.join(PRECISIONS)} or 'auto'.")
    native = native_bf16(device)
    if precision == "auto":
        return "mixed" if native else "float32"
    if precision != "float32" and not native:
        log.warning("%s precision on %s without native bfloat16 is emulated and several times slower than "
                    "float32; use ROPELIME_DTYPE=auto (or float32) on this hardware", precision, device)
    return precision


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 matrix products natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def load_model(name: str | None = None, *, device: str | None = None, dtype: str | None = None
               ) -> tuple[torch.nn.Module, object, str, torch.device, str, PromptFormat | None]:
    """Load a catalogued surrogate by name (None: $ROPELIME_SURROGATE, else the embedded default), a local
    directory, a GGUF file or a hub id.

    `dtype` is the compute precision ('float32', 'mixed', 'bfloat16' or 'auto'; default $ROPELIME_DTYPE
    or DEFAULT_PRECISION). Returns the model (on its device; with 'mixed' possibly in its checkpoint's precision), the tokenizer,
    the surrogate's name, the device, the precision and the catalogue's prompt format (None when not catalogued).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = name or settings.surrogate() or EMBEDDED
    torch_device = resolve_device(device)
    precision = resolve_precision(dtype, torch_device)
    known = catalogue.entry(name)
    hub_id = known.hub_id if known else None
    path = Path(name).expanduser()
    # mixed: load a checkpoint in the precision it is stored in; `Surrogate` widens all but the linear weights
    stored = "auto" if precision == "mixed" else torch.float32
    try:
        if known and not hub_id:
            path = catalogue.prepare(known)
        if path.suffix == ".gguf":
            if not path.is_file():
                raise SurrogateError(f"GGUF file {path} does not exist.")
            tokenizer, model = load_gguf(path)
        elif path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=stored)
        elif hub_id or (name.count("/") == 1 and not name.startswith((".", "/", "~"))):
            hub_id = hub_id or name  # a hub model the user named: it downloads
            tokenizer = AutoTokenizer.from_pretrained(hub_id)
            model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=stored)
        else:
            raise SurrogateError(
                f"unknown surrogate {name!r}: give a catalogued name ({', '.join(catalogue.CATALOGUE)}; "
                f"see 'ropelime models'), a model directory, a .gguf file or a Hugging Face hub id (owner/name)."
            )
    except SurrogateError:
        raise
    except (OSError, ValueError, KeyError) as error:
        if hub_id:
            raise SurrogateError(f"could not load {name!r} from the Hugging Face hub ({hub_id}): "
                                 f"{str(error).splitlines()[0]} — it downloads on first use, so connect to the "
                                 "internet (and accept its licence on the hub if it is gated), or pick an "
                                 "installed surrogate (ropelime models).") from error
        raise SurrogateError(f"could not load surrogate {name!r}: {str(error).splitlines()[0]}") from error
    model = model.to(torch_device, torch.bfloat16) if precision == "bfloat16" else model.to(torch_device)
    return (model, tokenizer, known.name if known else name, torch_device, precision,
            known.prompt_format if known else None)
