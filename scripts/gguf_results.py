"""docs/results.md, "GGUF": SmolLM2-135M int8/int4 GGUF files run by llama.cpp next to the same
slices as compressed-tensors folders evaluated by transformers (`matcli eval`).

    python scripts/gguf_results.py --model /work/main/assets/smollm2-135m \
        --data /work/main/assets/text/wiki_heldout.txt --work /tmp/gguf-results

Every artifact is made by the matcli commands printed as they run. llama.cpp's perplexity uses
the windows `matcli eval` uses (data.token_windows: the text tokenized by the model's own
tokenizer, documents joined with EOS, non-overlapping windows of --seq-len, the first
--max-tokens tokens), so the two numbers are over the same predictions. Needs
llama-cpp-python (the `llamacpp` extra; tests/test_gguf.py builds it from its sdist).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from matcli.quant.gguf_runtime import llama_cpp_model

ROOT = Path(__file__).resolve().parents[1]


def matcli(*args: str) -> str:
    command = [sys.executable, "-m", "matcli", *args]
    print("$ matcli " + shlex.join(args), flush=True)
    return subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def windows(model: Path, data: Path, seq_len: int, max_tokens: int):
    from transformers import AutoTokenizer

    from matcli.data import read_texts, token_windows

    tokenizer = AutoTokenizer.from_pretrained(model)
    return token_windows(tokenizer, read_texts(data), seq_len, max_tokens).tolist()


def llama_cpp_perplexity(llm, wins: list[list[int]]) -> tuple[float, float]:
    """(perplexity, prompt tokens/s) over every predicted token of the windows."""
    total, count, seconds = 0.0, 0, 0.0
    for window in wins:
        llm.reset()
        start = time.perf_counter()
        llm.eval(window)
        seconds += time.perf_counter() - start
        logits = np.array(llm.scores[: len(window) - 1], dtype=np.float64)
        top = logits.max(-1, keepdims=True)
        log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
        total += float((log_z - logits[np.arange(len(window) - 1), window[1:]]).sum())
        count += len(window) - 1
    return math.exp(total / count), sum(map(len, wins)) / seconds


def generation_speed(llm, prompt: list[int], tokens: int) -> float:
    """Greedy decoding tokens/s after a prompt (timed from the first generated token, so
    the prompt's evaluation is not counted)."""
    llm.reset()
    generated = llm.generate(prompt, temp=0.0)
    next(generated)
    start = time.perf_counter()
    for _ in range(tokens):
        next(generated)
    return tokens / (time.perf_counter() - start)


def transformers_perplexity(folder: Path, data: Path, seq_len: int, max_tokens: int) -> float:
    """`matcli eval` of the compressed-tensors slice (kept in FOLDER.eval.json: it is slow)."""
    cached = folder.with_suffix(".eval.json")
    if not cached.exists():
        window_args = ["--seq-len", str(seq_len), "--max-tokens", str(max_tokens)]
        cached.write_text(matcli("eval", str(folder), "--data", str(data), *window_args, "--json"))
    return json.loads(cached.read_text())["results"][0]["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=8192)
    # One thread: on CPUs shared with other jobs, two threads generated ten times slower than
    # one (0.5 vs 6 tokens/s at load average 12; most likely threads spinning at barriers).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    parent = args.work / "parent"
    if not parent.exists():
        recipe = str(ROOT / "recipes" / "gguf-parent-g32.yaml")
        matcli("quantize", str(args.model), "-o", str(parent), "--recipe", recipe, "-q")
    wins = windows(args.model, args.data, args.seq_len, args.max_tokens)
    rows = []
    for bits, name in ((8, "Q8_0"), (4, "Q4_0")):
        gguf_file, folder = args.work / f"int{bits}.gguf", args.work / f"ct-int{bits}"
        matcli("slice", str(parent), "--bits", str(bits), "--format", "gguf", "-o",
               str(gguf_file), "-q", "--force")  # fmt: skip
        matcli("slice", str(parent), "--bits", str(bits), "-o", str(folder), "-q", "--force")
        ct_ppl = transformers_perplexity(folder, args.data, args.seq_len, args.max_tokens)
        llm = llama_cpp_model(gguf_file, args.seq_len, args.threads)
        ppl, prompt_speed = llama_cpp_perplexity(llm, wins)
        gen_speed = generation_speed(llm, wins[0][:16], 128)
        rows.append((bits, name, gguf_file.stat().st_size, ppl, ct_ppl, prompt_speed, gen_speed))
    print(f"\n{sum(map(len, wins))} tokens, {len(wins)} windows of {args.seq_len}\n")
    print("| slice | GGUF type | file MB | llama.cpp ppl | transformers ppl (compressed-tensors) "
          "| difference | llama.cpp prompt tok/s | llama.cpp generation tok/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for bits, name, size, ppl, ct_ppl, prompt_speed, gen_speed in rows:
        difference = 100 * (ppl / ct_ppl - 1)
        print(
            f"| int{bits} | {name} | {size / 1e6:.1f} | {ppl:.3f} | {ct_ppl:.3f} | "
            f"{difference:+.2f}% | {prompt_speed:.0f} | {gen_speed:.1f} |"
        )


if __name__ == "__main__":
    main()
