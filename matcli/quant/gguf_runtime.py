"""Running a GGUF file in llama.cpp (llama-cpp-python, the `llamacpp` extra): for the opt-in
tests and scripts/gguf_results.py, never for writing."""

from __future__ import annotations

from pathlib import Path


def llama_cpp_model(path: Path, n_ctx: int, threads: int = 2):
    """A llama.cpp model of a GGUF file with every position's logits kept, without the extra
    CPU buffer types (AMX / repacked weights): with them, llama-cpp-python 0.3.36 built with
    GGML_NATIVE segfaults in batched evaluation on AMX CPUs for any Q8_0 or Q4_0 file,
    gguf-py's own included (see docs/formats.md)."""
    import llama_cpp

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_cpp.llama_model_default_params = params
    try:
        return llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=threads
        )
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults
