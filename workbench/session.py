"""Kernel-side model sessions: load with memory limits or a device map, report memory, unload.

``load()`` resolves what the user named (catalog short name, hub id, local directory), checks the
request before touching any weights (dtype, quantization, budgets, device map), plans placement
(:mod:`workbench.placement`), loads with transformers' native InternVL classes, attaches an
adapter if asked, and registers the session under a name. Several sessions can be loaded at once;
``unload()`` drops every reference and returns the memory.
"""

from __future__ import annotations

import gc
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import catalog, placement
from .catalog import ModelSpec
from .errors import EnvironmentProblem, ModelNotFoundError, PlacementError, UserInputError

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
ATTN_IMPLS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")

_sessions: dict[str, "Session"] = {}
_lock = threading.Lock()
_generation_executor = None


def run_in_generation_thread(fn):
    """Run ``fn`` on the process's one generation thread; returns a Future.

    Every ``generate`` call runs on the same thread: on a GPU transformers compiles the static-cache
    decode step into CUDA graphs, and torch keeps their bookkeeping in the thread that first used
    them. A fresh thread per answer, or one per session, fails there (seen on the H100 with
    bench/gpu_smoke.py). Answers of different sessions therefore take turns."""
    global _generation_executor
    from concurrent.futures import ThreadPoolExecutor

    with _lock:
        if _generation_executor is None:
            _generation_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-generate")
    return _generation_executor.submit(fn)


@dataclass
class Session:
    name: str
    model: torch.nn.Module
    processor: object
    spec: ModelSpec | None
    source: str  # what the user passed
    path: Path  # the directory the weights came from
    dtype: torch.dtype
    device_map: dict | None
    plan: placement.Plan | None = None
    adapter: str | None = None
    info: dict = field(default_factory=dict)
    decoder: object = field(default=None, repr=False)  # workbench.decode.GraphDecoder, made on first chat
    compile: bool = False  # compile the chat's prefill and decode step (workbench.decode)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def input_device(self) -> torch.device:
        """Where inputs go: the device of the token embeddings (and vision tower)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def max_tiles(self) -> int:
        if self.spec:
            return self.spec.max_tiles
        return int(getattr(self.processor.image_processor, "max_patches", 12))

    def chat(self, **kwargs):
        """A new :class:`workbench.chat.Conversation` on this session."""
        from .chat import Conversation

        return Conversation(self, **kwargs)

    def unload(self) -> None:
        unload(self.name)

    def __repr__(self) -> str:  # the dataclass default would print the whole module tree
        where = "cpu" if self.device_map is None else "+".join(sorted({str(v) for v in self.device_map.values()}))
        extra = f", adapter={self.adapter!r}" if self.adapter else ""
        return (f"Session({self.name!r}, model={self.source!r}, dtype={str(self.dtype).replace('torch.', '')}, "
                f"device={where}{extra})")


# ---------------------------------------------------------------------------------------------
# Resolving what the user named


def resolve(model: str | os.PathLike | None) -> tuple[Path | str, ModelSpec | None]:
    """A local directory (or a hub id to download) and the catalog spec, if any."""
    if model is None:
        model = catalog.DEFAULT_MODEL
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{text} is a file; pass the model's directory (the one with config.json).")
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{text} is not a model directory: it has no config.json. "
                                     "Pass the folder that holds config.json and the weights.")
        from . import convert

        if convert.is_original(path):  # remote-code layout: converted once, cached, then loaded natively
            return convert.ensure_converted(path), _spec_from_config(path)
        return path, _spec_from_config(path)
    spec = catalog.lookup(text)
    if spec and spec.hub_id is None:  # built by the project
        from . import demo, tiny

        return (demo.ensure_built() if spec.name == "demo" else tiny.ensure_built()), spec
    if spec:
        return spec.hub_id, spec
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        return text, None  # a hub id outside the catalog
    catalog.get(text)  # raises with suggestions
    raise ModelNotFoundError(f"Cannot resolve model {text!r}.")


def _spec_from_config(path: Path) -> ModelSpec | None:
    for built in ("demo", "tiny"):  # the project's own models, by folder name
        if path.name.startswith(built):
            return catalog.CATALOG[built]
    try:
        name = json.loads((path / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, json.JSONDecodeError):
        return None
    return catalog.lookup(name) if name else None


def _download(hub_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id))
    except Exception as exc:  # offline, unknown repo, gated repo, no network: all end the same way for the user
        raise ModelNotFoundError(
            f"Could not get {hub_id!r} from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}). "
            f"On a machine with access run:  huggingface-cli download {hub_id} --local-dir DIR  "
            "then copy DIR here and pass its path instead of the hub id."
        ) from exc


def _check_format(path: Path, source: str) -> dict:
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelNotFoundError(f"{path / 'config.json'} is not valid JSON ({exc}).") from exc
    archs = config.get("architectures") or []
    if "InternVLChatModel" in archs or config.get("model_type") == "internvl_chat":
        raise ModelNotFoundError(
            f"{source} is an original-format (remote-code) InternVL checkpoint (InternVLChatModel) that was "
            "not converted: run 'workbench convert SRC DST' and load DST."
        )
    if config.get("model_type") != "internvl":
        raise ModelNotFoundError(
            f"{source} holds a {config.get('model_type', 'unknown')!r} model, not an InternVL model "
            "(config.json model_type should be 'internvl')."
        )
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not has_weights:
        raise ModelNotFoundError(f"{source} has a config.json but no weights (*.safetensors). "
                                 "The download may be incomplete: fetch it again.")
    return config


# ---------------------------------------------------------------------------------------------
# Loading


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def load(model: str | os.PathLike | None = None, *, dtype: str | torch.dtype | None = None,
         max_memory=None, device_map=None, attn_implementation: str | None = None,
         quantization: str | None = None, adapter: str | os.PathLike | None = None,
         name: str | None = None, headroom: placement.Headroom = placement.Headroom(),
         compile: bool = False) -> Session:
    """Load a model into a named session. See the module docstring; every argument is checked
    before weights are read. ``compile=True`` (one CUDA device) compiles the chat's decode step
    before its CUDA graph is captured (about 1.6x the tokens/s) and its prefill (the first token
    sooner), paid for once by the first answers (one to three minutes for a 2B model on an H200,
    bench/README.md)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    # 1. Check the request.
    torch_dtype = _dtype(dtype)
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLS:
        raise UserInputError(f"Unknown attention implementation {attn_implementation!r}: use one of {', '.join(ATTN_IMPLS)}.")
    if max_memory is not None and device_map not in (None, "auto"):
        raise UserInputError("Give either max_memory (the workbench plans placement) or an explicit device_map, not both.")
    gpus = gpu_count()
    if max_memory is not None:
        budgets = placement.parse_budgets(max_memory)
        if not gpus:
            raise PlacementError(f"max_memory names {len(budgets)} GPU(s) but no GPU is visible here. "
                                 "Drop max_memory to run on the CPU, or run where CUDA GPUs are visible.")
        missing = [g for g in budgets if g >= gpus]
        if missing:
            raise PlacementError(f"max_memory names GPU(s) {missing}, but only {gpus} GPU(s) are visible (0–{gpus - 1}). "
                                 "Give one budget per visible GPU.")
    explicit_map = placement.read_device_map(device_map) if device_map is not None else None
    if isinstance(explicit_map, dict):
        placement.check_device_map(explicit_map, gpus)
    if quantization not in (None, "int8", "4bit"):
        raise UserInputError(f"quantization must be None, 'int8' or '4bit', not {quantization!r}.")
    if quantization and not gpus:
        raise EnvironmentProblem(f"{quantization} loading uses bitsandbytes, which needs a CUDA GPU; none is visible. "
                                 "Load without quantization on the CPU.")
    named = catalog.lookup(str(model)) if model is not None and not Path(str(model)).expanduser().exists() else None
    if named and named.quantized and not gpus:
        raise EnvironmentProblem(f"{named.name} stores {named.quantized} weights, which load only on a CUDA GPU with "
                                 f"bitsandbytes; none is visible here. Use the unquantized model on the CPU.")
    with _lock:
        session_name = name or _free_name(str(model or catalog.DEFAULT_MODEL))
        if session_name in _sessions:
            raise UserInputError(f"A session named {session_name!r} is already loaded. Unload it first or pick another name.")

    # 2. Find the files.
    where, spec = resolve(model)
    source = str(model or catalog.DEFAULT_MODEL)
    path = where if isinstance(where, Path) else _download(where)
    from . import convert

    if convert.is_original(path):  # a hub download in the remote-code layout: converted once, cached
        path = convert.ensure_converted(path)
    config = _check_format(path, source)
    stored = (spec.quantized if spec else None) or convert.quantization(path)
    if stored == "int8" and not quantization:
        if not gpus:
            raise EnvironmentProblem(
                f"{source} is the int8 checkpoint: it loads in 8 bit with bitsandbytes, which needs a CUDA GPU, and "
                "none is visible here. On the CPU use the 16-bit model instead (e.g. internvl-chat-v1_5).")
        quantization = "int8"
        torch_dtype = torch_dtype or torch.float16  # the converted weights' dtype: bitsandbytes gets the stored rows back
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if gpus else torch.float32

    # 3. Plan placement.
    plan = None
    final_map = None
    if gpus:
        if isinstance(explicit_map, dict):
            final_map = explicit_map
        elif max_memory is not None or explicit_map == "auto":
            budgets = max_memory if max_memory is not None else _free_memory_budgets()
            plan = placement.plan(_meta_model(config), budgets, dtype=torch_dtype, headroom=headroom)
            final_map = plan.device_map
        elif explicit_map is not None:
            final_map = explicit_map
        else:
            final_map = {"": 0}
    elif explicit_map not in (None, "cpu") and not (isinstance(explicit_map, dict) and set(explicit_map.values()) <= {"cpu"}):
        raise PlacementError("The device map places modules on a GPU but none is visible here. "
                             "Run where CUDA GPUs are visible, or drop device_map to run on the CPU.")

    # 4. Load.
    kwargs = dict(dtype=torch_dtype)
    if final_map is not None:
        kwargs["device_map"] = final_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization:
        kwargs["quantization_config"] = _quant_config(quantization)
    net = AutoModelForImageTextToText.from_pretrained(path, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(path)
    if adapter is not None:
        net = _attach_adapter(net, adapter)
    session = Session(session_name, net, processor, spec, source, path, torch_dtype,
                      final_map if isinstance(final_map, dict) else None, plan, str(adapter) if adapter else None,
                      compile=compile)
    with _lock:
        _sessions[session_name] = session
    return session


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return None
    if key not in DTYPES:
        raise UserInputError(f"Unknown dtype {dtype!r}: use bf16, fp16 or fp32.")
    return DTYPES[key]


def _free_name(base: str) -> str:
    stem = Path(base).name or base
    name, i = stem, 2
    while name in _sessions:
        name, i = f"{stem}-{i}", i + 1
    return name


def _meta_model(config_dict: dict):
    from transformers import AutoConfig, InternVLForConditionalGeneration

    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        return InternVLForConditionalGeneration(config)


def _free_memory_budgets() -> dict[int, int]:
    return {i: torch.cuda.mem_get_info(i)[0] for i in range(gpu_count())}


def _quant_config(kind: str):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise EnvironmentProblem(f"{kind} loading needs bitsandbytes: pip install bitsandbytes.") from exc
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=KEEP_UNQUANTIZED)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                              llm_int8_skip_modules=KEEP_UNQUANTIZED)


# Quantized loading quantizes the language model only. Full module paths: transformers 5 matches
# these from the start of a module's name (or as its suffix), so a bare "vision_tower" would not
# keep "model.vision_tower.…" in 16 bit (seen on the GPU: the tower came back int8).
KEEP_UNQUANTIZED = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


def _attach_adapter(net, adapter):
    path = Path(str(adapter)).expanduser()
    if not (path / "adapter_config.json").exists():
        raise UserInputError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json).")
    from peft import PeftModel

    return PeftModel.from_pretrained(net, str(path)).eval()


# ---------------------------------------------------------------------------------------------
# The registry


def sessions() -> dict[str, Session]:
    """Loaded sessions by name."""
    with _lock:
        return dict(_sessions)


def get(name: str | None = None) -> Session:
    """A loaded session by name; with no name, the only (or most recent) one."""
    with _lock:
        if name is None:
            if not _sessions:
                raise UserInputError("No model is loaded. Call workbench.load() first.")
            return list(_sessions.values())[-1]
        if name not in _sessions:
            raise UserInputError(f"No session named {name!r}. Loaded: {', '.join(_sessions) or 'none'}.")
        return _sessions[name]


def unload(name: str | Session | None = None) -> None:
    """Drop a session (or all, with ``name="*"``) and give its memory back."""
    with _lock:
        if name == "*":
            names = list(_sessions)
        else:
            key = name.name if isinstance(name, Session) else name
            if key is None:
                names = list(_sessions)[-1:]
            elif key not in _sessions:
                raise UserInputError(f"No session named {key!r}. Loaded: {', '.join(_sessions) or 'none'}.")
            else:
                names = [key]
        for n in names:
            s = _sessions.pop(n)
            s.model = None  # type: ignore[assignment]
            s.processor = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class DeviceMemory:
    device: str
    used: int  # bytes this process holds there (GPU: allocated by torch; CPU: resident set)
    reserved: int  # GPU: held by torch's caching allocator; CPU: same as used
    total: int

    def __str__(self) -> str:
        return f"{self.device}: {placement.gib(self.used)} used / {placement.gib(self.total)}"


def memory_report() -> list[DeviceMemory]:
    """Memory per device: each visible GPU, then this process on the CPU."""
    import psutil

    rows = []
    for i in range(gpu_count()):
        free, total = torch.cuda.mem_get_info(i)
        rows.append(DeviceMemory(f"cuda:{i}", torch.cuda.memory_allocated(i), torch.cuda.memory_reserved(i), total))
    rss = psutil.Process().memory_info().rss
    rows.append(DeviceMemory("cpu", rss, rss, psutil.virtual_memory().total))
    return rows
