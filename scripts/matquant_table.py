"""The MatQuant table of docs/results.md section 3, from the JSON that scripts/matquant_results.sh
saves (one `matcli eval --json` output per model).

    python scripts/matquant_table.py assets/results [--write]

prints the table and the targets of the issue (met or missed, by how much); with --write it
also replaces the text between the `matquant` markers in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (8, 6, 4, 3, 2)
ROWS = [  # (result file, row label)
    ("q-dense", "dense, as released"),
    ("q-dense-ft", "dense, fine-tuned on the same text and steps (no quantization)"),
    ("q-rtn-g64", "RTN parent (no training), sliced"),
    ("q-int2-only", "QAT baseline trained for int2 only (c = 2)"),
    ("q-int4-only", "QAT baseline trained for int4 only (c = 4)"),
    ("q-matquant", "**MatQuant QAT** (R = {8, 4, 2}, lambda = 0.1, 0.1, 1), sliced"),
    ("q-omniquant", "MatQuant OmniQuant (LWC + LET, weights frozen), sliced"),
    ("q-omniquant-lr5e-2", "MatQuant OmniQuant, clipping lr 5e-2 instead of 1e-2, sliced"),
    ("q-single-precision", "single-precision MatQuant (R = {2}, int8 parent), sliced"),
    ("q-extra-precision", "extra-precision MatQuant (no clamp, lambda = 1, 1, 1), sliced"),
]


def load(folder: Path) -> dict[str, dict]:
    """{name: {bits or 'dense': perplexity}} for every result file present."""
    found = {}
    for name, _ in ROWS:
        path = folder / f"{name}.json"
        if path.is_file() and path.stat().st_size:
            results = json.loads(path.read_text())["results"]
            found[name] = {
                r["bits"] if r["bits"] is not None else "dense": r["perplexity"] for r in results
            }
    return found


def cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.2f}"


def table(results: dict[str, dict]) -> list[str]:
    lines = [
        "| model | " + " | ".join(f"int{w}" for w in WIDTHS) + " |",
        "|---" * (len(WIDTHS) + 1) + "|",
    ]
    for name, label in ROWS:
        if name not in results:
            continue
        values = results[name]
        if "dense" in values:
            lines.append(f"| {label} | {cell(values['dense'])} (bf16) |" + " |" * (len(WIDTHS) - 1))
        else:
            lines.append(f"| {label} | " + " | ".join(cell(values.get(w)) for w in WIDTHS) + " |")
    return lines


def targets(results: dict[str, dict]) -> list[str]:
    def get(name, key):
        return results.get(name, {}).get(key)

    dense, dense_ft = get("q-dense", "dense"), get("q-dense-ft", "dense")
    mq2, mq8, mq4 = get("q-matquant", 2), get("q-matquant", 8), get("q-matquant", 4)
    base2, base4 = get("q-int2-only", 2), get("q-int4-only", 4)
    checks = []
    if None not in (mq2, base2):
        checks.append(_check("MatQuant int2 <= the int2-only baseline", mq2, base2))
    for ref_name, ref in (("dense", dense), ("dense fine-tuned", dense_ft)):
        if None not in (mq2, ref):
            checks.append(_check(f"MatQuant int2 <= 2x {ref_name} ({cell(2 * ref)})", mq2, 2 * ref))
    for ref_name, ref in (("dense", dense), ("dense fine-tuned", dense_ft)):
        if None not in (mq8, ref):
            checks.append(
                _check(
                    f"MatQuant int8 within 1% of {ref_name}",
                    mq8,
                    1.01 * ref,
                    f"{mq8 / ref - 1:+.1%}",
                )
            )
    if None not in (mq4, base4):
        checks.append(
            _check(
                "MatQuant int4 within 5% of the int4-only baseline",
                mq4,
                1.05 * base4,
                f"{mq4 / base4 - 1:+.1%}",
            )
        )
    return checks


def _check(what: str, value: float, bound: float, detail: str | None = None) -> str:
    verdict = "met" if value <= bound else f"MISSED by {value / bound - 1:.1%}"
    return f"- {what}: {verdict} ({cell(value)}{'; ' + detail if detail else ''})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--write", action="store_true", help="replace the table in docs/results.md")
    args = parser.parse_args()
    results = load(args.results)
    body = "\n".join(table(results) + ["", "Targets of the issue:", ""] + targets(results))
    print(body)
    if args.write:
        doc = ROOT / "docs" / "results.md"
        text = doc.read_text()
        pattern = re.compile(r"(<!-- matquant:begin -->\n).*?(<!-- matquant:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(
                "docs/results.md has no <!-- matquant:begin --> ... <!-- matquant:end --> markers"
            )
        doc.write_text(pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text))


if __name__ == "__main__":
    main()
